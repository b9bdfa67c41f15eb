"""Linear, Embedding and Dropout: the layers around a recurrent core.

Each keeps the contract of ``Module``: ``forward`` caches what ``backward`` needs, and
``backward`` writes parameter gradients in place and returns the gradient of its input.
Weights are laid out and named as PyTorch's, and initialised as PyTorch's defaults from a
``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import blas as _blas
from .module import Module


def _rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


class Linear(Module):
    """``y = x W^T + b`` over the last axis: ``(..., in_features) -> (..., out_features)``.

    ``weight`` is ``(out_features, in_features)`` and ``bias`` ``(out_features,)``, both drawn from
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as torch.nn.Linear does.

    Backward, with ``X`` and ``dY`` flattened to rows: ``dW = dY^T X``, ``db = sum_rows dY``,
    ``dX = dY W``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None,
                 dtype=np.float32, device: str = "cpu", blas: str = "auto"):
        super().__init__(dtype, device)
        rng = _rng(rng)
        self.blas = _blas.get_blas(blas, self.xp)                  # products: NumPy or MKL
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = self.add_param("weight", rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = (self.add_param("bias", rng.uniform(-bound, bound, out_features))
                     if bias else None)
        self._x2 = None

    def forward(self, x):
        self._check_float_input(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                      # (M, in)
        y = self.blas.matmul(x2, self.weight.T)                    # (M, out)
        if self.bias is not None:
            y += self.bias
        self._x2, self._lead = x2, lead
        return y.reshape(*lead, self.out_features)

    def backward(self, dy, out=None):
        """``dy (..., out) -> dx (..., in)``; fills the gradients. Consumes the input kept by
        ``forward`` (a language model's decoder keeps the whole sequence's states, which would
        otherwise stay alive through the recurrent layers' backward, at its memory peak).

        ``out``: a buffer the caller owns, ``(..., in)`` C-contiguous, to write ``dx`` into
        instead of a fresh array (a fresh one costs its page faults at every step). It may
        be the input ``forward`` was given: the weight gradient has read that by then."""
        if self._x2 is None:
            raise RuntimeError("Linear.backward called before forward")
        if out is not None:
            self._check_out(out, (*self._lead, self.in_features))
        x2, self._x2 = self._x2, None
        dy2 = dy.reshape(-1, self.out_features)                   # (M, out)
        self.blas.matmul(dy2.T, x2, out=self._grads["weight"])    # dW = dY^T X
        if self.bias is not None:
            dy2.sum(axis=0, out=self._grads["bias"])              # db = sum_rows dY
        dx = None if out is None else out.reshape(-1, self.in_features)
        return self.blas.matmul(dy2, self.weight, out=dx).reshape(*self._lead, self.in_features)


class Embedding(Module):
    """A lookup table: integer ids ``(...)`` -> vectors ``(..., embedding_dim)``.

    ``weight`` is ``(num_embeddings, embedding_dim)`` drawn from N(0, 1) as torch.nn.Embedding;
    the row ``padding_idx`` starts at zero and never receives a gradient.
    Backward scatters: ``dW[id] += dY[position]`` for every position holding ``id``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 *, rng=None, dtype=np.float32, device: str = "cpu"):
        super().__init__(dtype, device)
        rng = _rng(rng)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx {padding_idx} out of range for {num_embeddings} embeddings")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = (
            num_embeddings, embedding_dim, padding_idx)
        w = rng.standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            w[padding_idx] = 0.0
        self.weight = self.add_param("weight", w)
        self._ids = None

    def forward(self, ids):
        check_ids(ids, self.num_embeddings, "Embedding")
        self._ids = ids
        return self.weight[ids]                                    # (..., D)

    def backward(self, dy):
        dW = self._grads["weight"]
        flat = self._ids.reshape(-1)
        scatter_rows(dW, flat, dy.reshape(flat.size, self.embedding_dim))
        if self.padding_idx is not None:
            dW[self.padding_idx] = 0
        return None

    def backward_table(self, dW):
        """Take the gradient of the whole table, ``dW (V, D)``, from a layer that looked the
        rows up itself (a recurrent layer's ``forward(weight, ids=ids)``, ``recurrent.py``)."""
        if tuple(dW.shape) != self.weight.shape:
            raise ValueError(f"Embedding.backward_table: expected a gradient of shape "
                             f"{self.weight.shape}, got {tuple(dW.shape)}")
        self._grads["weight"][...] = dW
        if self.padding_idx is not None:
            self._grads["weight"][self.padding_idx] = 0


def check_ids(ids, num_rows: int, owner: str) -> None:
    """Refuse anything but an integer array whose entries all lie in ``[0, num_rows)``: the
    rows of a lookup table, named in the error by ``owner``."""
    if not hasattr(ids, "dtype") or ids.dtype.kind not in "iu":
        raise ValueError(f"{owner}: ids must be an integer array, got "
                         f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if not ids.size:
        return
    if isinstance(ids, np.ndarray):             # (at every step of sampling: kept cheap)
        lo, hi = int(ids.min()), int(ids.max())
    else:                                       # on a GPU, both in one copy to the host
        lo, hi = (int(v) for v in backend.host_values(ids.min(), ids.max()))
    if lo < 0 or hi >= num_rows:
        raise ValueError(f"{owner}: ids must lie in [0, {num_rows}), got range [{lo}, {hi}]")


def scatter_rows(dW, ids, rows):
    """``dW[v] = sum of rows[i] where ids[i] == v`` (and 0 where no id is ``v``): the gradient
    of a lookup table. ``ids (M,)`` integers, ``rows (M, D)``; ``dW (V, D)`` is overwritten."""
    xp = backend.array_module(dW)
    dW[...] = 0
    if ids.size == 0:
        return
    if xp is not np:                             # CuPy: an atomic scatter-add on the device
        xp.add.at(dW, ids, rows)
        return
    # scatter-add by sorting: the rows of each id summed with one reduceat (np.add.at, the
    # obvious way, is several times slower on batches of thousands of tokens)
    order = xp.argsort(ids, kind="stable")
    ids = ids[order]
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), ids[1:] != ids[:-1]]))
    dW[ids[starts]] = xp.add.reduceat(rows[order], starts, axis=0)


class Dropout(Module):
    """Inverted dropout: in training, ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``;
    in eval, ``y = x``. The mask comes from the ``numpy.random.Generator`` given (``rng``), so a
    test can fix it by handing in a freshly seeded generator before each forward."""

    def __init__(self, p: float = 0.5, *, rng=None, dtype=np.float32, device: str = "cpu"):
        super().__init__(dtype, device)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = _rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = dropout_mask(self.rng, x.shape, self.p, self.dtype, self.xp)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


def dropout_mask(rng: np.random.Generator, shape, p: float, dtype, xp=np):
    """A mask of ``0`` and ``1/(1-p)`` drawn from ``rng`` (on the host, then moved to ``xp``)."""
    keep = rng.random(shape, dtype=np.float32) >= p
    mask = keep.astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return xp.asarray(mask)
