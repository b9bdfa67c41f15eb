"""Sequence layers RNN, LSTM and GRU: a cell from ``cells.py`` looped over time.

PyTorch's arguments, equations, parameter names and shapes (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the backward direction), so a torch
``state_dict()`` loads unchanged and gives the same numbers. ``batch_first=True`` is the default
here (it is not in torch); ``h0``/``c0`` and ``h_n``/``c_n`` are ``(num_layers * num_directions, N, H)``
whatever ``batch_first`` is, as in torch.

    out, h_n = rnn(x, h0=None, lengths=None)        x (N, T, D) -> out (N, T, num_directions * H)
    dx, dh0  = rnn.backward(dout, dh_n=None)
    out, (h_n, c_n) = lstm(x, (h0, c0))             dx, (dh0, dc0) = lstm.backward(dout, (dh_n, dc_n))

``forward(..., out=buf)`` writes ``out`` into ``buf``, a C-contiguous array of its shape that the
caller owns and reuses (a language model's, between steps), instead of a fresh copy.

A looked-up input: ``forward(table, ids=ids)`` takes as its input ``x = table[ids]``, the rows of
``table (V, D)`` (an embedding's weight) at ``ids (N, T)`` (``(T, N)`` when not ``batch_first``;
every id in ``[0, V)``, padding included), and ``backward`` then returns the gradient of the
table, ``(V, D)``, in place of ``dx``. Where the vocabulary is small next to the
batch (``_folds``: a character-level language model's) the rows are never gathered. The first
layer's input projection is a lookup, ``x_t W_ih^T = (table W_ih^T)[ids_t]``, one product of
``V`` rows instead of ``N T``. Backward needs only ``S (V, G)``, the gate gradients summed by
token, which the loop over time sums as it goes (as it does the bias gradient): then
``dW_ih = S^T table``, ``d table = S W_ih`` and ``db = sum_v S_v``, and the ``N T``-row
products ``dZ^T X`` and ``dZ W_ih`` are gone. The same numbers as gathering first, to rounding
(tested). Elsewhere the layer gathers ``table[ids]`` itself and scatters ``dx`` back.

How the loop is made fast, every part tested equal to stepping the cell by hand:
- the input projection ``X W_ih^T`` of the whole sequence is one matrix product per layer;
- the per-step kernels only do ``h W_hh^T`` and the elementwise work, into reused buffers;
- with numba installed, the loop over time itself is compiled (``timeloop.py``): the same
  products and kernels, without Python between steps;
- the matrix products go to ``rnnkit.blas``: NumPy's ``matmul``, MKL's GEMM when it is
  installed, or rnnkit's packed kernel, whose loop over time runs on two threads (the ``blas``
  argument, passed on to the cells, says which);
- the weight gradients of all steps are one matrix product each (``cells._Cell.weight_grads``;
  one for each thread's block of the gates where the packed loop runs on two threads).

Variable lengths (``lengths``, what PyTorch's PackedSequence does): the batch is sorted longest
first, so at step ``t`` the active sequences are a prefix ``[:b_t]`` of the rows; the rest keep their
state untouched. Outputs past a sequence's end are zero, ``h_n`` is each sequence's own last
state, the reverse direction starts at each sequence's own last step, and padding gets no
gradient.

Internally everything is time-major ``(T, N, features)`` (see ``cells.py`` for why). The states
of a direction live in one buffer ``S (T + 2, N, H)`` where ``S[t + 1]`` is the state after time
``t``; the initial state sits in slot ``0`` (forward) or ``T + 1`` (reverse), so the previous state
of time ``t`` is ``S[t]`` or ``S[t + 2]``, and the previous states of all steps, which the weight
gradient needs, are one ``(T * N, H)`` view.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .basic import _rng, check_ids, dropout_mask, scatter_rows
from .cells import GRUCell, LSTMCell, RNNCell
from .module import Module
from .timeloop import TimeLoop

FOLD_BYTES = 1 << 20   # a looked-up input folds while its sums S (V, G) take at most this much


class _Recurrent(Module):
    """Stacked, optionally bidirectional recurrence over a cell class (shared by RNN/LSTM/GRU)."""

    cell_class = None

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0, bidirectional: bool = False, *,
                 stateful: bool = False, rng=None, dtype=np.float32, device: str = "cpu", **cell_kw):
        super().__init__(dtype, device)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.rng = _rng(rng)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.bidirectional, self.stateful = bidirectional, stateful
        self.num_directions = 2 if bidirectional else 1
        self.cells = []                       # cells[layer][direction]
        for k in range(num_layers):
            row = []
            for d in range(self.num_directions):
                d_in = input_size if k == 0 else hidden_size * self.num_directions
                cell = self.cell_class(d_in, hidden_size, bias, rng=self.rng, dtype=dtype,
                                       device=device, **cell_kw)
                sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
                for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ()):
                    self.share_param(name + sfx, cell._params[name], cell._grads[name])
                row.append(cell)
            self.cells.append(row)
        self._state = None                    # carried final state when stateful
        self._cache = None

    def reset_state(self) -> None:
        """Forget the state carried between calls (``stateful=True``)."""
        self._state = None

    # -- input checks -------------------------------------------------------------------------
    def _check_input(self, x, state, lengths, ids=None):
        name = type(self).__name__
        self._check_float_input(x, "x" if ids is None else "table")
        if ids is not None:                   # a looked-up input: x = table[ids]
            if x.ndim != 2 or x.shape[1] != self.input_size:
                raise ValueError(f"{name}: expected a table of shape (V, {self.input_size}), "
                                 f"got {tuple(x.shape)}")
            check_ids(ids, x.shape[0], name)
            if ids.ndim != 2:
                want = "(N, T)" if self.batch_first else "(T, N)"
                raise ValueError(f"{name}: ids must have shape {want}, got {tuple(ids.shape)}")
            shape = (*ids.shape, self.input_size)
        elif x.ndim != 3 or x.shape[2] != self.input_size:
            want = "(N, T, {})" if self.batch_first else "(T, N, {})"
            raise ValueError(f"{name}: expected input of shape "
                             f"{want.format(self.input_size)}, got {tuple(x.shape)}")
        else:
            shape = x.shape
        N, T = (shape[0], shape[1]) if self.batch_first else (shape[1], shape[0])
        if T < 1 or N < 1:
            raise ValueError(f"{name}: empty input of shape {tuple(shape)}")
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        states = []
        for k, s in enumerate(state):
            if s is not None:
                self._check_float_input(s, "h0" if k == 0 else "c0")
                if tuple(s.shape) != (LD, N, H):
                    raise ValueError(f"{type(self).__name__}: expected {'h0' if k == 0 else 'c0'} "
                                     f"of shape ({LD}, {N}, {H}), got {tuple(s.shape)}")
            states.append(s)
        if lengths is not None:
            lengths = backend.to_numpy(lengths)
            if lengths.shape != (N,) or lengths.dtype.kind not in "iu":
                raise ValueError(f"{type(self).__name__}: lengths must be {N} integers, got "
                                 f"shape {lengths.shape} dtype {lengths.dtype}")
            if lengths.min() < 1 or lengths.max() > T:
                raise ValueError(f"{type(self).__name__}: lengths must lie in [1, {T}], got "
                                 f"[{lengths.min()}, {lengths.max()}]")
        return N, T, states, lengths

    # -- forward ------------------------------------------------------------------------------
    def _forward(self, x, state, lengths, y_out=None, ids=None):
        xp, H, D = self.xp, self.hidden_size, self.num_directions
        N, T, states0, lengths = self._check_input(x, state, lengths, ids)
        if y_out is not None:
            self._check_out(y_out, (N, T, D * H) if self.batch_first else (T, N, D * H), "out")
        if all(s is None for s in states0) and self.stateful and self._state is not None:
            if self._state[0].shape[1] != N:
                raise ValueError(f"{type(self).__name__}: stateful layer carries a batch of "
                                 f"{self._state[0].shape[1]} but got {N}; call reset_state()")
            states0 = list(self._state)
        if ids is None:
            X, keys = (x.transpose(1, 0, 2) if self.batch_first else x), None    # (T, N, D_in)
        else:       # x[ids]: the ids time-major, (T, N), a copy the caller cannot change
            table, ids = x, xp.asarray(ids)
            keys = xp.array(ids.T if self.batch_first else ids, dtype=np.int64, order="C")

        # variable lengths: sort longest first so the active rows at each step are a prefix
        perm = None
        if lengths is None:
            sizes = [N] * T
        else:
            order = np.argsort(-lengths, kind="stable")
            if np.any(order != np.arange(N)):
                perm = xp.asarray(order)                    # indexes arrays on the layer's device
                if keys is None:
                    X = X[:, perm]
                else:
                    keys = keys[:, perm]
                states0 = [None if s is None else s[:, perm] for s in states0]
            sorted_len = lengths[order]
            sizes = [int(np.sum(sorted_len > t)) for t in range(T)]
        fold = keys is not None and self._folds(table.shape[0], N, T)
        if keys is None:
            layer_in = xp.ascontiguousarray(X)
        elif fold:                    # the first layer takes the table and the ids themselves
            keys = xp.ascontiguousarray(keys)
            layer_in = table
        else:                                                    # gathered: (T, N, D_in)
            layer_in = xp.take(table, keys, axis=0)
        caches, finals = [], [[] for _ in states0]
        for k, row in enumerate(self.cells):
            out = self._buffer(f"out{k}", (T, N, D * H)) if D == 2 else None
            dir_caches = []
            for d, cell in enumerate(row):
                idx = k * D + d
                init = [None if s is None else s[idx] for s in states0]
                c = self._run_direction(cell, layer_in, init, sizes, reverse=d == 1, key=f"{k}.{d}",
                                        keys=keys if fold and k == 0 else None)
                dir_caches.append(c)
                S = c["S"]
                if out is not None:
                    out[:, :, d * H:(d + 1) * H] = S[0][1:T + 1]
                else:
                    out = S[0][1:T + 1]                                           # (T, N, H) view
                for j, Sj in enumerate(S):
                    finals[j].append(Sj[1] if d == 1 else Sj[T])                 # (N, H)
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                mask = dropout_mask(self.rng, out.shape, self.dropout, self.dtype, xp)
                out = out * mask
            caches.append({"x": layer_in, "dirs": dir_caches, "mask": mask,
                           "keys": keys if fold and k == 0 else None})
            layer_in = out

        y = layer_in.transpose(1, 0, 2) if self.batch_first else layer_in       # (N, T, D*H)
        h_n = [xp.stack(f) for f in finals]                                      # (L*D, N, H)
        if perm is not None:                                                     # caller's order
            inv = xp.argsort(perm)
            y = y[inv] if self.batch_first else y[:, inv]                        # (a copy)
            h_n = [s[:, inv] for s in h_n]
        elif y_out is None:
            y = xp.array(y, order="C")       # a copy: the buffers are reused and backward reads them
        if y_out is not None:
            y_out[...] = y
            y = y_out
        if lengths is not None:
            pad = np.arange(T)[None, :] >= lengths[:, None]                     # (N, T)
            y[xp.asarray(pad if self.batch_first else pad.T)] = 0
        if self.stateful:
            self._state = [s.copy() for s in h_n]
        self._cache = {"caches": caches, "perm": perm, "sizes": sizes, "N": N, "T": T,
                       "lookup": None if ids is None else (keys, table.shape[0], fold)}
        return y, h_n

    def _folds(self, V, N, T) -> bool:
        """Whether a looked-up input of ``V`` rows over ``N T`` positions goes through the first
        layer without being gathered (see the module's docstring): where the compiled loop over
        time runs (it sums the gate gradients by token), the table's projection is at most a
        quarter of the sequence's, and the sums ``(V, G)`` stay small enough to sit in cache."""
        G = self.cells[0][0].gates * self.hidden_size
        return (all(TimeLoop.for_cell(cell) is not None for cell in self.cells[0])
                and 4 * V <= N * T and V * G * self.dtype.itemsize <= FOLD_BYTES)

    def _run_direction(self, cell, x, init, sizes, reverse, key, keys=None):
        """Loop ``cell`` over time in one direction over ``x (T, N, D_in)``, or over
        ``x[keys]`` for a table ``x (V, D_in)`` and ``keys (T, N)``; returns what backward
        needs."""
        xp, H = self.xp, self.hidden_size
        T, N = x.shape[:2] if keys is None else keys.shape
        f = cell.fused()
        G = cell.gates * H
        A = self._buffer(key + "A", (T, N, G))                                       # pre-acts -> acts
        loop = TimeLoop.for_cell(cell)
        cuts = None if loop is None else loop.cuts(N, G)      # A's layout, fixed for the call
        P = None
        if keys is not None:           # (x W_ih^T)[keys]: the table projected, looked up a step
            P = self._buffer(key + "P", (x.shape[0], G))         # at a time by the loop
            loop.input_product(f, x, A, cuts, keys, P)
        elif loop is not None:                                        # X W_ih^T, one GEMM
            loop.input_product(f, x.reshape(T * N, -1), A, cuts)
        else:
            cell.blas.matmul(x.reshape(T * N, -1), f.WxT, out=A.reshape(T * N, G))
        S = [self._buffer(f"{key}S{j}", (T + 2, N, H)) for j in range(cell.num_states)]
        first = T + 1 if reverse else 0
        for Sj, s0 in zip(S, init):
            Sj[first] = 0 if s0 is None else s0
        cache = [self._buffer(f"{key}C{j}", (T, N, H)) for j in range(cell.cache_slots)]
        if loop is not None:                                  # the same loop, compiled
            loop.forward(f, A, S, cache, sizes, reverse, cuts, keys, P)
        else:
            tmp = cell.new_tmp(N)
            for t in (range(T - 1, -1, -1) if reverse else range(T)):
                b, p = sizes[t], (t + 2 if reverse else t)
                cell.step_forward(f, A, t, S, p, cache, tmp, b)
                if b < N:                                                         # ended: carry
                    for Sj in S:
                        Sj[t + 1, b:] = Sj[p, b:]
        return {"cell": cell, "f": f, "A": A, "S": S, "cache": cache, "reverse": reverse,
                "key": key, "cuts": cuts}

    # -- backward -----------------------------------------------------------------------------
    def _backward(self, dy, dstate_n):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        xp, H, D = self.xp, self.hidden_size, self.num_directions
        c = self._cache
        self._cache = None                 # backward consumes the activations (see cells.py)
        N, T, perm, sizes = c["N"], c["T"], c["perm"], c["sizes"]
        want = (N, T, D * H) if self.batch_first else (T, N, D * H)
        dlayer = None
        if dy is not None:
            if tuple(dy.shape) != want:
                raise ValueError(f"{type(self).__name__}.backward: expected dout of shape {want}, "
                                 f"got {tuple(dy.shape)}")
            # (T, N, D*H), a view of dy where it can be: the loops read a step's rows of it,
            # and a time-major copy would be one more activation-sized array at backward's peak
            dlayer = dy.transpose(1, 0, 2) if self.batch_first else dy
            if perm is not None:
                dlayer = dlayer[:, perm]
            if dlayer.dtype != self.dtype:
                dlayer = dlayer.astype(self.dtype)
        LD = self.num_layers * D
        dstate_n = list(dstate_n)
        for j, ds in enumerate(dstate_n):
            if ds is not None:
                if tuple(ds.shape) != (LD, N, H):
                    raise ValueError(f"{type(self).__name__}.backward: expected d{'hc'[j]}_n of "
                                     f"shape ({LD}, {N}, {H}), got {tuple(ds.shape)}")
                dstate_n[j] = ds[:, perm] if perm is not None else ds
        dstate0 = [xp.empty((LD, N, H), dtype=self.dtype) for _ in dstate_n]
        for k in range(self.num_layers - 1, -1, -1):
            lc = c["caches"][k]
            if dlayer is not None and lc["mask"] is not None:
                dlayer = dlayer * lc["mask"]
            dx = None
            for d, dc in enumerate(lc["dirs"]):
                idx = k * D + d
                dout = None if dlayer is None else dlayer[:, :, d * H:(d + 1) * H]
                init = [None if ds is None else ds[idx] for ds in dstate_n]
                dxd, d0 = self._back_direction(dc, lc["x"], dout, init, sizes, lc["keys"])
                if dx is None:
                    dx = dxd
                else:
                    dx += dxd
                for j in range(len(dstate0)):
                    dstate0[j][idx] = d0[j]
            dlayer = dx
        if perm is not None:
            inv = xp.argsort(perm)
            dstate0 = [s[:, inv] for s in dstate0]
        if c["lookup"] is not None:                   # the table's gradient, (V, D_in)
            keys, V, fold = c["lookup"]
            if fold:
                return dlayer, dstate0
            dtable = xp.empty((V, self.input_size), dtype=self.dtype)
            scatter_rows(dtable, keys.reshape(-1), dlayer.reshape(keys.size, -1))
            return dtable, dstate0
        dx = dlayer.transpose(1, 0, 2) if self.batch_first else dlayer
        if perm is not None:
            dx = dx[inv] if self.batch_first else dx[:, inv]
        return xp.ascontiguousarray(dx), dstate0

    def _back_direction(self, rc, x, dout, init, sizes, keys=None):
        """Backpropagate one direction through time; writes its cell's parameter gradients.
        ``x (T, N, D_in)`` the direction's input, or the table ``x (V, D_in)`` it was looked up
        in at ``keys (T, N)``; ``dout (T, N, H)`` the gradient of its output. Returns the
        gradient of ``x``, and that of the initial state."""
        xp, H = self.xp, self.hidden_size
        cell, f, A, S, cache, reverse, key, cuts = (rc[k] for k in (
            "cell", "f", "A", "S", "cache", "reverse", "key", "cuts"))
        T, N, G = A.shape
        d = [xp.zeros((N, H), dtype=self.dtype) if s is None else xp.array(s, dtype=self.dtype,
                                                                           order="C")
             for s in init]                                                       # (N, H) each
        gbuf = [self._buffer(f"{key}g{j}", (T, N, H)) for j in range(cell.grad_slots)]
        loop = TimeLoop.for_cell(cell)
        sums = None
        if loop is not None:                                  # the same loop, compiled
            sums = loop.backward(f, A, S, cache, d, gbuf, dout, sizes, reverse, keys,
                                 None if keys is None else self._buffer(key + "sums",
                                                                        (x.shape[0], G)),
                                 cuts=cuts)
        else:
            tmp = cell.new_tmp(N)
            for t in (range(T) if reverse else range(T - 1, -1, -1)):
                b, p = sizes[t], (t + 2 if reverse else t)
                if dout is not None:
                    d[0][:b] += dout[t, :b]
                cell.step_backward(f, A, t, S, p, cache, d, gbuf, tmp, b)
                if b < N:                                                         # padding
                    A[t, b:] = 0
                    for g in gbuf:
                        g[t, b:] = 0
        M = T * N
        dZ = A.reshape(M, G)                     # A now holds dZ (in the loop's layout, parts)
        parts = None if loop is None else loop.dz_parts(A, cuts)
        Hprev = S[0][2:T + 2] if reverse else S[0][0:T]                          # (T, N, H)
        dHn = gbuf[0].reshape(M, H) if gbuf else None
        if keys is not None:        # sums[0] (V, G): dZ summed by token; dW_ih = sums^T table
            by_token, dbn = sums
            bias = (by_token.sum(axis=0), dbn) if cell.bias else None
            cell.weight_grads(x, Hprev.reshape(M, H), dZ, dHn, bias, dZ_in=by_token,
                              parts=parts)
            dx = xp.empty(x.shape, dtype=self.dtype)                             # d table
            loop.input_grad(f, by_token, dx, cuts)                                # = sums W_ih
            return dx, d
        bias = None if sums is None else (sums[0][0], sums[1])
        cell.weight_grads(x.reshape(M, -1), Hprev.reshape(M, H), dZ, dHn, bias, parts=parts)
        dx = xp.empty((T, N, x.shape[2]), dtype=self.dtype)                      # dX = dZ W_ih
        if loop is not None:
            loop.input_grad(f, A, dx.reshape(M, -1), cuts)
        else:
            cell.blas.matmul(dZ, f.Wx, out=dx.reshape(M, -1))
        return dx, d


class RNN(_Recurrent):
    """Elman RNN (torch.nn.RNN) over a sequence; see ``cells.RNNCell`` for the equations.

    ``RNN(input_size, hidden_size, num_layers=1, bias=True, batch_first=True, dropout=0.0,
    bidirectional=False, nonlinearity='tanh', stateful=False, rng=None, dtype=float32)``

    ``forward(x (N, T, D), h0 (L*dirs, N, H) = None, lengths (N,) = None, out=None, ids=None)
    -> (out (N, T, dirs*H), h_n (L*dirs, N, H))``; ``backward(dout, dh_n=None) -> (dx, dh0)``.
    With ``ids``, ``x`` is a table ``(V, D)`` looked up at them and ``dx`` its gradient ``(V, D)``
    (see the module's docstring).
    """

    cell_class = RNNCell

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=True,
                 dropout=0.0, bidirectional=False, nonlinearity="tanh", **kw):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, nonlinearity=nonlinearity, **kw)
        self.nonlinearity = nonlinearity

    def forward(self, x, h0=None, lengths=None, out=None, ids=None):
        y, (h_n,) = self._forward(x, [h0], lengths, out, ids)
        return y, h_n

    def backward(self, dout=None, dh_n=None):
        dx, (dh0,) = self._backward(dout, [dh_n])
        return dx, dh0


