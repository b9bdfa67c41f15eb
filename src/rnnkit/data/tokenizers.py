"""Tokenizers: text <-> int64 ids, built from training text and saved with a model as plain JSON.

Four kinds, one interface (``kind``, ``vocab_size``, ``encode``, ``decode``, ``token``,
``stream_decoder``, ``to_dict``):

    char   the sorted set of characters (code points) of the training text
    byte   the 256 values of UTF-8 bytes; no text has an unknown symbol
    word   whitespace-separated words, each newline an ``<eos>``, rare or unseen words ``<unk>``
    jieba  like ``word``, but each line cut by jieba with its whitespace kept (Chinese text)

    tok = build_tokenizer("char", text)
    ids = tok.encode(text)                                   # (T,) int64
    assert tok.decode(ids) == text
    tok = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))

A sampler prints text as it draws ids through ``tok.stream_decoder()``: ``feed(id)`` returns the
text that id completes ("" while a ``byte`` stream is inside a multi-byte character), and the
pieces, joined and followed by ``flush()``, equal ``tok.decode(ids)``.
"""
from __future__ import annotations

import codecs
import operator
from collections import Counter

import numpy as np

from .errors import DataError, UnknownSymbolsError

KINDS = ("char", "byte", "word", "jieba")
UNK, EOS = "<unk>", "<eos>"
FORMAT_VERSION = 1
JIEBA_HINT = "pip install 'rnnkit[jieba]'"


