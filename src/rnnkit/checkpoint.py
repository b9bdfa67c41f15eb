"""Atomic, pickle-free checkpoints: one ``.npz`` file holding arrays and a JSON document.

A checkpoint is a *tree*: nested dicts whose leaves are JSON values (numbers, strings, lists,
None) or NumPy arrays. ``save`` puts every array into the npz under its path (``a/b/c``) and the
rest of the tree, with a format marker, into a JSON document stored as bytes under
``__rnnkit__``. The file is written to a temporary name in the same directory, flushed to disk
and renamed over the target, so a crash mid-write leaves the previous checkpoint intact; a write
that fails (disk full, no permission) is one ``CheckpointWriteError`` line saying so.
``load`` refuses anything that is not a readable rnnkit checkpoint with one ``CheckpointError``
line naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
import zipfile
import zlib
from pathlib import Path

import numpy as np

FORMAT, VERSION = "rnnkit-checkpoint", 1
META_KEY = "__rnnkit__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or not rnnkit's."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, no permission...); the previous file
    at that path, if any, is unchanged."""


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
    arrays: dict = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _split(tree, "", arrays)}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "the previous checkpoint there is unchanged" if path.is_file() else "nothing saved"
        err = CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}")
        err.errno = e.errno
        raise err from e
    except BaseException:
        if tmp is not None:
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
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):        # a bare .npy array
            raise CheckpointError(f"{path}: a NumPy array file, not an rnnkit checkpoint")
        with z:
            if META_KEY not in z.files:
                raise CheckpointError(f"{path}: an .npz file, but not an rnnkit checkpoint")
            arrays = {k: z[k] for k in z.files}
        odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
        if odd:
            raise CheckpointError(f"{path}: damaged checkpoint ({odd[0]!r} is not a NumPy array)")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable rnnkit checkpoint (damaged or another "
                              f"format: {type(e).__name__})") from None
    try:
        raw = arrays.pop(META_KEY)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("metadata is not a byte string")
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError):       # UnicodeDecodeError, JSONDecodeError included
        raise CheckpointError(f"{path}: damaged checkpoint (unreadable metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnnkit checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} is not "
                              f"supported (this rnnkit reads version {VERSION})")
    if not isinstance(meta.get("tree"), dict):
        raise CheckpointError(f"{path}: damaged checkpoint (its metadata holds no tree)")
    try:
        return _join(meta["tree"], arrays)
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: damaged checkpoint (missing arrays)") from None


def config_from_dict(cls, d, where: str):
    """``cls.from_dict(d)`` for a config dataclass read from a checkpoint, refusing (with a
    ``CheckpointError`` naming ``where``) anything that is not a dict of correctly typed fields,
    so that a damaged file fails here and not deep inside the model."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: damaged checkpoint ({cls.__name__} is "
                              f"{type(d).__name__}, not a mapping)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{where}: damaged checkpoint ({cls.__name__} lacks "
                                      f"{f.name!r})")
            continue
        value, kind = d[f.name], hints.get(f.name)
        ok = {int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool),
              bool: isinstance(value, bool),
              str: isinstance(value, str)}.get(kind, True)
        if not ok:
            raise CheckpointError(f"{where}: damaged checkpoint ({cls.__name__}.{f.name} is "
                                  f"{value!r}, not {kind.__name__})")
    try:
        return cls.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: damaged checkpoint ({cls.__name__}: {e})") from None
