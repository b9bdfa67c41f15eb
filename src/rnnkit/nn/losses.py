"""Softmax cross-entropy over the last axis, PyTorch's ``F.cross_entropy`` semantics."""
from __future__ import annotations

from .. import backend
from .module import Module


class SoftmaxCrossEntropy(Module):
    """``loss = mean over counted positions of  -log softmax(logits)[target]``.

    Shapes: ``logits (..., C)``, ``targets (...)`` integers in ``[0, C)``; a target equal to
    ``ignore_index`` is not counted (no loss, no gradient). With every target ignored the
    loss is 0 (PyTorch gives NaN there; a NaN in a training log is a worse answer).

    Stable for large logits (1e4 and beyond): ``log softmax(z) = z - max(z) - log sum exp(z - max(z))``.

    Backward: ``dlogits = (softmax(z) - onehot(target)) * dloss / count`` on counted positions,
    zero elsewhere. After ``forward``, ``count`` holds the number of counted targets and
    ``total`` the summed (not averaged) loss, which evaluation sums over batches.
    """

    def __init__(self, ignore_index: int = -100, dtype=None, device: str = "cpu"):
        super().__init__(dtype or "float32", device)
        self.ignore_index = ignore_index
        self.count = 0
        self.total = 0.0
        self._cache = None

    def forward(self, logits, targets):
        xp = self.xp
        if not hasattr(logits, "shape") or logits.ndim < 1:
            raise ValueError("SoftmaxCrossEntropy: logits must be an array of shape (..., C)")
        if not hasattr(targets, "dtype") or targets.dtype.kind not in "iu":
            raise ValueError(f"SoftmaxCrossEntropy: targets must be integers, got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)}")
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"SoftmaxCrossEntropy: targets shape {tuple(targets.shape)} does not "
                             f"match logits {tuple(logits.shape)} without its last axis")
        C = logits.shape[-1]
        z = logits.reshape(-1, C)                                  # (M, C)
        t = targets.reshape(-1)                                    # (M,)
        counted = t != self.ignore_index
        tc = xp.where(counted, t, 0)
        shifted = z - z.max(axis=1, keepdims=True)                 # (M, C), max is 0
        rows = xp.arange(z.shape[0])
        # (M,): the targets' logits; a target out of range is refused below, once its range
        # has come to the host with the count and the total
        picked = shifted[rows, xp.clip(tc, 0, C - 1)]
        exp = xp.exp(shifted, out=shifted)                         # in place: one array a call
        sumexp = exp.sum(axis=1, keepdims=True)
        nll = xp.log(sumexp[:, 0]) - picked                        # (M,)
        # one copy to the host on a GPU, where each int() or float() would wait for the device
        lo, hi, count, total = backend.host_values(
            tc.min() if t.size else 0, tc.max() if t.size else 0, counted.sum(),
            (nll * counted).sum())
        if lo < 0 or hi >= C:
            raise ValueError(f"SoftmaxCrossEntropy: targets must lie in [0, {C}) or equal "
                             f"ignore_index={self.ignore_index}")
        count = int(count)
        # exp and its row sums, for backward: it divides by the sums as it scales, one pass
        # over the (M, C) array where a softmax here would make two
        self._cache = (exp, sumexp, tc, counted, rows, logits.shape)
        self.count, self.total = count, total
        return total / count if count else 0.0

    def backward(self, dloss: float = 1.0):
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward (or twice)")
        exp, sumexp, tc, counted, rows, shape = self._cache
        dz = exp                                                   # owned by this call now
        self._cache = None
        scale = (counted * (dloss / self.count if self.count else 0.0)).astype(dz.dtype)
        dz *= scale[:, None] / sumexp                              # softmax(z) * scale
        dz[rows, tc] -= scale
        return dz.reshape(shape)
