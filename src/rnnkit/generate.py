"""Sampling from a language model: temperature, top-k, top-p (nucleus) and greedy decoding.

``generate(model, prompt, settings, rng)`` is a pure function of its arguments: it yields token ids
one at a time (so a caller can stream text as it comes) and leaves the model untouched. The
prompt's tokens are fed first; the last of them gives the first prediction. ``generate_batch``
draws many sequences at once (one matrix product per step for all of them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .backend import to_numpy
from .nn import fused
from .models.language_model import Stepper


@dataclass(frozen=True)
class SampleSettings:
    length: int = 500            # tokens to generate after the prompt
    temperature: float = 1.0     # < 1 sharper, > 1 flatter
    top_k: int = 0               # keep the k most likely tokens (0: all)
    top_p: float = 1.0           # keep the smallest set whose probability reaches p (1: all)
    greedy: bool = False         # always the most likely token

    def __post_init__(self):
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {self.length}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def next_token_probs(logits: np.ndarray, settings: SampleSettings) -> np.ndarray:
    """``logits (B, V)`` -> the distribution to draw from ``(B, V)`` (float64), after temperature,
    top-k and top-p. ``logits`` may be on the GPU (they are copied to the host)."""
    z = np.asarray(to_numpy(logits), dtype=np.float64)
    if settings.temperature != 1.0:
        z = z / settings.temperature
    V = z.shape[-1]
    if 0 < settings.top_k < V:
        kth = np.partition(z, V - settings.top_k, axis=-1)[:, V - settings.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if settings.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p       # mass strictly before each token
        drop = np.zeros_like(p, dtype=bool)
        np.put_along_axis(drop, order, before >= settings.top_p, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample_next(logits, settings: SampleSettings, rng: np.random.Generator) -> np.ndarray:
    """One token per row of ``logits (B, V)``: ``(B,)`` int64.

    Inverse-CDF sampling: a uniform draw ``u`` per row picks the first token whose cumulative
    probability exceeds ``u``. At batch 1 without top-k/top-p, numba's one-pass ``sample_row``
    does it when numba is installed; it sums in another order, so where ``u`` falls within
    rounding of a boundary it can pick the neighbouring token: the same seed gives the same text
    on one installation, not always across installations with and without numba."""
    logits = to_numpy(logits)
    if settings.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if (logits.shape[0] == 1 and fused.available() and settings.top_k == 0
            and settings.top_p == 1.0):                        # batch 1, no filter: one pass
        u = rng.random(1)
        return np.array([fused.sample_row(logits[0], 1.0 / settings.temperature, u[0])],
                        dtype=np.int64)
    cdf = np.cumsum(next_token_probs(logits, settings), axis=-1)
    B, V = cdf.shape
    u = rng.random(B) * cdf[:, -1]
    if B == 1:                                                 # the common case, kept cheap
        return np.array([min(int(np.searchsorted(cdf[0], u[0], side="right")), V - 1)],
                        dtype=np.int64)
    return np.minimum((cdf <= u[:, None]).sum(axis=-1), V - 1).astype(np.int64)


def generate(model, prompt: Sequence[int], settings: SampleSettings,
             rng: np.random.Generator) -> Iterator[int]:
    """Yield ``settings.length`` token ids continuing ``prompt`` (a list of ids, not repeated).

    An empty prompt starts from a token drawn uniformly from the vocabulary; that token is
    yielded first and counts towards ``length``.
    """
    for row in generate_batch(model, prompt, settings, rng, num_samples=1, stream=True):
        yield int(row[0])


def generate_batch(model, prompt: Sequence[int], settings: SampleSettings,
                   rng: np.random.Generator, num_samples: int = 1, stream: bool = False):
    """``num_samples`` continuations of one prompt, drawn together (one matrix product per step
    for all of them). Returns ``(num_samples, length)`` int64, or with ``stream=True`` yields a
    ``(num_samples,)`` array per step."""
    steps = _run(model, prompt, settings, rng, num_samples)
    if stream:
        return steps
    rows = list(steps)
    return np.stack(rows, axis=1) if rows else np.zeros((num_samples, 0), np.int64)


def _run(model, prompt, settings, rng, B):
    V = model.config.vocab_size
    if B < 1:
        raise ValueError(f"num_samples must be >= 1, got {B}")
    prompt = [int(t) for t in prompt]
    bad = [t for t in prompt if not 0 <= t < V]
    if bad:
        raise ValueError(f"prompt ids out of range [0, {V}): {bad[:10]}")
    n = settings.length
    if n == 0:
        return
    xp = model.xp
    stepper = Stepper(model, B)
    if not prompt:
        prompt = [int(rng.integers(V))]
        yield np.full(B, prompt[0], np.int64)
        n -= 1
    for tok in prompt[:-1]:                                        # read the prompt
        stepper.step(xp.full(B, tok, dtype=np.int64))
    current = np.full(B, prompt[-1], np.int64)
    for _ in range(n):                                             # then write
        current = sample_next(stepper.step(xp.asarray(current)), settings, rng)
        yield current
