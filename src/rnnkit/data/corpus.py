"""Corpora: reading a training file, the default corpus, and the train/validation split.

    text = read_text("input.txt", "char")        # str (bytes for the byte tokenizer)
    text, about = default_corpus()               # ~3 MB of this Python's standard library source
    train_ids, val_ids = split_train_val(ids, 0.05)

Every problem with a file is a ``DataError`` whose message is one line that names the file and
says what to do instead.
"""
from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

import numpy as np

from .errors import DataError
from .tokenizers import KINDS

# directories of the standard library that are not its own source: test suites and installed
# third-party packages (pip puts site-packages inside the stdlib directory)
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
DEFAULT_CORPUS_BYTES = 3_000_000


BYTE_HINT = "use --tokenizer byte to model raw bytes"


def read_text(path, kind: str, hint: str = BYTE_HINT):
    """The contents of ``path`` for a tokenizer of ``kind``: ``str``, or ``bytes`` for ``byte``.

    Text kinds (char, word, jieba) need UTF-8 (a leading byte-order mark is dropped) and refuse
    binary files (NUL bytes), ending the message with ``hint`` (what to do instead). Line endings
    are kept as they are in the file.
    """
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose from {', '.join(KINDS)}")
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory, not a file; pass a text file")
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    if not data:
        raise DataError(f"data file {p} is empty")
    if not data.strip():
        raise DataError(f"data file {p} holds only whitespace ({len(data)} bytes)")
    if kind == "byte":
        return data
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{p} looks binary (a NUL byte at offset {nul}); {hint}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        f"convert it to UTF-8, or {hint}") from None
    return text.removeprefix("\ufeff")                              # a byte-order mark


def _stdlib_sources(root: Path) -> list[Path]:
    """The stdlib's ``.py`` files under ``root``, test suites and site-packages left out, sorted
    by their path relative to ``root`` so every machine with this Python lists the same files."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        # _sysconfigdata_*.py is build settings written at install time, not source
        found += [Path(dirpath, f) for f in filenames
                  if f.endswith(".py") and not f.startswith("_sysconfigdata")]
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def default_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> tuple[str, str]:
    """``(text, description)``: up to ``max_bytes`` of UTF-8 from this Python's stdlib source.

    Files are taken whole in sorted path order and joined with "\\n"; the last one is cut at a
    line end so the text is at most ``max_bytes`` bytes (it falls short by less than one line,
    or by more only when the stdlib holds less). Files that are not UTF-8 are skipped. The same
    Python gives the same text on every call and machine.
    """
    if not (isinstance(max_bytes, int) and max_bytes > 0):
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_sources(root) if root.is_dir() else []
    if not files:
        raise DataError(f"no Python standard library source (.py files) in {root} (this Python "
                        f"may ship only compiled files); pass --data FILE to train on a text file")
    parts: list[bytes] = []
    size, used = 0, 0
    for f in files:
        data = f.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        room = max_bytes - size - (1 if parts else 0)                # the "\n" separator
        if room <= 0:
            break
        if len(data) > room:
            data = data[:data.rfind(b"\n", 0, room) + 1]              # whole lines only
            if not data:
                break
        parts.append(data)
        size += len(data) + (1 if len(parts) > 1 else 0)
        used += 1
    text = b"\n".join(parts).decode("utf-8")
    about = (f"Python {platform.python_version()} standard library source: {used} files, "
             f"{size:,} bytes, from {root}")
    return text, about


def split_train_val(ids, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(N,) -> (train (N - V,), val (V,))``: the last ``V = floor(N * val_fraction)`` ids
    validate, as char-rnn splits. Both sides need at least 2 ids (one input, one target);
    ``val_fraction=0`` gives an empty validation set."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n = len(ids)
    n_val = int(n * val_fraction)
    if val_fraction > 0 and n_val < 2:
        raise DataError(f"--val-fraction {val_fraction} of {n} tokens leaves {n_val} for "
                        f"validation, fewer than 2; raise it, use more data, or pass 0")
    if n - n_val < 2:
        raise DataError(f"--val-fraction {val_fraction} of {n} tokens leaves {n - n_val} for "
                        f"training, fewer than 2; lower it or use more data")
    return ids[:n - n_val], ids[n - n_val:]
