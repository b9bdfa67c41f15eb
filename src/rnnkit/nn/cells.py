"""One time step of a recurrent network: RNNCell, LSTMCell, GRUCell.

Each cell is a layer of its own (``forward`` one step, ``backward`` one step, parameters named as
torch.nn.RNNCell / LSTMCell / GRUCell) and also the kernel that the sequence layers in
``recurrent.py`` loop over time. The sequence layers add what a loop can share: the input
projection of the whole sequence as one matrix product (``step_forward`` finds ``x_t W_ih^T`` already
in ``A``) and the weight gradients of every step as one matrix product (``weight_grads``), so the
per-step kernels here do only the recurrent product and the elementwise work, writing into buffers
they are given.

Internal layout (details of speed, invisible at the API):

- *Time-major buffers.* Kernels work on ``(time, batch, features)`` arrays: gate pre-activations
  ``A (T, N, G)``, states ``S (T + 2, N, H)``, caches ``(T, N, H)``. Everything a step reads or
  writes is one contiguous block (``A[t]`` is ``(N, G)``), and everything the whole sequence needs
  at once is one contiguous matrix over the ``T * N`` rows: the input projection ``X W_ih^T``, the
  weight gradients ``dZ^T X`` and ``dZ^T H_prev``, and ``dX = dZ W_ih``. (Where the packed loop
  over time runs on two threads, ``A``'s memory holds one such buffer for each thread's units,
  ``(T, N, gates W)``, one after the other: ``timeloop.TimeLoop.blocks``.)
- *Fused weights* made by ``fused()``. Gates that end in a sigmoid have their rows scaled by 1/2,
  because ``sigmoid(z) = (1 + tanh(z / 2)) / 2`` lets one ``tanh`` cover every gate; scaling by a
  power of two is exact in floating point. The LSTM's gates are reordered from PyTorch's
  (i, f, g, o) to (i, f, o, g) so that the three sigmoid gates are contiguous. Gradients are taken
  with respect to the true (unscaled) pre-activations and returned in PyTorch's order.
- *The gradient of the gates overwrites their activations* in ``A`` (a step's backward reads its
  activations once, then no longer needs them), so backward allocates no ``(T, N, G)`` buffer of
  its own. ``backward`` may therefore run once per ``forward``, as in PyTorch.
- *Two implementations of the elementwise work*: the array module's ufuncs, or one fused pass
  per step: numba on the CPU (``fused.py``) when numba is installed, CuPy on the GPU
  (``fused_cuda.py``). They give the same numbers. With numba, the sequence layers also run
  the loop over time compiled (``timeloop.py``), calling the same kernels.
- *Three implementations of the matrix products* (``rnnkit.blas``, the ``blas`` argument): the
  array module's ``matmul``, MKL's GEMM when it is installed, or rnnkit's own packed kernel
  (``blas="packed"``). They agree to rounding.

Shapes: ``N`` batch, ``D`` input size, ``H`` hidden size, ``G`` = gates * H. A step ``t`` reads
the previous state from slot ``p`` of ``S`` and writes the new one to slot ``t + 1``. Only the
first ``b`` rows are active (variable-length batches sorted by length, longest first).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import blas as _blas
from . import fused as _fused
from .basic import _rng
from .module import Module

KERNELS = ("auto", "numpy", "numba", "cupy")


def _kernel_module(kernels: str, xp):
    """The fused kernels for ``kernels`` on the array module ``xp``, or None for the ufuncs.

    ``auto``: fused where available (numba on the CPU, CuPy on the GPU); ``numpy``: the array
    module's own ufuncs, one per operation; ``numba`` / ``cupy``: fused, or an error saying why
    not."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    on_cpu = xp is np
    if kernels == "numba" and not (on_cpu and _fused.available()):
        raise ValueError("kernels='numba' needs numba (pip install 'rnnkit[fast]') and the CPU")
    if kernels == "cupy" and on_cpu:
        raise ValueError("kernels='cupy' needs device='cuda'")
    if kernels == "numpy":
        return None
    if on_cpu:
        return _fused if _fused.available() else None
    from . import fused_cuda  # noqa: PLC0415 - only on the GPU path
    return fused_cuda