class GRU(RNN):
    """Gated recurrent unit (torch.nn.GRU) over a sequence; see ``cells.GRUCell``.

    Same arguments (without ``nonlinearity``) and the same forward/backward as ``RNN``.
    """

    cell_class = GRUCell

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=True,
                 dropout=0.0, bidirectional=False, **kw):
        _Recurrent.__init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                            bidirectional, **kw)


class LSTM(_Recurrent):
    """Long short-term memory (torch.nn.LSTM) over a sequence; see ``cells.LSTMCell``.

    ``forward(x (N, T, D), state=(h0, c0) or None, lengths=None, out=None, ids=None)
    -> (out (N, T, dirs*H), (h_n, c_n))``, each state ``(L*dirs, N, H)``;
    ``backward(dout, (dh_n, dc_n) or None) -> (dx, (dh0, dc0))``; ``ids`` as for ``RNN``.
    """

    cell_class = LSTMCell

    def forward(self, x, h0=None, lengths=None, out=None, ids=None):
        h, c = (None, None) if h0 is None else h0
        y, (h_n, c_n) = self._forward(x, [h, c], lengths, out, ids)
        return y, (h_n, c_n)

    def backward(self, dout=None, dh_n=None):
        dh, dc = (None, None) if dh_n is None else dh_n
        dx, (dh0, dc0) = self._backward(dout, [dh, dc])
        return dx, (dh0, dc0)
