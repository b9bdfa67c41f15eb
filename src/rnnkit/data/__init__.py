"""Data for language models: tokenizers, corpora and truncated-BPTT batches.

    text -> read_text / default_corpus -> build_tokenizer -> encode -> split_train_val
         -> StreamBatcher (training) / eval_batches (validation, test)

Depends on NumPy only; the jieba tokenizer imports jieba when it segments text.
"""
from .batching import EvalBatcher, StreamBatcher, eval_batches
from .corpus import DEFAULT_CORPUS_BYTES, default_corpus, read_text, split_train_val
from .errors import DataError, UnknownSymbolsError
from .tokenizers import (EOS, KINDS as TOKENIZER_KINDS, UNK, ByteTokenizer, CharTokenizer,
                         JiebaTokenizer, StreamDecoder, Tokenizer, WordTokenizer,
                         build_tokenizer, tokenizer_from_dict)

__all__ = [
    "DataError", "UnknownSymbolsError",
    "Tokenizer", "CharTokenizer", "ByteTokenizer", "WordTokenizer", "JiebaTokenizer",
    "StreamDecoder", "TOKENIZER_KINDS", "UNK", "EOS", "build_tokenizer", "tokenizer_from_dict",
    "read_text", "default_corpus", "split_train_val", "DEFAULT_CORPUS_BYTES",
    "StreamBatcher", "EvalBatcher", "eval_batches",
]