class Fused:
    """A cell's weights laid out for the kernels, each made from the parameters when first read,
    so that a path that does not need one does not pay for it: the packed loop over time packs
    the parameters themselves (``timeloop.py``). A forward pass and its backward pass see the
    same parameters, as in PyTorch, which refuses a backward after an in-place change of a
    weight.

    ``WxT (D, G)`` and ``WhT (H, G)``: reordered, scaled, transposed (``WxT`` as a view), for the
    forward products ``x W_ih^T`` and ``h W_hh^T``; ``Wx (G, D)`` and ``Wh (G, H)``: reordered and
    unscaled, for the backward ones ``dZ W_ih`` and ``dZ W_hh``; ``b (G,)``: the bias the kernels
    add (``b_ih + b_hh`` where the two add up, scaled); ``b_hn (H,)``: the GRU's recurrent bias of
    the candidate (empty for the other cells). ``order`` (fused row -> PyTorch row, or None) and
    ``scale (G,)`` (1/2 on the rows of the sigmoid gates) say how the fused rows are made.

    The four matrices are remade at every training step (the weights change), so they are
    written over arrays the cell keeps (``Module._buffer``), a run of rows at a time
    (``_Cell._runs``): fresh arrays cost their page faults every time, and at H=256 the LSTM's
    four took 1.2-1.5 ms a layer that way, some 6% of a step. So a ``Fused`` holds its values
    until the cell's next ``fused()`` reads them again (from the parameters as they are then).
    """

    def __init__(self, cell):
        xp, H, G = cell.xp, cell.hidden_size, cell.gates * cell.hidden_size
        self._cell, self.order = cell, cell._perm
        self.scale = xp.ones(G, dtype=cell.dtype)
        self.scale[: cell.sigmoid_blocks * H] = 0.5
        if cell.bias:
            b_ih, b_hh = cell.bias_ih, cell.bias_hh
            if self.order is not None:
                b_ih, b_hh = b_ih[self.order], b_hh[self.order]
            b = b_ih + b_hh
            self.b_hn = cell._recurrent_candidate_bias(b, b_ih, b_hh)
            self.b = b * self.scale
        else:
            self.b = xp.zeros(G, dtype=cell.dtype)
            self.b_hn = xp.zeros(H if cell.gates == 3 else 0, dtype=cell.dtype)

    def _rows(self, W, name, scaled=False):
        """``W``'s rows in the fused order (times ``scale`` if ``scaled``): ``W`` itself where
        that changes nothing, else the cell's buffer ``name``."""
        runs = self._cell._runs
        if self.order is None and not (scaled and any(s != 1 for _, _, _, s in runs)):
            return W
        out = self._cell._buffer(name, W.shape)
        for dst, src, n, s in runs:
            if scaled and s != 1:
                self._cell.xp.multiply(W[src:src + n], s, out=out[dst:dst + n])
            else:
                out[dst:dst + n] = W[src:src + n]
        return out

    @functools.cached_property
    def Wx(self):
        return self._rows(self._cell.weight_ih, "fused_Wx")

    @functools.cached_property
    def Wh(self):
        return self._rows(self._cell.weight_hh, "fused_Wh")

    @functools.cached_property
    def WxT(self):
        # may stay a transposed view: the one big product per sequence takes it as fast
        return self._rows(self._cell.weight_ih, "fused_WxT", scaled=True).T

    @functools.cached_property
    def WhT(self):
        # copied: the small per-step products run faster on a contiguous one (MKL at H=256,
        # B=32 on a 2-core Xeon: 73 us a step, 86 on the transposed view)
        W, cell = self._cell.weight_hh, self._cell
        out = cell._buffer("fused_WhT", W.shape[::-1])
        for dst, src, n, s in cell._runs:
            _blas.transpose_into(W[src:src + n], s, out[:, dst:dst + n])
        return out


