"""Corpora: read_text's one-line errors, the default corpus, the train/validation split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnkit.data import DataError, default_corpus, read_text, split_train_val
from rnnkit.data import corpus as corpus_module

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _one_line_error(path, kind, *fragments):
    with pytest.raises(DataError) as err:
        read_text(path, kind)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ---- read_text -----------------------------------------------------------------------------------
def test_read_text_utf8_and_bytes(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeffgrüße\r\n中文\n".encode("utf-8"))
    assert read_text(f, "char") == "grüße\r\n中文\n"             # BOM dropped, line ends kept
    assert read_text(f, "word") == read_text(f, "char")
    assert read_text(f, "byte") == f.read_bytes()


def test_read_text_errors(tmp_path):
    _one_line_error(tmp_path / "missing.txt", "char", "not found")
    _one_line_error(tmp_path, "char", "directory")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _one_line_error(empty, "byte", "empty")
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b" \n\t\n")
    _one_line_error(blank, "char", "whitespace")


def test_read_text_binary_under_char(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc\x00\x01\x02")
    _one_line_error(f, "char", "offset 3", "--tokenizer byte")
    assert read_text(f, "byte") == b"abc\x00\x01\x02"


def test_read_text_latin1_file(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("café au lait\n".encode("latin-1"))
    for kind in ("char", "word", "jieba"):
        _one_line_error(f, kind, "not valid UTF-8", "offset 3", "0xe9", "--tokenizer byte")
    assert read_text(f, "byte") == "café au lait\n".encode("latin-1")
    f.write_bytes("\ufeffcafé".encode("utf-8") + b"\xff")           # offsets count the BOM
    _one_line_error(f, "char", "0xff at offset 8")


def test_read_text_says_what_to_do_in_the_callers_words(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc\x00")
    with pytest.raises(DataError) as err:
        read_text(f, "char", hint="retrain it")
    assert "offset 3" in str(err.value) and str(err.value).endswith("; retrain it")
    f.write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match="convert it to UTF-8, or retrain it"):
        read_text(f, "word", hint="retrain it")


def test_read_text_unknown_kind(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="choose from"):
        read_text(f, "bpe")


@pytest.mark.skipif(not (DATA / "tinyshakespeare.txt").exists(), reason="shared/data is absent")
def test_read_text_shared_data():
    text = read_text(DATA / "tinyshakespeare.txt", "char")
    assert len(text) == 1_115_394 and len(set(text)) == 65


# ---- default_corpus ------------------------------------------------------------------------------
def test_default_corpus_deterministic_and_sized():
    try:
        text, about = default_corpus()
    except DataError as e:                                      # a Python shipped without sources
        pytest.skip(str(e))
    again, about_again = default_corpus()
    assert text == again and about == about_again
    size = len(text.encode("utf-8"))
    assert 2_900_000 < size <= 3_000_000
    assert "Python" in about and "files" in about and f"{size:,}" in about
    small, _ = default_corpus(max_bytes=100_000)
    assert 90_000 < len(small.encode("utf-8")) <= 100_000
    assert text.startswith(small[:50_000])                     # same files, same order
    assert "def " in small and "import " in small                # Python source


def test_default_corpus_skips_tests_and_site_packages(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    for rel, data in {"a.py": b"A = 1\n", "b/c.py": b"C = 2\n", "test/t.py": b"T\n",
                      "x/tests/t.py": b"T\n", "idlelib/idle_test/t.py": b"T\n",
                      "site-packages/p.py": b"P\n", "latin.py": "é\n".encode("latin-1"),
                      "notes.txt": b"N\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    monkeypatch.setattr(corpus_module.sysconfig, "get_paths", lambda: {"stdlib": str(root)})
    text, about = default_corpus()
    assert text == "A = 1\n\nC = 2\n" and "2 files" in about


def test_default_corpus_without_stdlib_source(tmp_path, monkeypatch):
    (tmp_path / "only.pyc").write_bytes(b"\x00")
    monkeypatch.setattr(corpus_module.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    with pytest.raises(DataError, match="--data FILE"):
        default_corpus()


# ---- split_train_val -----------------------------------------------------------------------------
def test_split_train_val():
    ids = np.arange(100)
    train, val = split_train_val(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 100 and len(val) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_refuses_fraction_outside_range(fraction):
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        split_train_val(np.arange(100), fraction)


def test_split_refuses_tiny_sides():
    with pytest.raises(DataError, match="validation"):
        split_train_val(np.arange(10), 0.1)                   # 1 validation token
    with pytest.raises(DataError, match="training"):
        split_train_val(np.arange(10), 0.95)                  # 1 training token
    train, val = split_train_val(np.arange(20), 0.1)
    assert len(val) == 2
