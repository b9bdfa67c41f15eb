"""The README's Python examples run (an example that no test runs goes stale).

The training example is run as written on a small generated ``input.txt``, with its step count
and model size turned down so that it takes a second.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 2


def test_layer_example_runs():
    block = next(b for b in python_blocks() if "from rnnkit.nn import LSTM" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["out"].shape == (4, 10, 32)
    assert scope["dx"].shape == (4, 10, 8)


def test_training_example_runs(tmp_path, monkeypatch):
    block = next(b for b in python_blocks() if "Trainer(" in b)
    small = re.sub(r"max_steps=\d+", "max_steps=3", block)
    small = re.sub(r"hidden_size=\d+", "hidden_size=16", small)
    small = re.sub(r"length=\d+", "length=20", small)
    assert small != block
    rng = np.random.default_rng(0)
    words = ["ROMEO:", "JULIET:", "the", "king", "my", "lord", "and", "to", "of", "thee"]
    text = "\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)) + "\n"
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    assert (tmp_path / "runs" / "mine" / "last.npz").is_file()
