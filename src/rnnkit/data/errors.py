"""The errors the data package raises: each says, on one line, what is wrong and what to do.

Both are ``ValueError``s, so a caller that does not care which data problem it met can catch
``ValueError``; the command line catches ``DataError`` and prints its message without a traceback.
"""
from __future__ import annotations


class DataError(ValueError):
    """A data file, corpus or batching request that cannot be used; the message is one line."""


class UnknownSymbolsError(DataError):
    """Text holds symbols (characters or words) outside a tokenizer's vocabulary.

    ``symbols`` lists the distinct unknown symbols in order of first appearance;
    ``count`` is how many times they occur in all.
    """

    def __init__(self, symbols: list[str], count: int, what: str, vocab_size: int,
                 shown: int = 10):
        self.symbols = list(symbols)
        self.count = count
        names = ", ".join(repr(s) for s in self.symbols[:shown])
        more = f" and {len(self.symbols) - shown} more" if len(self.symbols) > shown else ""
        super().__init__(
            f"{len(self.symbols)} unknown {what}(s) not in the vocabulary of {vocab_size} "
            f"({count} occurrence(s)): {names}{more}; pass unknown='skip' to drop them, "
            f"or use --tokenizer byte, which has no unknown symbols")
