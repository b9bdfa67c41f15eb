"""Checkpoints: exact round trips, atomic writes, and one clear error for every bad file."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit import checkpoint
from rnnkit.checkpoint import CheckpointError


def tree():
    rng = np.random.default_rng(0)
    rng.random(5)
    return {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(2.5),
                      "scalar": np.array(3.0), "ids": np.array([1, 2], np.int64),
                      "u": np.array([7], np.uint32)},
            "list": [np.ones(2), {"x": None}, "text"], "n": 12, "big": 2**100,
            "rng": rng.bit_generator.state, "nested": {"empty": {}, "f": 0.1}}


def test_round_trip_is_exact(tmp_path):
    t = tree()
    checkpoint.save(tmp_path / "sub" / "c.npz", t)
    back = checkpoint.load(tmp_path / "sub" / "c.npz")
    for k in ("w", "scalar", "ids", "u"):
        assert back["model"][k].dtype == t["model"][k].dtype
        assert back["model"][k].shape == t["model"][k].shape
        np.testing.assert_array_equal(back["model"][k], t["model"][k])
    assert back["model"]["b"] == 2.5 and back["n"] == 12 and back["big"] == 2**100
    assert back["list"][1] == {"x": None} and back["list"][2] == "text"
    assert back["nested"] == {"empty": {}, "f": 0.1}
    g1, g2 = np.random.default_rng(), np.random.default_rng()
    g1.bit_generator.state = t["rng"]
    g2.bit_generator.state = back["rng"]
    np.testing.assert_array_equal(g1.random(10), g2.random(10))


def test_no_pickle_inside(tmp_path):
    checkpoint.save(tmp_path / "c.npz", tree())
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"v": np.array([1.0])})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        checkpoint.save(path, {"v": np.array([2.0])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]       # no temporary left behind


@pytest.mark.parametrize("content,needle", [
    (None, "no such checkpoint"),
    (b"", "not a readable"),
    (b"\x00\x01garbage" * 100, "not a readable"),
    ("truncated", "not a readable"),
    ("foreign", "not an rnnkit checkpoint"),
])
def test_bad_files_raise_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "bad.npz"
    if content == "truncated":
        checkpoint.save(path, tree())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "foreign":
        np.savez(path, weights=np.zeros(3))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as e:
        checkpoint.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_keys_with_slashes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'/'"):
        checkpoint.save(tmp_path / "c.npz", {"a/b": 1})
