"""One time step of a recurrent network: RNNCell, LSTMCell, GRUCell.

Each cell is a layer of its own (``forward`` one step, ``backward`` one step, parameters named as
torch.nn.RNNCell / LSTMCell / GRUCell) and also the kernel that the sequence layers in
``recurrent.py`` loop over time. The sequence layers add what a loop can share: the input
projection of the whole sequence as one matrix product (``step_forward`` finds ``W_ih x_t + b``
already in ``A``) and the weight gradients of every step as one matrix product
(``weight_grads``), so the per-step kernels here do only the recurrent product and the
elementwise work, writing into buffers they are given.

Internal layout (details of speed, invisible at the API):

- *Feature-major buffers.* Kernels work on ``(features, time, batch)`` arrays: gate
  pre-activations ``A (G, T, N)``, states ``S (H, T + 2, N)``, caches ``(H, T, N)``. A step's
  recurrent product is then ``W_hh (G, H) @ h (H, N)``, the shape in which BLAS runs a
  small-batch product fastest (1.2-1.5x the ``h (N, H) @ W_hh^T`` form here), each gate is a
  contiguous block of rows, and the products over all steps (``W_ih X`` forward, ``dZ X^T`` for
  the weight gradients) are single matrix products over the ``T * N`` columns.
- *Fused weights* made by ``fused()``. Gates that end in a sigmoid have their rows scaled by 1/2,
  because ``sigmoid(z) = (1 + tanh(z / 2)) / 2`` lets one ``tanh`` pass cover every gate; scaling
  by a power of two is exact in floating point. The LSTM's gates are reordered from PyTorch's
  (i, f, g, o) to (i, f, o, g) so that the three sigmoid gates are contiguous. Gradients are taken
  with respect to the true (unscaled) pre-activations and returned in PyTorch's order.
- *Two implementations of the elementwise work*: NumPy ufuncs, or one fused numba pass
  (``fused.py``) when numba is installed; they give the same numbers.

Shapes: ``N`` batch, ``D`` input size, ``H`` hidden size, ``G`` = gates * H. A step ``t`` reads
the previous state from slot ``p`` of ``S`` and writes the new one to slot ``t + 1``. Only the
first ``b`` columns are active (variable-length batches sorted by length, longest first).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import fused as _fused
from .basic import _rng
from .module import Module

KERNELS = ("auto", "numpy", "numba")


class _Cell(Module):
    """Shared parameters, fusion and the one-step API of the three cells."""

    gates = 1                 # number of H-sized gate blocks
    num_states = 1            # (h,) or (h, c)
    sigmoid_blocks = 0        # how many leading blocks (in fused order) end in a sigmoid
    cache_slots = 0           # (H, T, N) buffers kept for backward besides the activations

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, rng=None,
                 dtype=np.float32, device: str = "cpu", kernels: str = "auto"):
        super().__init__(dtype, device)
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        can_fuse = _fused.available() and self.xp is np
        if kernels == "numba" and not can_fuse:
            raise ValueError("kernels='numba' needs numba (pip install 'rnnkit[fast]') and the CPU")
        # the elementwise work of a step: one fused numba pass, or NumPy ufuncs (same numbers)
        self.fused_kernels = can_fuse if kernels == "auto" else kernels == "numba"
        rng = _rng(rng)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G, H = self.gates * hidden_size, hidden_size
        k = 1.0 / math.sqrt(H)   # PyTorch: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))
        self.weight_ih = self.add_param("weight_ih", rng.uniform(-k, k, (G, input_size)))
        self.weight_hh = self.add_param("weight_hh", rng.uniform(-k, k, (G, H)))
        if bias:
            self.bias_ih = self.add_param("bias_ih", rng.uniform(-k, k, G))
            self.bias_hh = self.add_param("bias_hh", rng.uniform(-k, k, G))
        self._step_cache = None

    # -- fused weights -----------------------------------------------------------------------
    def _order(self):
        """Row permutation from PyTorch's gate order to the fused order (identity here)."""
        return None

    def fused(self) -> SimpleNamespace:
        """Weights laid out for the kernels, recomputed from the parameters (cheap: O(G*(D+H))).

        ``Wx (G, D)`` and ``Wh (G, H)``: reordered and scaled, for the forward products;
        ``WxT (D, G)`` and ``WhT (H, G)``: reordered, unscaled, transposed, for the backward ones;
        ``b (G,)``: the bias added to the input projection (``b_ih + b_hh`` where the two add up);
        ``b_hn (H,)``: the GRU's recurrent bias of the candidate (empty for the other cells).
        """
        xp, H = self.xp, self.hidden_size
        order = self._order()
        Wih, Whh = self.weight_ih, self.weight_hh
        if order is not None:
            Wih, Whh = Wih[order], Whh[order]
        scale = xp.ones((self.gates * H, 1), dtype=self.dtype)
        scale[: self.sigmoid_blocks * H] = 0.5
        f = SimpleNamespace(Wx=Wih * scale, Wh=Whh * scale, WxT=xp.ascontiguousarray(Wih.T),
                            WhT=xp.ascontiguousarray(Whh.T))
        if self.bias:
            b_ih, b_hh = self.bias_ih, self.bias_hh
            if order is not None:
                b_ih, b_hh = b_ih[order], b_hh[order]
            b = b_ih + b_hh
            f.b_hn = self._recurrent_candidate_bias(b, b_hh)
            f.b = b * scale[:, 0]
        else:
            f.b = xp.zeros(self.gates * H, dtype=self.dtype)
            f.b_hn = xp.zeros(H if self.gates == 3 else 0, dtype=self.dtype)
        return f

    def _recurrent_candidate_bias(self, b, b_hh):
        return b_hh[:0]

    def weight_grads(self, X, Hprev, dXP, dHH) -> None:
        """Write the parameter gradients of many steps at once, in PyTorch's order.

        Columns are (time, batch) pairs, ``M`` of them: ``X (D, M)`` inputs, ``Hprev (H, M)``
        previous hidden states, ``dXP (G, M)`` gradients of the input-side pre-activations and
        ``dHH (G, M)`` of the recurrent ones (fused order)::

            dW_ih = dXP X^T     dW_hh = dHH Hprev^T     db_ih = sum_cols dXP     db_hh = sum_cols dHH
        """
        xp = self.xp
        order = self._order()
        inv = None if order is None else np.argsort(order)
        parts = [("weight_ih", dXP @ X.T), ("weight_hh", dHH @ Hprev.T)]
        if self.bias:
            ones = xp.ones(dXP.shape[1], dtype=self.dtype)
            db_ih = dXP @ ones                                     # a GEMV: faster than .sum(1)
            parts += [("bias_ih", db_ih), ("bias_hh", db_ih if dHH is dXP else dHH @ ones)]
        for name, value in parts:
            self._grads[name][...] = value if inv is None else value[inv]

    # -- one step as a layer ------------------------------------------------------------------
    def _check_step(self, x, state):
        self._check_float_input(x)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected x of shape (N, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        N, H = x.shape[0], self.hidden_size
        out = []
        for k, s in enumerate(state):
            if s is None:
                s = self.xp.zeros((N, H), dtype=self.dtype)
            else:
                self._check_float_input(s, "state")
                if tuple(s.shape) != (N, H):
                    raise ValueError(f"{type(self).__name__}: expected state {k} of shape "
                                     f"({N}, {H}), got {tuple(s.shape)}")
            out.append(s)
        return out

    def _step(self, x, state):
        """Run ``step_forward`` on one step in fresh buffers; keep them for ``_step_back``."""
        xp, H, dt = self.xp, self.hidden_size, self.dtype
        states_prev = self._check_step(x, state)
        N = x.shape[0]
        f = self.fused()
        A = (f.Wx @ x.T + f.b[:, None])[:, None, :]               # (G, 1, N), becomes activations
        S = [xp.empty((H, 2, N), dtype=dt) for _ in range(self.num_states)]
        for Sj, s in zip(S, states_prev):
            Sj[:, 0] = s.T                                         # slot 0: previous state
        cache = [xp.empty((H, 1, N), dtype=dt) for _ in range(self.cache_slots)]
        self.step_forward(f, A, 0, S, 0, cache, self.new_tmp(N), N)
        self._step_cache = (f, x, A, S, cache)
        return [xp.ascontiguousarray(Sj[:, 1].T) for Sj in S]     # slot 1: the new state

    def _step_back(self, dstates):
        xp, H, dt = self.xp, self.hidden_size, self.dtype
        if self._step_cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        f, x, A, S, cache = self._step_cache
        N = x.shape[0]
        d = [xp.zeros((H, N), dtype=dt) if ds is None else xp.array(ds.T, dtype=dt, order="C")
             for ds in dstates]
        dXP = xp.empty((self.gates * H, 1, N), dtype=dt)
        dHH = xp.empty_like(dXP) if self.gates == 3 else dXP
        self.step_backward(f, A, 0, S, 0, cache, d, dXP, dHH, self.new_tmp(N), N)
        self.weight_grads(x.T, S[0][:, 0], dXP[:, 0], dHH[:, 0])
        return (f.WxT @ dXP[:, 0]).T, [dj.T for dj in d]

    def new_tmp(self, N: int) -> list:
        """Scratch buffers the kernels reuse at every step: ``(G, N)`` and ``(H, N)``."""
        return [self.xp.empty((self.gates * self.hidden_size, N), dtype=self.dtype),
                self.xp.empty((self.hidden_size, N), dtype=self.dtype)]


class RNNCell(_Cell):
    """Elman cell, torch.nn.RNNCell::

        h' = tanh(W_ih x + b_ih + W_hh h + b_hh)        (or relu with nonlinearity='relu')

    Backward: ``dz = dh' * (1 - h'^2)`` (relu: ``dh' * [h' > 0]``), ``dh = W_hh^T dz``, ``dx = W_ih^T dz``.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, **kw)
        self.nonlinearity = nonlinearity

    def forward(self, x, h=None):
        """``x (N, D), h (N, H) -> h' (N, H)``."""
        return self._step(x, [h])[0]

    def backward(self, dh):
        """``dh' (N, H) -> (dx (N, D), dh (N, H))``."""
        dx, (dh_prev,) = self._step_back([dh])
        return dx, dh_prev

    def step_forward(self, f, A, t, S, p, cache, tmp, b):
        xp, relu = self.xp, self.nonlinearity == "relu"
        R = tmp[0][:, :b]
        xp.matmul(f.Wh, S[0][:, p, :b], out=R)                    # W_hh h
        if self.fused_kernels:
            _fused.rnn_forward(A, tmp[0], t, S[0], b, relu)
            return
        a = A[:, t, :b]
        a += R                                                     # + W_ih x + b
        if relu:
            xp.maximum(a, 0, out=a)
        else:
            xp.tanh(a, out=a)
        S[0][:, t + 1, :b] = a                                     # h' (a stays for backward)

    def step_backward(self, f, A, t, S, p, cache, d, dXP, dHH, tmp, b):
        xp = self.xp
        dh, h, dz = d[0][:, :b], A[:, t, :b], dXP[:, t, :b]
        if self.fused_kernels:
            _fused.rnn_backward(A, t, d[0], dXP, b, self.nonlinearity == "relu")
        elif self.nonlinearity == "tanh":
            xp.multiply(h, h, out=dz)
            xp.subtract(1, dz, out=dz)                             # 1 - h'^2
            dz *= dh
        else:
            xp.greater(h, 0, out=dz)
            dz *= dh
        xp.matmul(f.WhT, dz, out=dh)                               # dh = W_hh^T dz


class LSTMCell(_Cell):
    """Long short-term memory cell, torch.nn.LSTMCell (gate order i, f, g, o)::

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    Backward, with ``dh'`` and ``dc'`` arriving::

        dc' += dh' * o * (1 - tanh(c')^2)
        do = dh' * tanh(c')     di = dc' * g     df = dc' * c     dg = dc' * i
        dz_{i,f,o} = d{i,f,o} * s (1 - s)        dz_g = dg * (1 - g^2)
        dc = dc' * f            dh = W_hh^T dz   dx = W_ih^T dz
    """

    gates, num_states, sigmoid_blocks, cache_slots = 4, 2, 3, 1     # cache: tanh(c')

    def _order(self):
        H = self.hidden_size
        i, f, g, o = (np.arange(k * H, (k + 1) * H) for k in range(4))
        return np.concatenate([i, f, o, g])                        # sigmoids first, then g

    def forward(self, x, state=None):
        """``x (N, D), (h, c) each (N, H) -> (h', c')``."""
        h, c = (None, None) if state is None else state
        h1, c1 = self._step(x, [h, c])
        return h1, c1

    def backward(self, dh, dc=None):
        """``dh', dc' (N, H) -> (dx (N, D), (dh, dc))``."""
        dx, (dh_prev, dc_prev) = self._step_back([dh, dc])
        return dx, (dh_prev, dc_prev)

    def step_forward(self, f, A, t, S, p, cache, tmp, b):
        xp, H = self.xp, self.hidden_size
        R = tmp[0][:, :b]
        xp.matmul(f.Wh, S[0][:, p, :b], out=R)                    # W_hh h
        if self.fused_kernels:
            _fused.lstm_forward(A, tmp[0], t, S[0], S[1], p, cache[0], b)
            return
        a = A[:, t, :b]                                            # (4H, b): i f o g
        a += R
        xp.tanh(a, out=a)
        s = a[: 3 * H]
        s *= 0.5
        s += 0.5                                                   # sigmoid(z) = (1 + tanh(z/2)) / 2
        i, fg, o, g = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
        c, tc, h, ig = S[1][:, t + 1, :b], cache[0][:, t, :b], S[0][:, t + 1, :b], tmp[1][:, :b]
        xp.multiply(fg, S[1][:, p, :b], out=c)
        xp.multiply(i, g, out=ig)
        c += ig                                                    # c' = f c + i g
        xp.tanh(c, out=tc)
        xp.multiply(o, tc, out=h)                                  # h' = o tanh(c')

    def step_backward(self, f, A, t, S, p, cache, d, dXP, dHH, tmp, b):
        xp, H = self.xp, self.hidden_size
        dh, dc, dz = d[0][:, :b], d[1][:, :b], dXP[:, t, :b]
        if self.fused_kernels:
            _fused.lstm_backward(A, t, S[1], p, cache[0], d[0], d[1], dXP, b)
            xp.matmul(f.WhT, dz, out=dh)
            return
        a, tc, c_prev, tt = A[:, t, :b], cache[0][:, t, :b], S[1][:, p, :b], tmp[1][:, :b]
        i, fg, o, g = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
        # the cell state: dc' += dh' * o * (1 - tanh(c')^2)
        xp.multiply(tc, tc, out=tt)
        xp.subtract(1, tt, out=tt)
        tt *= o
        tt *= dh
        dc += tt
        # gate gradients before their nonlinearities (blocks i f o g)
        xp.multiply(dc, g, out=dz[:H])
        xp.multiply(dc, c_prev, out=dz[H:2 * H])
        xp.multiply(dh, tc, out=dz[2 * H:3 * H])
        xp.multiply(dc, i, out=dz[3 * H:])
        # through the nonlinearities: s (1 - s) for i f o, 1 - g^2 for g
        s, ds = a[: 3 * H], tmp[0][: 3 * H, :b]
        xp.multiply(s, s, out=ds)
        xp.subtract(s, ds, out=ds)
        dz[: 3 * H] *= ds
        xp.multiply(g, g, out=tt)
        xp.subtract(1, tt, out=tt)
        dz[3 * H:] *= tt
        # to the previous step
        dc *= fg                                                   # dc = dc' * f
        xp.matmul(f.WhT, dz, out=dh)                               # dh = W_hh^T dz


class GRUCell(_Cell):
    """Gated recurrent unit, torch.nn.GRUCell (gate order r, z, n)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Backward, with ``dh'`` arriving and ``hn = W_hn h + b_hn``::

        dn = dh' * (1 - z)         dz = dh' * (h - n)
        dz_n = dn * (1 - n^2)      dz_r = dz_n * hn * r (1 - r)     dz_z = dz * z (1 - z)
        input side:     d(W_i* x) = (dz_r, dz_z, dz_n)
        recurrent side: d(W_h* h) = (dz_r, dz_z, dz_n * r)
        dh = dh' * z + W_hh^T d(W_h* h)      dx = W_ih^T d(W_i* x)
    """

    gates, num_states, sigmoid_blocks, cache_slots = 3, 1, 2, 1     # cache: W_hn h + b_hn

    def _recurrent_candidate_bias(self, b, b_hh):
        # n needs W_hn h + b_hn apart (r multiplies it): keep b_hn out of the input projection
        H = self.hidden_size
        b_hn = b_hh[2 * H:].copy()
        b[2 * H:] -= b_hn
        return b_hn

    def forward(self, x, h=None):
        """``x (N, D), h (N, H) -> h' (N, H)``."""
        return self._step(x, [h])[0]

    def backward(self, dh):
        """``dh' (N, H) -> (dx (N, D), dh (N, H))``."""
        dx, (dh_prev,) = self._step_back([dh])
        return dx, dh_prev

    def step_forward(self, f, A, t, S, p, cache, tmp, b):
        xp, H = self.xp, self.hidden_size
        hh, h_prev = tmp[0][:, :b], S[0][:, p, :b]
        xp.matmul(f.Wh, h_prev, out=hh)                            # (3H, b): W_h* h
        if self.fused_kernels:
            _fused.gru_forward(A, tmp[0], t, S[0], p, f.b_hn, cache[0], b)
            return
        a = A[:, t, :b]
        rz = a[: 2 * H]
        rz += hh[: 2 * H]
        xp.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5                                                  # r, z
        r, z, n = a[:H], a[H:2 * H], a[2 * H:]
        hn = cache[0][:, t, :b]
        xp.add(hh[2 * H:], f.b_hn[:, None], out=hn)               # hn = W_hn h + b_hn
        tt = tmp[1][:, :b]
        xp.multiply(r, hn, out=tt)
        n += tt
        xp.tanh(n, out=n)                                          # n = tanh(W_in x + b_in + r hn)
        h = S[0][:, t + 1, :b]
        xp.subtract(h_prev, n, out=h)
        h *= z
        h += n                                                     # h' = n + z (h - n)

    def step_backward(self, f, A, t, S, p, cache, d, dXP, dHH, tmp, b):
        xp, H = self.xp, self.hidden_size
        dh, dx_, dh_, tt = d[0][:, :b], dXP[:, t, :b], dHH[:, t, :b], tmp[1][:, :b]
        if self.fused_kernels:
            _fused.gru_backward(A, t, S[0], p, cache[0], d[0], dXP, dHH, b)
            xp.matmul(f.WhT, dh_, out=tt)
            dh += tt
            return
        a, hn, h_prev = A[:, t, :b], cache[0][:, t, :b], S[0][:, p, :b]
        r, z, n = a[:H], a[H:2 * H], a[2 * H:]
        # dz_n = dh' (1 - z) (1 - n^2)
        dzn = dx_[2 * H:]
        xp.multiply(dh, z, out=tt)
        xp.subtract(dh, tt, out=dzn)
        xp.multiply(n, n, out=tt)
        xp.subtract(1, tt, out=tt)
        dzn *= tt
        # dz_z = dh' (h - n) z (1 - z)
        dzz = dx_[H:2 * H]
        xp.subtract(h_prev, n, out=dzz)
        dzz *= dh
        xp.multiply(z, z, out=tt)
        xp.subtract(z, tt, out=tt)
        dzz *= tt
        # dz_r = dz_n hn r (1 - r)
        dzr = dx_[:H]
        xp.multiply(dzn, hn, out=dzr)
        xp.multiply(r, r, out=tt)
        xp.subtract(r, tt, out=tt)
        dzr *= tt
        # the recurrent side differs only in the candidate: dz_n * r
        dh_[: 2 * H] = dx_[: 2 * H]
        xp.multiply(dzn, r, out=dh_[2 * H:])
        # to the previous step: dh = dh' z + W_hh^T d(W_h* h)
        dh *= z
        xp.matmul(f.WhT, dh_, out=tt)
        dh += tt
