"""Tokenizers: round trips, JSON save/restore, streaming decode, unknown symbols, PTB counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnkit.data import (EOS, TOKENIZER_KINDS, UNK, DataError, UnknownSymbolsError,
                         build_tokenizer, tokenizer_from_dict)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXED = "Hello, wörld! Ça va? Ελληνικά, русский, 中文字符, עברית, emoji 😀👍🏽 e\u0301\n\ttab\r\nend"


def _restored(tok):
    return tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))


def _streamed(tok, ids):
    d = tok.stream_decoder()
    return "".join(d.feed(i) for i in ids) + d.flush()


# ---- char ----------------------------------------------------------------------------------------
def test_char_round_trip_mixed_scripts():
    tok = build_tokenizer("char", MIXED)
    ids = tok.encode(MIXED)
    assert ids.dtype == np.int64 and ids.shape == (len(MIXED),)
    assert tok.vocab_size == len(set(MIXED))
    assert tok.decode(ids) == MIXED
    assert _streamed(tok, ids) == MIXED
    assert "".join(tok.decode_one(i) for i in ids) == MIXED


def test_char_vocabulary_is_sorted_code_points():
    tok = build_tokenizer("char", "cabbage\n")
    assert tok.chars == ["\n", "a", "b", "c", "e", "g"]
    assert tok.encode("bag").tolist() == [2, 1, 5]
    assert [tok.token(i) for i in range(tok.vocab_size)] == tok.chars


def test_char_unknown_symbols_are_named():
    tok = build_tokenizer("char", "abc")
    with pytest.raises(UnknownSymbolsError) as err:
        tok.encode("abXcé😀é")
    e = err.value
    assert isinstance(e, ValueError) and isinstance(e, DataError)
    assert e.symbols == ["X", "é", "😀"] and e.count == 4
    msg = str(e)
    assert "'X'" in msg and "'é'" in msg and "'😀'" in msg and "3 unknown" in msg
    assert "\n" not in msg
    assert tok.encode("abXcé", unknown="skip").tolist() == tok.encode("abc").tolist()


def test_char_unknown_message_is_capped():
    tok = build_tokenizer("char", "a")
    with pytest.raises(UnknownSymbolsError) as err:
        tok.encode("bcdefghijklmnopq")
    assert len(err.value.symbols) == 16
    assert "and 6 more" in str(err.value) and "'q'" not in str(err.value)


def test_char_refuses_empty_text_and_bytes():
    with pytest.raises(DataError):
        build_tokenizer("char", "")
    with pytest.raises(TypeError, match="byte"):
        build_tokenizer("char", "ab").encode(b"ab")


# ---- byte ----------------------------------------------------------------------------------------
def test_byte_round_trip_and_stream_decoder():
    tok = build_tokenizer("byte", MIXED)
    ids = tok.encode(MIXED)
    assert tok.vocab_size == 256 and ids.dtype == np.int64
    assert ids.tolist() == list(MIXED.encode("utf-8"))
    assert tok.decode(ids) == MIXED
    # one id at a time: nothing is emitted inside a multi-byte character, and all of it comes out
    d = tok.stream_decoder()
    pieces = [d.feed(i) for i in ids]
    assert "".join(pieces) + d.flush() == MIXED
    emoji = MIXED.index("😀")
    assert pieces[len(MIXED[:emoji].encode()):][:4] == ["", "", "", "😀"]


def test_byte_invalid_sequences_never_raise():
    tok = build_tokenizer("byte", b"")
    ids = [0xE4, 0xB8, 0x41, 0xFF, 0xF0, 0x9F]                  # cut characters, a stray 0xFF
    expected = bytes(ids).decode("utf-8", errors="replace")
    assert tok.decode(ids) == expected
    assert _streamed(tok, ids) == expected
    assert tok.encode(b"\xff\x00").tolist() == [255, 0]        # raw bytes encode as they are
    assert tok.decode_one(0xE4) == "\ufffd"
    assert [tok.token(i) for i in tok.encode("a\n")] == ["a", "<0x0A>"]


# ---- word ----------------------------------------------------------------------------------------
SMALL = "the cat sat\nthe dog sat on the mat\n<unk> cat\n"


def test_word_vocabulary_order_min_freq_and_max_size():
    tok = build_tokenizer("word", SMALL)
    # specials first, then by falling count (the:3, cat:2, sat:2), ties in string order
    assert tok.tokens == [UNK, EOS, "the", "cat", "sat", "dog", "mat", "on"]
    assert build_tokenizer("word", SMALL, min_freq=2).tokens == [UNK, EOS, "the", "cat", "sat"]
    assert build_tokenizer("word", SMALL, max_size=4).tokens == [UNK, EOS, "the", "cat"]
    assert build_tokenizer("word", SMALL, min_freq=3, max_size=10).tokens == [UNK, EOS, "the"]
    with pytest.raises(ValueError):
        build_tokenizer("word", SMALL, max_size=1)
    with pytest.raises(ValueError):
        build_tokenizer("word", SMALL, min_freq=0)


def test_word_encode_decode_and_unknowns():
    tok = build_tokenizer("word", SMALL, min_freq=2)
    ids = tok.encode("the dog sat\n<unk> cat")
    assert ids.tolist() == [2, 0, 4, 1, 0, 3]                  # dog and the literal <unk> -> 0
    assert tok.decode(ids) == "the <unk> sat\n<unk> cat"
    assert _streamed(tok, ids) == tok.decode(ids)
    assert tok.encode("the  dog\tsat", unknown="skip").tolist() == [2, 4]
    with pytest.raises(UnknownSymbolsError) as err:
        tok.encode("the dog and dog", unknown="error")
    assert err.value.symbols == ["dog", "and"] and err.value.count == 3
    # whitespace is normalised, words and line breaks are kept
    full = build_tokenizer("word", SMALL)
    assert full.decode(full.encode(" the  cat \n\nsat ")) == "the cat\n\nsat"


def test_word_round_trip_through_json():
    tok = build_tokenizer("word", SMALL, min_freq=1, max_size=6)
    back = _restored(tok)
    assert back == tok and back.kind == "word" and back.max_size == 6
    assert back.encode(SMALL).tolist() == tok.encode(SMALL).tolist()


@pytest.mark.skipif(not (DATA / "ptb.train.txt").exists(), reason="shared/data is absent")
def test_word_on_ptb_train():
    text = (DATA / "ptb.train.txt").read_text(encoding="utf-8")
    tok = build_tokenizer("word", text)
    ids = tok.encode(text)
    assert tok.vocab_size == 10_000
    assert len(ids) == 929_589
    assert int((ids == tok.eos_id).sum()) == 42_068
    assert tok.encode(tok.decode(ids)).tolist() == ids.tolist()


# ---- jieba ---------------------------------------------------------------------------------------
def test_jieba_round_trip():
    pytest.importorskip("jieba")
    text = "我来到北京清华大学。\n  他说：hello world，中文分词！\n\n最后一行"
    tok = build_tokenizer("jieba", text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert _streamed(tok, ids) == text
    assert "清华大学" in tok.tokens and " " in tok.tokens
    back = _restored(tok)
    assert back == tok and back.encode(text).tolist() == ids.tolist()
    assert tok.decode(tok.encode("我来到上海")).startswith("我来到")   # unseen words -> <unk>


def test_jieba_missing_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_jieba(name, *args, **kwargs):
        if name == "jieba":
            raise ImportError("No module named 'jieba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jieba)
    with pytest.raises(ImportError, match=r"pip install 'rnnkit\[jieba\]'"):
        build_tokenizer("jieba", "中文")


# ---- every kind ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_every_kind_restores_from_json(kind):
    if kind == "jieba":
        pytest.importorskip("jieba")
    text = "one two three\nfour five six seven\n"
    tok = build_tokenizer(kind, text)
    back = _restored(tok)
    assert type(back) is type(tok) and back.kind == kind == tok.kind
    assert back.vocab_size == tok.vocab_size
    ids = tok.encode(text)
    assert back.encode(text).tolist() == ids.tolist()
    assert back.decode(ids) == tok.decode(ids) == text


def test_bad_kinds_and_ids():
    with pytest.raises(ValueError, match="choose from"):
        build_tokenizer("bpe", "text")
    with pytest.raises(ValueError, match="kind"):
        tokenizer_from_dict({"chars": "ab"})
    with pytest.raises(ValueError, match="newer"):
        tokenizer_from_dict({"kind": "byte", "version": 99})
    tok = build_tokenizer("char", "ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.stream_decoder().feed(-1)
    assert tok.decode([]) == "" and tok.encode("").shape == (0,)
