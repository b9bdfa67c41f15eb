"""Truncated-BPTT batches for language models: one token stream cut into ``B`` parallel streams.

The recipe of Zaremba et al. and pytorch/examples ``word_language_model`` (``batchify`` and
``get_batch``). With ``N`` tokens and ``B = batch_size``, stream ``b`` is the ``L = N // B``
tokens starting at ``b * L`` (the last ``N - B * L`` tokens are dropped):

    streams (B, L)    row b = ids[b*L : (b+1)*L]
    batch k           x = streams[:, k*T : k*T + t],  y = streams[:, k*T + 1 : k*T + 1 + t]

where ``T = bptt`` and ``t = T`` except for the last window, which holds the ``t <= T`` steps
that remain. Consecutive batches continue the same streams, so a model carries its hidden state
from one batch to the next (detached) and resets it only at a new epoch. Every stream position
is an input once and a target once per epoch, except that the first column is never a target and
the last never an input.

    batcher = StreamBatcher(train_ids, batch_size=20, bptt=35)
    for x, y in batcher:                 # the rest of the current epoch, (B, t) int64 each
        ...
    state = batcher.state_dict()         # {"epoch": e, "position": k}: k batches of e are done
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_ids(ids) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got {a.dtype} {a.shape}")
    return a.astype(np.int64, copy=False)


class StreamBatcher:
    """Resumable epochs of ``(x, y)`` windows, each ``(B, t)`` int64 with ``t <= bptt``.

    Iterating yields the rest of the current epoch and advances ``position`` (the number of this
    epoch's batches already handed out) as each batch is taken. Iterating again after an epoch is
    finished starts the next one (``epoch += 1``, ``position = 0``); ``next_epoch()`` does the
    same explicitly. ``state_dict`` / ``load_state_dict`` save and restore ``epoch`` and
    ``position``, so a resumed run continues with exactly the batches it had left.
    """

    def __init__(self, ids, batch_size: int, bptt: int):
        self.batch_size = _check_size("batch_size", batch_size)
        self.bptt = _check_size("bptt", bptt)
        self.streams = self._make_streams(_as_ids(ids), self.batch_size)   # (B, L)
        self.epoch = 0
        self.position = 0

    @staticmethod
    def _make_streams(ids: np.ndarray, B: int) -> np.ndarray:
        n = len(ids)
        L = n // B
        if L < 2:
            raise DataError(f"{n} tokens are too few for --batch-size {B}: each of the {B} "
                            f"streams needs at least 2 tokens (one input, one target), so at "
                            f"least {2 * B} tokens; use a smaller --batch-size or more data")
        return ids[:B * L].reshape(B, L)                                     # (B, L)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Time steps per stream in an epoch: ``L - 1`` (each needs a next token as target)."""
        return self.streams.shape[1] - 1

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.steps_per_epoch / self.bptt)

    @property
    def tokens_per_epoch(self) -> int:
        """Targets scored in one epoch, ``B * (L - 1)``: the count a mean loss is taken over."""
        return self.batch_size * self.steps_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    # ---- batches -------------------------------------------------------------------------------
    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``k`` of any epoch: ``x (B, t)``, ``y (B, t)`` with ``y[:, j]`` the token after
        ``x[:, j]`` in its stream. Fresh arrays, safe to modify."""
        if not 0 <= k < self.batches_per_epoch:
            raise IndexError(f"batch {k} out of range (0..{self.batches_per_epoch - 1})")
        start = k * self.bptt
        t = min(self.bptt, self.steps_per_epoch - start)
        x = self.streams[:, start:start + t].copy()                           # (B, t)
        y = self.streams[:, start + 1:start + 1 + t].copy()                   # (B, t)
        return x, y

    def iter_from(self, position: int):
        """Yield batches ``position, position + 1, ...`` to the end of the current epoch,
        setting ``self.position`` to the count taken so far as each is handed out."""
        self._check_position(position)
        self.position = position
        while self.position < self.batches_per_epoch:
            k = self.position
            self.position = k + 1
            yield self.batch(k)

    def __iter__(self):
        if self.epoch_finished:
            self.next_epoch()
        return self.iter_from(self.position)

    # ---- epochs and resume ---------------------------------------------------------------------
    @property
    def epoch_finished(self) -> bool:
        return self.position >= self.batches_per_epoch

    def next_epoch(self) -> None:
        """Start the next epoch (the caller resets its hidden state)."""
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._check_position(position)
        self.epoch, self.position = epoch, position

    def _check_position(self, position: int) -> None:
        if not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"position {position} is outside this data's epoch of "
                             f"{self.batches_per_epoch} batches (batch size {self.batch_size}, "
                             f"bptt {self.bptt}); was the run saved with other data or sizes?")

    def __repr__(self):
        return (f"StreamBatcher(batch_size={self.batch_size}, bptt={self.bptt}, "
                f"batches_per_epoch={self.batches_per_epoch}, epoch={self.epoch}, "
                f"position={self.position})")


class EvalBatcher(StreamBatcher):
    """Validation / test windows: ``(x, y)``, ``(B, t)`` int64, as for training, except that

    - the streams overlap by one token (stream ``b`` is ``ids[b*L : (b+1)*L + 1]`` with
      ``L = (N - 1) // B``), so every id from the second to the ``(B*L + 1)``-th is a target
      exactly once; only the first id and the last ``(N - 1) - B*L < B`` are not scored (none
      with ``batch_size=1``);
    - every ``for`` loop is one full pass from the first batch; it keeps no position.

    ``tokens_per_epoch`` is the exact number of targets a pass scores: divide a summed loss by it.
    """

    @staticmethod
    def _make_streams(ids: np.ndarray, B: int) -> np.ndarray:
        n = len(ids)
        L = (n - 1) // B
        if L < 1:
            raise DataError(f"{n} tokens are too few to evaluate with batch size {B}: that needs "
                            f"at least {B + 1}; use a smaller --batch-size")
        cols = np.arange(B)[:, None] * L + np.arange(L + 1)[None, :]           # (B, L + 1)
        return ids[cols]

    def __iter__(self):
        return (self.batch(k) for k in range(self.batches_per_epoch))


def eval_batches(ids, batch_size: int, bptt: int) -> EvalBatcher:
    """The validation / test batches of ``ids``; see ``EvalBatcher``."""
    return EvalBatcher(ids, batch_size, bptt)
