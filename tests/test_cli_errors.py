"""Bad input to the rnnkit command: one line on stderr, a non-zero exit, nothing written over.

Each test runs the real command (``main``) on tiny settings, so a run takes well under a second.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rnnkit import checkpoint
from rnnkit.cli.main import build_parser, main

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 30
TINY = ["--hidden-size", "16", "--embedding-size", "8", "--layers", "1", "--batch-size", "4",
        "--bptt", "8", "--no-progress", "--sample-length", "0"]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def run_dir(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out", str(out), "--max-steps", "3"]) == 0
    return out


def fails(capsys, argv, *needles, code=2):
    """Run ``argv``; it must fail with ``code`` and one line on stderr holding every needle."""
    try:
        got = main([str(a) for a in argv])
    except SystemExit as e:                   # argparse refuses a flag while reading it
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["sample", "RUN", "--length", "-1"], "--length"),
    (["sample", "RUN", "--temperature", "0"], "--temperature"),
    (["sample", "RUN", "--temperature", "-2"], "--temperature"),
    (["sample", "RUN", "--temperature", "nan"], "--temperature"),
    (["sample", "RUN", "--temperature", "inf"], "--temperature"),
    (["sample", "RUN", "--top-p", "0"], "--top-p"),
    (["sample", "RUN", "--top-p", "1.5"], "--top-p"),
    (["sample", "RUN", "--top-k", "-1"], "--top-k"),
    (["sample", "RUN", "--num-samples", "0"], "--num-samples"),
    (["sample", "RUN", "--seed", "-1"], "--seed"),
    (["sample", "RUN", "--length", "ten"], "--length"),
    (["eval", "RUN"], "--data"),
    (["eval", "RUN", "--data", "x", "--batch-size", "0"], "--batch-size"),
    (["eval", "RUN", "--data", "x", "--bptt", "-3"], "--bptt"),
    (["train", "--max-steps", "-1"], "--max-steps"),
    (["train", "--max-time", "-5"], "--max-time"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--momentum", "1"], "--momentum"),
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--hidden-size", "0"], "--hidden-size"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--val-fraction", "1"], "--val-fraction"),
    (["train", "--clip-norm", "-1"], "--clip-norm"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--tokenizer", "nonsense"], "--tokenizer"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_flags_are_refused_in_one_line_before_anything_runs(capsys, tmp_path, argv, needle):
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    fails(capsys, argv, needle)
    assert not (tmp_path / "run").exists()


def test_flags_that_only_clash_with_each_other(capsys, corpus, tmp_path):
    out = tmp_path / "run"
    base = ["train", *TINY, "--data", corpus, "--out", out, "--max-steps", "2"]
    fails(capsys, [*base, "--tie-weights"], "--tie-weights", "--embedding-size")
    fails(capsys, [*base, "--min-freq", "2"], "--tokenizer word")
    fails(capsys, [*base, "--tokenizer", "word", "--max-vocab", "1"], "--max-vocab")
    fails(capsys, [*base, "--skip-unknown"], "--val-data")
    assert not out.exists()


def test_every_flag_has_help_text():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), (name, action.option_strings)
        text = sub.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name


# ---- data files --------------------------------------------------------------------------------
def test_bad_data_files(capsys, tmp_path):
    out = tmp_path / "run"
    base = ["train", *TINY, "--out", out, "--max-steps", "2", "--data"]
    fails(capsys, [*base, tmp_path / "missing.txt"], "not found", "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    fails(capsys, [*base, tmp_path / "empty.txt"], "empty")
    fails(capsys, [*base, tmp_path], "directory")
    (tmp_path / "good.txt").write_text(TEXT)
    fails(capsys, ["train", *TINY, "--out", out, "--data", tmp_path / "good.txt", "--val-data",
                   tmp_path], "is a directory, not a file")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 20)
    fails(capsys, [*base, tmp_path / "bin.dat"], "--tokenizer byte")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    fails(capsys, [*base, tmp_path / "latin1.txt"], "UTF-8", "--tokenizer byte")
    assert not out.exists()


def test_a_corpus_shorter_than_one_batch_says_how_much_is_needed(capsys, tmp_path):
    (tmp_path / "short.txt").write_text("hello there, general kenobi\n")
    err = fails(capsys, ["train", *TINY, "--data", tmp_path / "short.txt", "--out",
                         tmp_path / "run"], "shorter than one batch", "36", "--batch-size",
                "--bptt")
    assert "note" not in err
    assert not (tmp_path / "run").exists()


def test_an_out_that_cannot_be_a_directory(capsys, corpus, tmp_path):
    base = ["train", *TINY, "--data", corpus, "--max-steps", "2", "--out"]
    fails(capsys, [*base, corpus], "is a file, not a directory")
    fails(capsys, [*base, corpus / "sub"], "is a file, not a directory")
    assert corpus.read_text() == TEXT


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_an_unwritable_out(capsys, corpus, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, ["train", *TINY, "--data", corpus, "--out", locked / "run"],
              "cannot write")
    finally:
        locked.chmod(0o755)


def test_val_data_with_characters_outside_the_vocabulary(capsys, corpus, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("First Citizen: \u00e9t\u00e9 \u00e0 Z\u00fcrich\n" * 5)
    out = tmp_path / "run"
    base = ["train", *TINY, "--data", corpus, "--out", out, "--max-steps", "2", "--val-data", val]
    fails(capsys, base, "--val-data", "'\u00e9'", "'\u00fc'", "--skip-unknown")
    assert not out.exists()
    assert main([str(a) for a in base] + ["--skip-unknown"]) == 0
    err = capsys.readouterr().err
    assert "note" in err and "left out" in err and "'\u00e9'" in err
    assert any("val_loss" in json.loads(line) for line in (out / "metrics.jsonl").open())


def test_a_split_with_unseen_characters_is_noted_not_refused(capsys, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text(TEXT + "\u00e9\u00e9 \u00e9\n")         # only the validation part has them
    assert main(["train", *TINY, "--data", str(data), "--out", str(tmp_path / "run"),
                 "--max-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "3 validation character(s)" in err and "'\u00e9'" in err


# ---- checkpoints ---------------------------------------------------------------------------------
def _damage(tree, how):
    task = tree["task"]
    if how == "no task":
        del tree["task"]
    elif how == "no tokenizer":
        del task["tokenizer"]
    elif how == "no weights":
        del task["weights"]
    elif how == "missing weight":
        del task["weights"]["decoder.bias"]
    elif how == "no vocab_size":
        del task["model_config"]["vocab_size"]
    elif how == "hidden_size is text":
        task["model_config"]["hidden_size"] = "big"
    elif how == "tokenizer too small":
        task["tokenizer"]["chars"] = "abc"
    elif how == "tokenizer kind":
        task["tokenizer"] = {"kind": "klingon"}
    elif how == "nan weights":
        task["weights"]["decoder.bias"] = np.full_like(task["weights"]["decoder.bias"], np.nan)
    elif how == "model config a list":
        task["model_config"] = [1, 2]
    return tree


def _write_bad(path: Path, how: str, good: Path):
    if how == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif how == "zip with wrong members":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("weights.txt", "hello")
    elif how == "zip with a non-array member":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("__rnnkit__.npy", "not an array")
    elif how == "foreign npz":
        with open(path, "wb") as f:
            np.savez(f, weights=np.zeros(3))
    elif how == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif how == "text file":
        path.write_text(TEXT)
    else:
        checkpoint.save(path, _damage(checkpoint.load(good), how))


BAD = ["truncated", "random bytes", "zip with wrong members", "zip with a non-array member",
       "foreign npz", "npy", "text file", "no task", "no tokenizer", "no weights",
       "missing weight", "no vocab_size", "hidden_size is text", "tokenizer too small",
       "tokenizer kind", "nan weights", "model config a list"]


@pytest.mark.parametrize("how", BAD)
def test_corrupt_checkpoints_are_one_line_for_sample_eval_and_resume(capsys, run_dir, corpus,
                                                                     tmp_path, how):
    bad = tmp_path / "bad.npz"
    _write_bad(bad, how, run_dir / "last.npz")
    fails(capsys, ["sample", bad, "--length", "5"], "bad.npz")
    fails(capsys, ["eval", bad, "--data", corpus], "bad.npz")
    (run_dir / "last.npz").write_bytes(bad.read_bytes())
    before = snapshot(run_dir)
    fails(capsys, ["train", "--resume", run_dir, "--max-steps", "6"], "last.npz")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("how", ["no optimizer", "no progress", "no rng", "no data position",
                                 "no source", "bad carried state", "position past the end"])
def test_a_checkpoint_that_cannot_resume(capsys, run_dir, how):
    tree = checkpoint.load(run_dir / "last.npz")
    if how == "no optimizer":
        del tree["optimizer"]
    elif how == "no progress":
        del tree["progress"]
    elif how == "no rng":
        del tree["rng"]
    elif how == "no data position":
        del tree["task"]["data"]
    elif how == "no source":
        del tree["task"]["source"]
    elif how == "bad carried state":
        tree["task"]["carried"] = [np.zeros(3, np.float32)]
    else:
        tree["task"]["data"] = {"epoch": 0, "position": 10**6}
    checkpoint.save(run_dir / "last.npz", tree)
    before = snapshot(run_dir)
    fails(capsys, ["train", "--resume", run_dir, "--max-steps", "6"], "last.npz")
    assert snapshot(run_dir) == before
    assert main(["sample", str(run_dir / "best.npz"), "--length", "3", "--seed", "0"]) == 0


def test_a_run_directory_without_checkpoints(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    fails(capsys, ["sample", tmp_path / "empty"], "no best.npz or last.npz")
    fails(capsys, ["eval", tmp_path / "empty", "--data", tmp_path / "x.txt"], "no best.npz")
    fails(capsys, ["train", "--resume", tmp_path / "empty"], "no last.npz")
    fails(capsys, ["train", "--resume", tmp_path / "nowhere"], "not a run directory")


def test_a_disk_error_while_saving_keeps_the_previous_checkpoint(capsys, corpus, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out", str(out), "--max-steps", "2"]) == 0
    before = (out / "last.npz").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    fails(capsys, ["train", "--resume", out, "--max-steps", "4"], "cannot write checkpoint",
          "No space left on device", "unchanged")
    assert (out / "last.npz").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ---- prime, eval data, tokenizers --------------------------------------------------------------
def test_prime_with_characters_the_model_never_saw(capsys, run_dir):
    fails(capsys, ["sample", run_dir, "--prime", "Zebra \u4f60"], "never saw", "'\u4f60'", "'Z'")


def test_eval_on_unseen_characters_refuses_or_skips_and_reports(capsys, run_dir, tmp_path):
    odd = tmp_path / "odd.txt"
    odd.write_text("First Citizen: \u00e9\u00e9 speak \u00e0\n" * 20)
    fails(capsys, ["eval", run_dir, "--data", odd], "'\u00e9'", "'\u00e0'", "--skip-unknown")
    assert main(["eval", str(run_dir), "--data", str(odd), "--skip-unknown", "--json"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert r["skipped_unknown"] == 60 and r["tokens"] > 0 and np.isfinite(r["loss"])
    assert "left out 60" in cap.err


def test_eval_on_a_binary_file_does_not_suggest_a_flag_eval_lacks(capsys, run_dir):
    err = fails(capsys, ["eval", run_dir, "--data", sys.executable], "binary",
                "trained with --tokenizer byte")
    assert "use --tokenizer byte" not in err


def test_eval_on_a_file_too_short(capsys, run_dir, tmp_path):
    (tmp_path / "one.txt").write_text("F")
    fails(capsys, ["eval", run_dir, "--data", tmp_path / "one.txt"], "too short")


def test_byte_model_on_a_binary_file_samples_without_crashing(capsys, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(np.random.default_rng(1).bytes(3000) + b"\x00\xff\xfe" * 100)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--tokenizer", "byte", "--data", str(blob), "--out", str(out),
                 "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--length", "300", "--seed", "0", "--temperature", "2"]) == 0
    text = capsys.readouterr().out
    assert "\ufffd" in text                          # invalid UTF-8 shown as replacement characters
    assert main(["eval", str(out), "--data", str(blob), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unit"] == "byte"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}    # a stdout that cannot show U+FFFD
    r = subprocess.run([sys.executable, "-m", "rnnkit", "sample", str(out), "--length", "200",
                        "--seed", "0", "--temperature", "2"], capture_output=True, env=env)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert len(r.stdout) >= 100
    r = subprocess.run([sys.executable, "-m", "rnnkit", "train", *TINY, "--tokenizer", "byte",
                        "--data", str(blob), "--out", str(tmp_path / "ascii"), "--max-steps", "2",
                        "--sample-length", "100"], capture_output=True, env=env)
    assert r.returncode == 0 and b"[sample]" in r.stdout, r.stderr       # shown at evaluation


def test_word_model_reads_unknown_prime_words_as_unk(capsys, corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--tokenizer", "word", "--data", str(corpus), "--out", str(out),
                 "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "You are zyzzyva", "--length", "5",
                 "--seed", "0"]) == 0
    cap = capsys.readouterr()
    assert "<unk>" in cap.err and "'zyzzyva'" in cap.err and cap.err.count("\n") == 1
    assert cap.out[len("You are zyzzyva"):][:1] in (" ", "\n")   # the next word is spaced
    # 3 prime words, then 5 tokens: words, or <eos> as a newline (one more ends the sample)
    assert len(cap.out.split()) + cap.out.count("\n") - 1 == 3 + 5, cap.out
    (tmp_path / "other.txt").write_text("You are zyzzyva all quux\n" * 10)
    assert main(["eval", str(out), "--data", str(tmp_path / "other.txt"), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["unknown_words"] == 20 and "<unk>" in cap.err


@pytest.mark.skipif(not (DATA / "ptb.valid.txt").is_file(), reason="shared/data is absent")
def test_word_tokenizer_on_ptb(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--tokenizer", "word", "--data", str(DATA / "ptb.valid.txt"),
                 "--out", str(out), "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(DATA / "ptb.test.txt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["unit"] == "word" and r["tokens"] > 50_000 and "bits_per_word" in r


def test_an_out_holding_a_best_checkpoint_is_not_overwritten(capsys, run_dir, corpus):
    (run_dir / "last.npz").unlink()
    before = snapshot(run_dir)
    fails(capsys, ["train", *TINY, "--data", corpus, "--out", run_dir], "already holds a run",
          "--force")
    assert snapshot(run_dir) == before


def test_sampling_a_model_that_never_saw_a_newline(capsys, tmp_path):
    flat = tmp_path / "flat.txt"
    flat.write_text(TEXT.replace("\n", " "))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(flat), "--out", str(out), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--length", "20", "--seed", "0"]) == 0   # no --prime
    assert len(capsys.readouterr().out) == 21
    fails(capsys, ["sample", out, "--prime", "a\nb"], "never saw", "'\\n'")


def test_a_jieba_model_samples_without_jieba_unless_primed(capsys, corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--tokenizer", "word", "--data", str(corpus), "--out", str(out),
                 "--max-steps", "2"]) == 0
    tree = checkpoint.load(out / "best.npz")
    tree["task"]["tokenizer"]["kind"] = "jieba"         # the same vocabulary, cut by jieba
    checkpoint.save(out / "best.npz", tree)
    capsys.readouterr()
    assert main(["sample", str(out), "--length", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip()
    try:
        import jieba  # noqa: F401
    except ImportError:
        fails(capsys, ["sample", out, "--prime", "You are"], "jieba")


def test_a_bad_blas_choice_in_the_environment(capsys, corpus, tmp_path, monkeypatch,
                                               fresh_mkl):
    monkeypatch.setenv("RNNKIT_BLAS", "openblas")
    fails(capsys, ["train", *TINY, "--data", corpus, "--out", tmp_path / "r", "--max-steps", "1"],
          "RNNKIT_BLAS must be one of")
    monkeypatch.setenv("RNNKIT_BLAS", "mkl")
    monkeypatch.setenv("RNNKIT_MKL", str(tmp_path / "no-such-libmkl_rt.so"))
    fails(capsys, ["train", *TINY, "--data", corpus, "--out", tmp_path / "r", "--max-steps", "1"],
          "RNNKIT_BLAS=mkl but MKL cannot be loaded", "no-such-libmkl_rt.so")


def test_train_says_how_it_computes(capsys, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_BLAS", "numpy")
    assert main(["train", *TINY, "--data", str(corpus), "--out", str(tmp_path / "r"),
                 "--max-steps", "1"]) == 0
    assert "| cpu: numpy products, " in capsys.readouterr().out
