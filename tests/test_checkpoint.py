"""Checkpoints: exact round trips, atomic writes, and one clear error for every bad file."""
from __future__ import annotations

import errno
import json
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from rnnkit import checkpoint
from rnnkit.checkpoint import CheckpointError, CheckpointWriteError


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
    ("npy", "not an rnnkit checkpoint"),
    ("member not an array", "not a NumPy array"),
    ("compressed and damaged", "not a readable"),
    ("metadata without a tree", "holds no tree"),
    ("metadata of floats", "unreadable metadata"),
])
def test_bad_files_raise_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "bad.npz"
    if content == "truncated":
        checkpoint.save(path, tree())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "foreign":
        np.savez(path, weights=np.zeros(3))
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "member not an array":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(checkpoint.META_KEY + ".npy", b"garbage, not an .npy")
    elif content == "compressed and damaged":
        np.savez_compressed(path, **{checkpoint.META_KEY: np.zeros(5000, np.uint8)})
        data = bytearray(path.read_bytes())
        data[100:160] = b"\xff" * 60
        path.write_bytes(bytes(data))
    elif content == "metadata without a tree":
        meta = json.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION}).encode()
        np.savez(path, **{checkpoint.META_KEY: np.frombuffer(meta, np.uint8)})
    elif content == "metadata of floats":
        np.savez(path, **{checkpoint.META_KEY: np.zeros(4)})
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as e:
        checkpoint.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_keys_with_slashes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'/'"):
        checkpoint.save(tmp_path / "c.npz", {"a/b": 1})


def test_a_failed_write_says_so_in_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"v": np.array([1.0])})
    before = path.read_bytes()

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(CheckpointWriteError) as e:
        checkpoint.save(path, {"v": np.array([2.0])})
    msg = str(e.value)
    assert str(path) in msg and "No space left" in msg and "unchanged" in msg and "\n" not in msg
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match="nothing saved"):
        checkpoint.save(tmp_path / "file" / "sub" / "c.npz", {"v": 1})


@dataclass(frozen=True)
class Config:
    size: int
    rate: float = 0.5
    name: str = "x"
    flag: bool = False

    @classmethod
    def from_dict(cls, d):
        if d.get("size", 1) < 1:
            raise ValueError("size must be >= 1")
        return cls(**d)


@pytest.mark.parametrize("d,needle", [
    ([1, 2], "not a mapping"),
    ({"rate": 0.1}, "lacks 'size'"),
    ({"size": "big"}, "Config.size is 'big', not int"),
    ({"size": True}, "not int"),
    ({"size": 3, "rate": "fast"}, "not float"),
    ({"size": 3, "flag": 1}, "not bool"),
    ({"size": 0}, "size must be >= 1"),
])
def test_config_from_dict_refuses_damaged_configs(d, needle):
    with pytest.raises(CheckpointError, match="where.npz: damaged") as e:
        checkpoint.config_from_dict(Config, d, "where.npz")
    assert needle in str(e.value)


def test_config_from_dict_accepts_good_ones():
    assert checkpoint.config_from_dict(Config, {"size": 3, "rate": 1}, "w") == Config(3, 1)