class _Cell(Module):
    """Shared parameters, fusion and the one-step API of the three cells."""

    gates = 1                 # number of H-sized gate blocks
    num_states = 1            # (h,) or (h, c)
    sigmoid_blocks = 0        # how many leading blocks (in fused order) end in a sigmoid
    cache_slots = 0           # (T, N, H) buffers kept for backward besides the activations
    grad_slots = 0            # (T, N, H) buffers backward needs besides the gate gradients

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, rng=None,
                 dtype=np.float32, device: str = "cpu", kernels: str = "auto",
                 blas: str = "auto"):
        super().__init__(dtype, device)
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        # the elementwise work of a step: one fused pass (numba on the CPU, CuPy on the GPU),
        # or one ufunc per operation; the same numbers either way
        self._k = _kernel_module(kernels, self.xp)
        self.fused_kernels = self._k is not None
        # the matrix products: NumPy's matmul, MKL's GEMM or the packed kernel (rnnkit.blas)
        self.blas = _blas.get_blas(blas, self.xp)
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
        """Row permutation from PyTorch's gate order to the fused order (None: the same)."""
        return None

    @property
    def _perm(self):
        """``_order()`` as an index array on the layer's device, made once."""
        if not hasattr(self, "_perm_cache"):
            order = self._order()
            self._perm_cache = None if order is None else self.xp.asarray(order)
        return self._perm_cache

    @property
    def _runs(self):
        """The fused rows as runs ``(dst, src, n, s)``: fused rows ``dst ... dst + n - 1`` are
        PyTorch's rows ``src ... src + n - 1`` times ``s`` (``Fused``), made once."""
        if not hasattr(self, "_runs_cache"):
            G, H = self.gates * self.hidden_size, self.hidden_size
            src = np.arange(G) if self._order() is None else np.asarray(self._order())
            scale = np.where(np.arange(G) < self.sigmoid_blocks * H, 0.5, 1.0)
            cut = np.flatnonzero((np.diff(src) != 1) | (np.diff(scale) != 0)) + 1
            starts, ends = np.r_[0, cut], np.r_[cut, G]
            self._runs_cache = [(int(a), int(src[a]), int(b - a), float(scale[a]))
                                for a, b in zip(starts, ends)]
        return self._runs_cache

    def fused(self) -> "Fused":
        """Weights laid out for the kernels, from the parameters as they are now (``Fused``)."""
        return Fused(self)

    def _recurrent_candidate_bias(self, b, b_ih, b_hh):
        return b_hh[:0]

    def weight_grads(self, X, Hprev, dZ, dHn=None, bias_sums=None, dZ_in=None,
                     parts=None) -> None:
        """Write the parameter gradients of many steps at once, in PyTorch's order.

        Rows are (time, batch) pairs, ``M`` of them: ``X (M, D)`` inputs, ``Hprev (M, H)``
        previous hidden states, ``dZ (M, G)`` gradients of the gate pre-activations (fused order)
        and, for the GRU, ``dHn (M, H)`` that of the candidate's recurrent part ``h W_hn^T + b_hn``::

            dW_ih = dZ^T X     dW_hh = dZ^T Hprev     db_ih = db_hh = sum_rows dZ

        (for the GRU the candidate rows of ``dW_hh`` and ``db_hh`` use ``dHn`` instead).
        ``bias_sums``: ``(sum_rows dZ, sum_rows dHn or None)`` when the loop over time has summed
        them already (the compiled loop does, each step's rows while they are in cache).
        ``dZ_in``: the rows to pair with ``X`` where they are not ``dZ``'s, for a looked-up input
        (``recurrent.py``): ``X (V, D)`` the table and ``dZ_in (V, G)`` the gate gradients summed
        by token, so ``dW_ih = dZ_in^T X``. ``parts``: where the loop over time left ``dZ`` in
        blocks, one for each thread's units (``timeloop.TimeLoop.blocks``), each block as
        ``(dZ_k (M, G_k), its fused columns, j0, j1)``; the products go a block at a time.
        """
        xp, H = self.xp, self.hidden_size
        order = self._perm
        g = self._grads
        mm = self.blas.matmul
        if parts is None:
            parts, rows = [(dZ, None, 0, H)], order
        else:                         # the results' rows: each block's fused rows in turn
            rows = np.concatenate([cols for _, cols, _, _ in parts])
            rows = rows if order is None else order[rows]
        # where the rows are not PyTorch's order (the LSTM's gates, or blocks) the products go to
        # buffers the cell keeps and are put in place after (one product each is faster than one
        # for each run of rows that PyTorch's order keeps together, and a fresh megabyte a call
        # costs its page faults every time)
        dW_ih, dW_hh = (g["weight_ih"], g["weight_hh"]) if rows is None else (
            self._buffer("dW_ih", g["weight_ih"].shape),
            self._buffer("dW_hh", g["weight_hh"].shape))
        if dZ_in is not None:                         # laid out whole: its rows are ``order``
            if order is None:
                mm(dZ_in.T, X, out=g["weight_ih"])
            else:
                mm(dZ_in.T, X, out=dW_ih)
                g["weight_ih"][order] = dW_ih
        groups, off = [], 0
        for dZk, _, j0, j1 in parts:
            Gk, group = dZk.shape[1], []
            if dZ_in is None:
                group.append((dZk.T, X, dW_ih[off:off + Gk]))
            if dHn is None:
                group.append((dZk.T, Hprev, dW_hh[off:off + Gk]))
            else:                     # the GRU's candidate rows: from dHn, its units j0..j1
                W = j1 - j0
                group.append((dZk[:, :2 * W].T, Hprev, dW_hh[off:off + 2 * W]))
                group.append((dHn[:, j0:j1].T, Hprev, dW_hh[off + 2 * W:off + Gk]))
            groups.append(group)
            off += Gk
        if len(groups) == 2 and hasattr(self.blas, "matmul_groups"):
            self.blas.matmul_groups(groups)          # each block's on the thread that made it
        else:
            for a, b, out in (job for group in groups for job in group):
                mm(a, b, out=out)
        if rows is not None:
            if dZ_in is None:
                g["weight_ih"][rows] = dW_ih
            g["weight_hh"][rows] = dW_hh
        if self.bias:
            if bias_sums is None:
                if len(parts) > 1:
                    raise RuntimeError("weight_grads: dZ in blocks needs the loop's bias sums")
                ones = xp.ones((1, dZ.shape[0]), dtype=self.dtype)
                bias_sums = (mm(ones, dZ)[0],                      # a product: faster than .sum(0)
                             None if dHn is None else mm(ones, dHn)[0])
            db = db_hh = bias_sums[0]
            if dHn is not None:
                db_hh = db.copy()
                db_hh[2 * H:] = bias_sums[1]
            if order is None:
                g["bias_ih"][...], g["bias_hh"][...] = db, db_hh
            else:
                g["bias_ih"][order], g["bias_hh"][order] = db, db_hh

    # -- one step of the sequence loop ---------------------------------------------------------
    # The kernel interface, shared by the three cells. Arguments:
    #   f          the fused weights (``fused()``)
    #   A          (T, N, G): x_t W_ih^T on entry; the activations after step_elementwise;
    #              the gate gradients after step_backward
    #   t, p       the step, and the slot of S holding its previous state
    #   S          list of num_states buffers (T + 2, N, H): h (and c); step t writes slot t + 1
    #   cache      list of cache_slots buffers (T, N, H) kept for backward
    #   tmp        [(N, G), (N, H)] scratch; tmp[0] holds h W_hh^T during a forward step
    #   d          list of num_states (N, H): the gradient arriving at the step's new state on
    #              entry to step_backward, the gradient of its previous state on return
    #   gbuf       list of grad_slots buffers (T, N, H) that weight_grads reads (GRU: dz_n * r)
    #   b          only rows [:b] are active (sequences still running at step t)
    def step_forward(self, f, A, t, S, p, cache, tmp, b):
        """Step ``t``: the recurrent product ``h W_hh^T`` into ``tmp[0]``, then the
        elementwise work, which adds ``A[t]`` (``x W_ih^T``), it and the bias."""
        self.blas.matmul(S[0][p, :b], f.WhT, out=tmp[0][:b])      # h W_hh^T
        self.step_elementwise(f, A, t, S, p, cache, tmp, b)

    def step_elementwise(self, f, A, t, S, p, cache, tmp, b):  # pragma: no cover - abstract
        """Gates, new state and cache of step ``t`` from ``A[t] + tmp[0] + bias``."""
        raise NotImplementedError

    def step_backward(self, f, A, t, S, p, cache, d, gbuf, tmp, b):  # pragma: no cover
        """Gate gradients of step ``t`` into ``A[t]``; ``d`` moves to the previous state."""
        raise NotImplementedError

    # -- buffers the kernels use ----------------------------------------------------------------
    def new_tmp(self, N: int) -> list:
        """Scratch buffers the kernels reuse at every step: ``(N, G)`` and ``(N, H)``."""
        return [self.xp.empty((N, self.gates * self.hidden_size), dtype=self.dtype),
                self.xp.empty((N, self.hidden_size), dtype=self.dtype)]

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
        A = self.blas.matmul(x, f.WxT)[None]                       # (1, N, G): x W_ih^T
        S = [xp.empty((2, N, H), dtype=dt) for _ in range(self.num_states)]
        for Sj, s in zip(S, states_prev):
            Sj[0] = s                                              # slot 0: the previous state
        cache = [xp.empty((1, N, H), dtype=dt) for _ in range(self.cache_slots)]
        self.step_forward(f, A, 0, S, 0, cache, self.new_tmp(N), N)
        self._step_cache = (f, x, A, S, cache)
        return [Sj[1].copy() for Sj in S]                          # slot 1: the new state

    def _step_back(self, dstates):
        xp, H, dt = self.xp, self.hidden_size, self.dtype
        if self._step_cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (or twice)")
        f, x, A, S, cache = self._step_cache
        self._step_cache = None                                    # A is overwritten below
        N = x.shape[0]
        d = [xp.zeros((N, H), dtype=dt) if ds is None else xp.array(ds, dtype=dt, order="C")
             for ds in dstates]
        gbuf = [xp.empty((1, N, H), dtype=dt) for _ in range(self.grad_slots)]
        self.step_backward(f, A, 0, S, 0, cache, d, gbuf, self.new_tmp(N), N)
        self.weight_grads(x, S[0][0], A[0], gbuf[0][0] if gbuf else None)
        return self.blas.matmul(A[0], f.Wx), d                     # dx = dZ W_ih


