"""Atomic, pickle-free checkpoints: one ``.npz`` file holding arrays and a JSON document.

A checkpoint is a *tree*: nested dicts whose leaves are JSON values (numbers, strings, lists,
None) or NumPy arrays. ``save`` puts every array into the npz under its path (``a/b/c``) and the
rest of the tree, with a format marker, into a JSON document stored as bytes under
``__rnnkit__``. The file is written to a temporary name in the same directory, flushed to disk
and renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
``load`` refuses anything that is not a readable rnnkit checkpoint with one ``CheckpointError``
line naming the file and the problem.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT, VERSION = "rnnkit-checkpoint", 1
META_KEY = "__rnnkit__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or not rnnkit's."""


def _split(tree, prefix: str, arrays: dict):
    """The JSON part of ``tree``; arrays are moved into ``arrays`` and replaced by references."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str) or "/" in k or k == META_KEY:
                raise ValueError(f"checkpoint keys must be strings without '/', got {k!r}")
            out[k] = _split(v, f"{prefix}{k}/", arrays)
        return out
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}{i}/", arrays) for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray):
        key = prefix.rstrip("/")
        arrays[key] = tree
        return {"__array__": key}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _join(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


def save(path, tree: dict) -> Path:
    """Write ``tree`` to ``path`` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _split(tree, "", arrays)}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path) -> dict:
    """Read a tree written by ``save``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if META_KEY not in z.files:
                raise CheckpointError(f"{path}: an .npz file, but not an rnnkit checkpoint")
            arrays = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable rnnkit checkpoint (damaged or another "
                              f"format: {type(e).__name__})") from None
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: damaged checkpoint (unreadable metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnnkit checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} is not "
                              f"supported (this rnnkit reads version {VERSION})")
    try:
        return _join(meta["tree"], arrays)
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: damaged checkpoint (missing arrays)") from None