def _ids(ids, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D int64 array, every id checked against the vocabulary."""
    a = np.asarray(ids)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    a = a.reshape(-1) if a.ndim == 0 else a
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"token ids must be a 1-D sequence of integers, got {a.dtype} {a.shape}")
    a = a.astype(np.int64, copy=False)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {int(a[bad][0])} is outside the vocabulary (0..{vocab_size - 1})")
    return a


def _id(id_, vocab_size: int) -> int:
    """One id as a Python int, checked against the vocabulary (fast: called once per token)."""
    i = operator.index(id_)
    if not 0 <= i < vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary (0..{vocab_size - 1})")
    return i


def _text(text, kind: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"the {kind} tokenizer encodes str, got {type(text).__name__}"
                        + ("; decode it first, or use the byte tokenizer" if
                           isinstance(text, (bytes, bytearray)) else ""))
    return text


def _unknown_mode(unknown, allowed: tuple[str, ...]) -> str:
    mode = allowed[0] if unknown is None else unknown
    if mode not in allowed:
        raise ValueError(f"unknown= must be one of {allowed}, got {unknown!r}")
    return mode


class StreamDecoder:
    """Ids to text one at a time: ``feed(id) -> str`` returns the text ``id`` adds (maybe "").

    ``"".join(map(d.feed, ids)) + d.flush() == tokenizer.decode(ids)`` for a fresh decoder ``d``.
    This base class maps each id to a fixed piece; subclasses keep state between ids.
    """

    def __init__(self, pieces: list[str]):
        self._pieces = pieces

    def feed(self, id_: int) -> str:
        return self._pieces[_id(id_, len(self._pieces))]

    def flush(self) -> str:
        """Text still held back at the end of the stream (only ``byte`` ever holds any)."""
        return ""


class _Utf8StreamDecoder(StreamDecoder):
    """Bytes in, characters out once complete; invalid sequences become U+FFFD, never an error."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, id_: int) -> str:
        return self._decoder.decode(bytes([_id(id_, 256)]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class _LineStreamDecoder(StreamDecoder):
    """Word pieces joined by ``sep`` within a line; ``<eos>`` becomes a newline."""

    def __init__(self, tokens: list[str], sep: str):
        self._tokens, self._sep, self._line_start = tokens, sep, True

    def feed(self, id_: int) -> str:
        tok = self._tokens[_id(id_, len(self._tokens))]
        if tok == EOS:
            self._line_start = True
            return "\n"
        piece = tok if self._line_start else self._sep + tok
        self._line_start = False
        return piece


class Tokenizer:
    """The interface every kind keeps. Ids are int64; ``decode(encode(text))`` gives the text back
    (for ``word``: with whitespace normalised; unknown symbols excepted)."""

    kind = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text, unknown: str | None = None) -> np.ndarray:
        """``text -> (T,)`` int64 ids."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """``(T,)`` ids -> text."""
        d = self.stream_decoder()
        return "".join([d.feed(i) for i in _ids(ids, self.vocab_size).tolist()]) + d.flush()

    def decode_one(self, id_: int) -> str:
        """The text of one id on its own (a lone byte of a multi-byte character gives U+FFFD)."""
        return self.decode([id_])

    def token(self, id_: int) -> str:
        """A printable name for one id, for vocab listings and debugging."""
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Everything needed to restore this tokenizer, as JSON-serialisable plain data."""
        raise NotImplementedError

    def __eq__(self, other):
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per character (Unicode code point); ids follow code-point order.

    ``encode`` raises ``UnknownSymbolsError`` naming characters outside the vocabulary, or drops
    them with ``unknown="skip"``.
    """

    kind = "char"

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise DataError("a char tokenizer needs at least one character of training text")
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a char tokenizer's vocabulary holds single characters")
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)   # sorted

    @classmethod
    def build(cls, text: str) -> "CharTokenizer":
        return cls(_text(text, "char"))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, unknown: str | None = None) -> np.ndarray:
        mode = _unknown_mode(unknown, ("error", "skip"))
        # the vocabulary is sorted by code point, so a binary search maps every character at once
        raw = _text(text, "char").encode("utf-32-le", "surrogatepass")
        cps = np.frombuffer(raw, dtype="<u4").astype(np.int64)         # (T,)
        ids = np.minimum(np.searchsorted(self._codes, cps), self.vocab_size - 1)
        known = self._codes[ids] == cps
        if known.all():
            return ids
        if mode == "skip":
            return ids[known]
        bad = cps[~known]
        distinct, first = np.unique(bad, return_index=True)
        symbols = [chr(c) for c in distinct[np.argsort(first)]]        # first appearance order
        raise UnknownSymbolsError(symbols, int(bad.size), "character", self.vocab_size)

    def decode(self, ids) -> str:
        return "".join(map(self.chars.__getitem__, _ids(ids, self.vocab_size).tolist()))

    def token(self, id_: int) -> str:
        return self.chars[_id(id_, self.vocab_size)]

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.chars)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["chars"])


class ByteTokenizer(Tokenizer):
    """The 256 byte values of the UTF-8 encoding: any text (or raw ``bytes``) encodes."""

    kind = "byte"

    @classmethod
    def build(cls, text=None) -> "ByteTokenizer":
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text, unknown: str | None = None) -> np.ndarray:
        _unknown_mode(unknown, ("error", "skip"))                     # accepted for a uniform call
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogatepass")
        elif not isinstance(text, (bytes, bytearray, memoryview)):
            raise TypeError(f"the byte tokenizer encodes str or bytes, got {type(text).__name__}")
        return np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(_ids(ids, 256).astype(np.uint8)).decode("utf-8", errors="replace")

    def token(self, id_: int) -> str:
        b = _id(id_, 256)
        return chr(b) if 0x20 <= b < 0x7F else f"<0x{b:02X}>"

    def stream_decoder(self) -> StreamDecoder:
        return _Utf8StreamDecoder()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTokenizer":
        return cls()


class WordTokenizer(Tokenizer):
    """Whitespace-separated words; each ``\\n`` is the token ``<eos>``.

    Ids: ``<unk>`` = 0, ``<eos>`` = 1, then words by falling frequency, ties in string order.
    ``build`` keeps words seen at least ``min_freq`` times, and at most ``max_size`` tokens in all
    (the two specials included). A literal ``<unk>`` in the text (PTB has them) is the unknown
    token. ``encode`` maps unseen words to ``<unk>`` (default), drops them (``unknown="skip"``),
    or raises ``UnknownSymbolsError`` (``unknown="error"``). ``decode`` joins words with spaces.
    """

    kind = "word"
    _sep = " "
    unk_id, eos_id = 0, 1

    def __init__(self, tokens, min_freq: int = 1, max_size: int | None = None):
        self.tokens = list(tokens)
        if self.tokens[:2] != [UNK, EOS]:
            raise ValueError(f"a {self.kind} vocabulary starts with {UNK!r}, {EOS!r}")
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        if len(self.stoi) != len(self.tokens):
            raise ValueError(f"a {self.kind} vocabulary holds each token once")
        self.min_freq, self.max_size = min_freq, max_size

    @staticmethod
    def _segment(text: str) -> list[str]:
        # str.split() breaks on every whitespace character; only "\n" ends a sentence
        return _text(text, "word").replace("\n", f" {EOS} ").split()

    @classmethod
    def build(cls, text: str, min_freq: int = 1, max_size: int | None = None):
        if not (isinstance(min_freq, int) and min_freq >= 1):
            raise ValueError(f"min_freq must be an integer >= 1, got {min_freq!r}")
        if max_size is not None and not (isinstance(max_size, int) and max_size >= 2):
            raise ValueError(f"max_size must be None or an integer >= 2 (<unk> and <eos>), "
                             f"got {max_size!r}")
        counts = Counter(cls._segment(text))
        counts.pop(UNK, None)
        counts.pop(EOS, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size - 2]
        return cls([UNK, EOS, *words], min_freq, max_size)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, unknown: str | None = None) -> np.ndarray:
        mode = _unknown_mode(unknown, ("unk", "skip", "error"))
        words = self._segment(text)
        get = self.stoi.get
        ids = np.fromiter((get(w, -1) for w in words), dtype=np.int64, count=len(words))
        missing = ids < 0
        if not missing.any():
            return ids
        if mode == "unk":
            ids[missing] = self.unk_id
            return ids
        if mode == "skip":
            return ids[~missing]
        unknown_words = [w for w, m in zip(words, missing) if m]
        raise UnknownSymbolsError(list(dict.fromkeys(unknown_words)), len(unknown_words),
                                  "word", self.vocab_size)

    def token(self, id_: int) -> str:
        return self.tokens[_id(id_, self.vocab_size)]

    def stream_decoder(self) -> StreamDecoder:
        return _LineStreamDecoder(self.tokens, self._sep)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION, "tokens": list(self.tokens),
                "min_freq": self.min_freq, "max_size": self.max_size}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(d["tokens"], d.get("min_freq", 1), d.get("max_size"))


def _import_jieba():
    try:
        import jieba  # noqa: PLC0415 - optional extra, imported only when segmenting
    except ImportError as e:
        raise ImportError(f"the jieba tokenizer needs the jieba package: {JIEBA_HINT}") from e
    return jieba


class JiebaTokenizer(WordTokenizer):
    """``word``'s vocabulary rules over the pieces ``jieba.lcut`` cuts each line into.

    Whitespace stays as jieba returns it (as tokens of its own), and ``decode`` joins pieces with
    nothing between them, so Chinese (and mixed) text round-trips exactly. Only encoding and
    building need jieba; a restored tokenizer decodes without it. The cut depends on jieba's
    dictionary, so encode with the jieba version the vocabulary was built with.
    """

    kind = "jieba"
    _sep = ""

    @staticmethod
    def _segment(text: str) -> list[str]:
        lcut = _import_jieba().lcut
        lines = _text(text, "jieba").split("\n")
        out: list[str] = []
        for line in lines[:-1]:
            out += lcut(line)
            out.append(EOS)
        out += lcut(lines[-1])
        return out


_CLASSES = {"char": CharTokenizer, "byte": ByteTokenizer, "word": WordTokenizer,
            "jieba": JiebaTokenizer}


def _class(kind) -> type:
    if kind not in _CLASSES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {', '.join(KINDS)}")
    return _CLASSES[kind]


def build_tokenizer(kind: str, text, **options) -> Tokenizer:
    """A tokenizer of ``kind`` built from training ``text``; ``word``/``jieba`` take
    ``min_freq`` and ``max_size``."""
    return _class(kind).build(text, **options)


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Restore any tokenizer from its ``to_dict()``."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError("a saved tokenizer is a dict with a 'kind' key")
    if d.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"this tokenizer was saved in format {d['version']}, newer than this "
                         f"rnnkit reads ({FORMAT_VERSION}); upgrade rnnkit")
    return _class(d["kind"]).from_dict(d)
