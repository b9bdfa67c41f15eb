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
