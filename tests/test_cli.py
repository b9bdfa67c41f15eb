"""The rnnkit command end to end: train, resume (exactly), sample, eval, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnkit.cli.main import main

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 30
SMALL = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--bptt", "16",
         "--no-progress", "--sample-length", "20"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def train(*args) -> int:
    return main(["train", *SMALL, *map(str, args)])


def test_stopped_and_resumed_run_equals_an_unbroken_one(corpus, tmp_path):
    """Dropout on, several epochs: the same losses step for step, bit for bit."""
    common = ["--data", corpus, "--dropout", "0.3", "--eval-interval", "7", "--log-interval", "1",
              "--epochs", "3", "--schedule", "exp", "--lr-gamma", "0.5", "--lr-hold", "1"]
    assert train(*common, "--out", tmp_path / "a") == 0
    assert train(*common, "--out", tmp_path / "b", "--max-steps", "12") == 0
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:      # a crash after step 12 logged 13
        f.write(json.dumps({"step": 13, "loss": 99.0}) + "\n" + '{"step": 14, "lo')
    assert train("--resume", tmp_path / "b", "--max-steps", "27") == 0
    assert train("--resume", tmp_path / "b", "--max-steps", "0") == 0     # lift the limit
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps))                        # nothing logged twice
    assert len(a) > 27 and sorted(a) == sorted(b)
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]][:3]
    wa = np.load(tmp_path / "a" / "last.npz")
    wb = np.load(tmp_path / "b" / "last.npz")
    for k in wa.files:
        if k.startswith("task/weights/"):
            np.testing.assert_array_equal(wa[k], wb[k])


def test_train_sample_eval(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--data", corpus, "--out", out, "--max-steps", "20", "--eval-interval", "10") == 0
    for name in ("last.npz", "best.npz", "metrics.jsonl"):
        assert (out / name).is_file()
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "First", "--length", "30", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("First") and len(first) >= 30
    main(["sample", str(out), "--prime", "First", "--length", "30", "--seed", "3"])
    assert capsys.readouterr().out == first                 # seeded: reproducible
    assert main(["eval", str(out / "best.npz"), "--data", str(corpus), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tokens"] > 1000 and abs(r["bits_per_char"] - r["loss"] / np.log(2)) < 1e-9
    assert abs(r["perplexity"] - np.exp(r["loss"])) < 1e-6


def _fails(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_gives_one_line_and_nonzero_exit(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, ["train", "--data", str(tmp_path / "missing.txt"), "--out", str(out)], "not found")
    (tmp_path / "empty.txt").write_text("")
    _fails(capsys, ["train", "--data", str(tmp_path / "empty.txt"), "--out", str(out)], "empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    _fails(capsys, ["train", "--data", str(tmp_path / "latin1.txt"), "--out", str(out)], "byte")
    (tmp_path / "short.txt").write_text("hi there")
    _fails(capsys, ["train", "--data", str(tmp_path / "short.txt"), "--out", str(out)], "batch-size")
    assert not out.exists() or not (out / "last.npz").exists()
    assert train("--data", corpus, "--out", out, "--max-steps", "3") == 0
    before = (out / "last.npz").read_bytes()
    _fails(capsys, ["train", "--data", str(corpus), "--out", str(out)], "--resume")
    _fails(capsys, ["train", "--resume", str(out), "--lr", "0.1"], "--lr")
    assert (out / "last.npz").read_bytes() == before          # nothing written over
    _fails(capsys, ["sample", str(out), "--prime", "Zebra \u4f60"], "never saw", "'\u4f60'")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    _fails(capsys, ["sample", str(tmp_path / "junk.npz")], "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    _fails(capsys, ["eval", str(tmp_path / "other.npz"), "--data", str(corpus)], "not an rnnkit")
    _fails(capsys, ["sample", str(tmp_path / "nothing-here")], "nothing-here")
    (tmp_path / "odd.txt").write_text("\u00e9\u00e9\u00e9 zzz qqq " * 20)
    _fails(capsys, ["eval", str(out), "--data", str(tmp_path / "odd.txt")], "--skip-unknown")


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    err = _fails(capsys, ["train", *SMALL, "--data", str(corpus), "--out", str(out),
                          "--optimizer", "sgd", "--lr", "1e6", "--clip-norm", "0",
                          "--eval-interval", "1", "--max-steps", "50"], "stopped at step")
    assert "last good checkpoint" in err
    from rnnkit import checkpoint
    tree = checkpoint.load(out / "last.npz")
    assert all(np.all(np.isfinite(w)) for w in tree["task"]["weights"].values())


def test_help_for_every_subcommand():
    for argv in (["--help"], ["train", "--help"], ["sample", "--help"], ["eval", "--help"]):
        r = subprocess.run([sys.executable, "-m", "rnnkit", *argv], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--help"], capture_output=True,
                       text=True)
    for flag in ("--data", "--tokenizer", "--model", "--max-time", "--resume", "--top-k"[:0]):
        assert flag in r.stdout


def _run_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_stopped_at_an_epochs_last_batch_resumes_exactly(corpus, tmp_path):
    """The checkpoint at an epoch's end is written before the epoch is counted; a resumed run must
    count it (reset the state, step the schedule) and not train an extra epoch."""
    common = ["--data", corpus, "--dropout", "0.3", "--eval-interval", "0", "--log-interval", "1",
              "--epochs", "3", "--schedule", "exp", "--lr-gamma", "0.5", "--lr-hold", "1",
              "--sample-length", "0"]
    assert train(*common, "--out", tmp_path / "a") == 0
    per_epoch = next(r["step"] for r in _run_rows(tmp_path / "a") if r.get("eval"))
    assert train(*common, "--out", tmp_path / "b", "--max-steps", per_epoch) == 0
    assert train("--resume", tmp_path / "b", "--max-steps", "0") == 0
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 3 * per_epoch + 1))
    assert all(a[s] == b[s] for s in a)


def test_resuming_a_finished_run_changes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--data", corpus, "--out", out, "--max-steps", "4", "--log-interval", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert train("--resume", out) == 0
    err = capsys.readouterr().err
    assert "already finished" in err and "--max-steps" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert train("--resume", out, "--max-steps", "5") == 0            # a raised limit goes on
    assert max(losses(out)) == 5


def test_max_time_tiny_takes_one_step_and_stops(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--data", corpus, "--out", out, "--max-time", "1e-6", "--log-interval", "1") == 0
    assert "time limit reached: step 1," in capsys.readouterr().out
    assert sorted(losses(out)) == [1]


def test_ctrl_c_saves_last_and_exits_130(corpus, tmp_path, capsys, monkeypatch):
    import signal

    from rnnkit.train import Trainer
    step = Trainer._train_step

    def step_then_ctrl_c(self, x, y):
        loss = step(self, x, y)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "_train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    assert train("--data", corpus, "--out", out, "--eval-interval", "0") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and f"--resume {out}" in err
    from rnnkit import checkpoint
    assert checkpoint.load(out / "last.npz")["progress"]["step"] == 3
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert train("--resume", out, "--max-steps", "5") == 0             # and it resumes


def test_a_second_ctrl_c_stops_at_once(corpus, tmp_path, capsys, monkeypatch):
    import signal

    from rnnkit.train import Trainer
    step = Trainer._train_step

    def step_then_two_ctrl_c(self, x, y):
        loss = step(self, x, y)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "_train_step", step_then_two_ctrl_c)
    assert train("--data", corpus, "--out", tmp_path / "run", "--eval-interval", "0") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored


def test_moved_checkpoint_run_and_data(corpus, tmp_path, capsys, monkeypatch):
    """Runs store their data's absolute path; a checkpoint or run directory moved elsewhere
    still samples and resumes; data that moved is named again with --data (contents checked)."""
    import shutil
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert train("--data", corpus.name, "--out", "run", "--max-steps", "2",
                 "--log-interval", "1") == 0
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(out / "best.npz", tmp_path / "elsewhere" / "model.npz")
    shutil.move(out, tmp_path / "elsewhere" / "run")
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["sample", "model.npz", "--length", "10", "--seed", "1"]) == 0
    assert train("--resume", "run", "--max-steps", "3") == 0          # data found from anywhere
    shutil.move(corpus, tmp_path / "elsewhere" / "moved.txt")
    capsys.readouterr()
    assert train("--resume", "run", "--max-steps", "4") == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "other.txt").write_text(TEXT.upper())
    assert train("--resume", "run", "--max-steps", "4", "--data", tmp_path / "other.txt") == 2
    assert "contents differ" in capsys.readouterr().err
    assert train("--resume", "run", "--max-steps", "4", "--data", "moved.txt") == 0
    assert train("--resume", "run", "--max-steps", "5") == 0          # the new place is kept
    assert max(losses(tmp_path / "elsewhere" / "run")) == 5


def test_resume_refuses_force_and_changed_settings(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--data", corpus, "--out", out, "--max-steps", "2") == 0
    capsys.readouterr()
    assert train("--resume", out, "--force") == 2
    assert "--force" in capsys.readouterr().err
    assert train("--resume", out, "--hidden-size", "32", "--layers", "3", "--model", "gru") == 2
    err = capsys.readouterr().err
    assert "--hidden-size" in err and "--layers" in err and "--model" in err


def test_python_dash_m_is_the_same_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rnnkit", "sample", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "rnnkit", "eval", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--data" in r.stderr