class RNNCell(_Cell):
    """Elman cell, torch.nn.RNNCell::

        h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)        (or relu with nonlinearity='relu')

    Backward: ``dz = dh' * (1 - h'^2)`` (relu: ``dh' * [h' > 0]``), ``dh = dz W_hh``, ``dx = dz W_ih``.
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

    def step_elementwise(self, f, A, t, S, p, cache, tmp, b):
        xp, relu = self.xp, self.nonlinearity == "relu"
        if self.fused_kernels:
            self._k.rnn_forward(A, tmp[0], f.b, t, S[0], b, relu)
            return
        a = A[t, :b]                                               # x W_ih^T
        a += tmp[0][:b]                                            # + h W_hh^T
        a += f.b
        if relu:
            xp.maximum(a, 0, out=a)
        else:
            xp.tanh(a, out=a)
        S[0][t + 1, :b] = a                                        # h' (a stays for backward)

    def step_backward(self, f, A, t, S, p, cache, d, gbuf, tmp, b):
        xp = self.xp
        dh, dz = d[0][:b], A[t, :b]                                # dz overwrites h'
        if self.fused_kernels:
            self._k.rnn_backward(A, t, d[0], b, self.nonlinearity == "relu")
        elif self.nonlinearity == "tanh":
            xp.multiply(dz, dz, out=dz)
            xp.subtract(1, dz, out=dz)                             # 1 - h'^2
            dz *= dh
        else:
            xp.greater(dz, 0, out=dz)
            dz *= dh
        self.blas.matmul(dz, f.Wh, out=dh)                         # dh = dz W_hh


class LSTMCell(_Cell):
    """Long short-term memory cell, torch.nn.LSTMCell (gate order i, f, g, o)::

        i = sigmoid(x W_ii^T + b_ii + h W_hi^T + b_hi)
        f = sigmoid(x W_if^T + b_if + h W_hf^T + b_hf)
        g = tanh   (x W_ig^T + b_ig + h W_hg^T + b_hg)
        o = sigmoid(x W_io^T + b_io + h W_ho^T + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    Backward, with ``dh'`` and ``dc'`` arriving::

        dc' += dh' * o * (1 - tanh(c')^2)
        do = dh' * tanh(c')     di = dc' * g     df = dc' * c     dg = dc' * i
        dz_{i,f,o} = d{i,f,o} * s (1 - s)        dz_g = dg * (1 - g^2)
        dc = dc' * f            dh = dz W_hh     dx = dz W_ih
    """

    gates, num_states, sigmoid_blocks = 4, 2, 3

    @property
    def cache_slots(self):
        """1 (``tanh(c')``, which backward reads) but with numba's kernels, which compute it
        again from ``c'`` rather than write it to memory and read it back (``fused.py``)."""
        return 0 if self._k is _fused else 1

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

    def step_elementwise(self, f, A, t, S, p, cache, tmp, b):
        xp, H = self.xp, self.hidden_size
        if self.fused_kernels:
            self._k.lstm_forward(A, tmp[0], f.b, t, S[0], S[1], p, cache[0] if cache else S[1],
                                 b)
            return
        a = A[t, :b]                                               # (b, 4H): i f o g, x W_ih^T
        a += tmp[0][:b]                                            # + h W_hh^T
        a += f.b
        xp.tanh(a, out=a)
        s = a[:, : 3 * H]
        s *= 0.5
        s += 0.5                                                   # sigmoid(z) = (1 + tanh(z/2)) / 2
        i, fg, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c, tc, h, ig = S[1][t + 1, :b], cache[0][t, :b], S[0][t + 1, :b], tmp[1][:b]
        xp.multiply(fg, S[1][p, :b], out=c)
        xp.multiply(i, g, out=ig)
        c += ig                                                    # c' = f c + i g
        xp.tanh(c, out=tc)
        xp.multiply(o, tc, out=h)                                  # h' = o tanh(c')

    def step_backward(self, f, A, t, S, p, cache, d, gbuf, tmp, b):
        xp, H = self.xp, self.hidden_size
        dh, dc = d[0][:b], d[1][:b]
        if self.fused_kernels:
            self._k.lstm_backward(A, t, S[1], p, cache[0] if cache else S[1], d[0], d[1], b)
            self.blas.matmul(A[t, :b], f.Wh, out=dh)               # dh = dz W_hh
            return
        a, tc, c_prev, tt = A[t, :b], cache[0][t, :b], S[1][p, :b], tmp[1][:b]
        dz = tmp[0][:b]                                            # a is read while dz is built
        i, fg, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        # the cell state: dc' += dh' * o * (1 - tanh(c')^2)
        xp.multiply(tc, tc, out=tt)
        xp.subtract(1, tt, out=tt)
        tt *= o
        tt *= dh
        dc += tt
        # gate gradients before their nonlinearities (blocks i f o g)
        xp.multiply(dc, g, out=dz[:, :H])
        xp.multiply(dc, c_prev, out=dz[:, H:2 * H])
        xp.multiply(dh, tc, out=dz[:, 2 * H:3 * H])
        xp.multiply(dc, i, out=dz[:, 3 * H:])
        dc *= fg                                                   # dc = dc' * f, to the previous step
        # through the nonlinearities: s (1 - s) for i f o, 1 - g^2 for g (a is consumed here)
        s = a[:, : 3 * H]
        dz[:, : 3 * H] *= s
        xp.subtract(1, s, out=s)
        dz[:, : 3 * H] *= s
        xp.multiply(g, g, out=tt)
        xp.subtract(1, tt, out=tt)
        dz[:, 3 * H:] *= tt
        a[...] = dz                                                # the gate gradients replace A[t]
        self.blas.matmul(dz, f.Wh, out=dh)                         # dh = dz W_hh


class GRUCell(_Cell):
    """Gated recurrent unit, torch.nn.GRUCell (gate order r, z, n)::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h

    Backward, with ``dh'`` arriving and ``hn = h W_hn^T + b_hn``::

        dn = dh' * (1 - z)         dz = dh' * (h - n)
        dz_n = dn * (1 - n^2)      dz_r = dz_n * hn * r (1 - r)     dz_z = dz * z (1 - z)
        input side:     d(x W_i*^T) = (dz_r, dz_z, dz_n)
        recurrent side: d(h W_h*^T) = (dz_r, dz_z, dz_n * r)
        dh = dh' * z + d(h W_h*^T) W_hh      dx = d(x W_i*^T) W_ih
    """

    gates, num_states, sigmoid_blocks, cache_slots, grad_slots = 3, 1, 2, 1, 1
    # cache: hn = h W_hn^T + b_hn; grad slot: dz_n * r, the candidate's recurrent gradient

    def _recurrent_candidate_bias(self, b, b_ih, b_hh):
        # n needs h W_hn^T + b_hn apart (r multiplies it): keep b_hn out of the shared bias
        H = self.hidden_size
        b[2 * H:] = b_ih[2 * H:]
        return b_hh[2 * H:].copy()

    def forward(self, x, h=None):
        """``x (N, D), h (N, H) -> h' (N, H)``."""
        return self._step(x, [h])[0]

    def backward(self, dh):
        """``dh' (N, H) -> (dx (N, D), dh (N, H))``."""
        dx, (dh_prev,) = self._step_back([dh])
        return dx, dh_prev

    def step_elementwise(self, f, A, t, S, p, cache, tmp, b):
        xp, H = self.xp, self.hidden_size
        if self.fused_kernels:
            self._k.gru_forward(A, tmp[0], f.b, f.b_hn, t, S[0], p, cache[0], b)
            return
        hh, h_prev = tmp[0][:b], S[0][p, :b]                       # (b, 3H): h W_h*^T
        a = A[t, :b]
        a += f.b
        rz = a[:, : 2 * H]
        rz += hh[:, : 2 * H]
        xp.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5                                                  # r, z
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        hn = cache[0][t, :b]
        xp.add(hh[:, 2 * H:], f.b_hn, out=hn)                      # hn = h W_hn^T + b_hn
        tt = tmp[1][:b]
        xp.multiply(r, hn, out=tt)
        n += tt
        xp.tanh(n, out=n)                                          # n = tanh(x W_in^T + b_in + r hn)
        h = S[0][t + 1, :b]
        xp.subtract(h_prev, n, out=h)
        h *= z
        h += n                                                     # h' = n + z (h - n)

    def step_backward(self, f, A, t, S, p, cache, d, gbuf, tmp, b):
        xp, H = self.xp, self.hidden_size
        dh, dhn, tt = d[0][:b], gbuf[0][t, :b], tmp[1][:b]
        dZ, dHH = A[t, :b], tmp[0][:b]                              # dZ overwrites (r, z, n)
        if self.fused_kernels:
            self._k.gru_backward(A, t, S[0], p, cache[0], d[0], tmp[0], gbuf[0], b)
        else:
            hn, h_prev = cache[0][t, :b], S[0][p, :b]
            r, z, n = dZ[:, :H], dZ[:, H:2 * H], dZ[:, 2 * H:]
            dzr, dzz, dzn = dHH[:, :H], dHH[:, H:2 * H], dHH[:, 2 * H:]
            # dz_n = dh' (1 - z) (1 - n^2)
            xp.multiply(dh, z, out=tt)
            xp.subtract(dh, tt, out=dzn)
            xp.multiply(n, n, out=tt)
            xp.subtract(1, tt, out=tt)
            dzn *= tt
            # dz_z = dh' (h - n) z (1 - z)
            xp.subtract(h_prev, n, out=dzz)
            dzz *= dh
            xp.multiply(z, z, out=tt)
            xp.subtract(z, tt, out=tt)
            dzz *= tt
            # dz_r = dz_n hn r (1 - r)
            xp.multiply(dzn, hn, out=dzr)
            xp.multiply(r, r, out=tt)
            xp.subtract(r, tt, out=tt)
            dzr *= tt
            dh *= z                                                # dh' z, the direct path
            # input side (dz_r, dz_z, dz_n) into A[t]; recurrent side (dz_r, dz_z, dz_n r) in dHH
            xp.multiply(dzn, r, out=dhn)
            dZ[...] = dHH
            dHH[:, 2 * H:] = dhn
        # to the previous step: dh = dh' z + d(h W_h*^T) W_hh
        self.blas.matmul(dHH, f.Wh, out=tt)
        dh += tt
