"""The loop over time in compiled code (numba, optional): no Python between two steps.

``recurrent.py`` can loop a cell over time in Python: at every step one BLAS call for the
recurrent product ``h_{t-1} W_hh^T`` and one call of a fused kernel, each paying Python's and
NumPy's dispatch (tens of microseconds a step, most of a small RNN's step). Here the same loop
runs inside numba: it calls the same BLAS as the layer's ``rnnkit.blas`` backend, by the
address of its ``cblas_?gemm`` (``blas.NativeGemm``), and the same kernels as ``fused.py``,
on the same buffers in the same order, so the numbers are the Python loop's. Tested equal to it
in ``tests/test_timeloop.py``.

With ``blas="packed"`` (``rnnkit.packed``, float32), the product is rnnkit's own kernel
instead, on ``W_hh`` packed once per call, and where a step is large enough (``THREADED``) the
loop runs on two threads, each owning half of the hidden units: its columns of ``W_hh^T`` (half,
512 KB at H=256, stays in its core's cache), its part of the kernel, its half of ``h_t``, and a
block of the gate buffer ``A`` of its own (``TimeLoop.blocks``: a step's part is one contiguous
run there, which the processor's prefetcher follows); one spin barrier a step (``_sync``,
about 0.2 us) makes ``h_t`` whole before either reads it. The
backward loop mirrors it (the barrier after the kernel: ``dh_{t-1} = dZ_t W_hh`` needs every
unit's ``dZ_t``). The H=256 LSTM layer's loops took 31 ms a training step this way against 41 ms
on OpenBLAS (2-core AMD EPYC); see ``blas.PackedBlas`` for why the other products of such a
layer must then run on rnnkit's threads too.

``TimeLoop.for_cell(cell)`` gives the loop when the cell computes with the numba kernels on the
CPU and its BLAS can be found; otherwise the sequence layer loops in Python.
"""
from __future__ import annotations

import numpy as np

from .. import jitcache
from .. import packed as _packed
from .. import spin as _spin
from ..blas import _NOTRANS, _PACKED, _ROW, _cores
from . import fused as _fused

RNN, LSTM, GRU = 0, 1, 2
THREADED = 1 << 18     # blas='packed': fewer multiply-adds a step and the loop stays on one thread
MIN_UNITS = 32         # ... and so it does with fewer hidden units than this a thread

if _fused.available():
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _cblas_gemm(typingctx, addr, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        """``cblas_?gemm(RowMajor, NoTrans, NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
        ldc)`` for the function at address ``addr``; the integer type of ``m`` (int32 or int64)
        is the BLAS's, the float type of ``alpha`` its precision; ``a``, ``b``, ``c`` are
        addresses."""
        sig = types.void(addr, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, sig, args):
            i32, ptr = ir.IntType(32), ir.IntType(8).as_pointer()
            I, F = context.get_value_type(sig.args[1]), context.get_value_type(sig.args[4])
            fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, I, I, I, F, ptr, I, ptr, I, F,
                                                   ptr, I])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            enum = [ir.Constant(i32, v) for v in (101, 111, 111)]    # RowMajor, NoTrans, NoTrans
            m_, n_, k_, al, a_, la, b_, lb, be, c_, lc = args[1:]
            builder.call(fn, enum + [m_, n_, k_, al, builder.inttoptr(a_, ptr), la,
                                     builder.inttoptr(b_, ptr), lb, be,
                                     builder.inttoptr(c_, ptr), lc])
            return context.get_dummy_value()
        return sig, codegen

    @intrinsic
    def _cblas_compute(typingctx, addr, m, n, k, a, lda, b, ldb, beta, c, ldc):
        """MKL's ``cblas_?gemm_compute(RowMajor, NoTrans, Packed, m, n, k, a, lda, b, ldb,
        beta, c, ldc)`` at address ``addr``: ``C = A B + beta C`` with ``B`` packed by
        ``blas.MklBlas.pack_b``; types as ``_cblas_gemm``'s (MKL's are 32-bit)."""
        sig = types.void(addr, m, n, k, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, sig, args):
            ptr = ir.IntType(8).as_pointer()
            I, F = context.get_value_type(sig.args[1]), context.get_value_type(sig.args[8])
            fnty = ir.FunctionType(ir.VoidType(), [I, I, I, I, I, I, ptr, I, ptr, I, F, ptr, I])
            fn = builder.inttoptr(args[0], fnty.as_pointer())
            enum = [ir.Constant(I, v) for v in (_ROW, _NOTRANS, _PACKED)]
            m_, n_, k_, a_, la, b_, lb, be, c_, lc = args[1:]
            builder.call(fn, enum + [m_, n_, k_, builder.inttoptr(a_, ptr), la,
                                     builder.inttoptr(b_, ptr), lb, be,
                                     builder.inttoptr(c_, ptr), lc])
            return context.get_dummy_value()
        return sig, codegen

    _jit = numba.njit(nogil=True, cache=True, error_model="numpy")

    @_jit
    def _at(arr, items):
        """The address ``items`` items into ``arr``'s data, as an int64 (in numba an unsigned
        address plus a signed offset would make a float)."""
        return np.int64(arr.ctypes.data) + items * arr.itemsize

    @_jit
    def _gemm(addr, ilp64, m, n, k, one, a, lda, b, ldb, beta, c, ldc):
        """``C (m, n) = A (m, k) B (k, n) + beta C``, row-major, at addresses ``a, b, c``;
        ``one`` is 1 in the arrays' precision."""
        if ilp64:
            _cblas_gemm(addr, np.int64(m), np.int64(n), np.int64(k), one, a, np.int64(lda), b,
                        np.int64(ldb), beta, c, np.int64(ldc))
        else:
            _cblas_gemm(addr, np.int32(m), np.int32(n), np.int32(k), one, a, np.int32(lda), b,
                        np.int32(ldb), beta, c, np.int32(ldc))

    @_jit
    def _product(addr, ilp64, caddr, packed_b, full, m, n, k, one, a, lda, b, ldb, beta, c,
                 ldc):
        """A step's recurrent product ``C (m, n) = A (m, k) B (k, n) + beta C``, row-major, at
        addresses ``a, b, c``: by MKL's ``cblas_?gemm_compute`` at ``caddr`` on ``packed_b``
        (``B`` packed for ``full`` rows, ``TimeLoop._packed_b``) where there is one and the step
        has all ``full`` rows, else by ``cblas_?gemm`` at ``addr``."""
        if caddr != 0 and m == full:
            _cblas_compute(caddr, np.int32(m), np.int32(n), np.int32(k), a, np.int32(lda),
                           _at(packed_b, 0), np.int32(ldb), beta, c, np.int32(ldc))
        else:
            _gemm(addr, ilp64, m, n, k, one, a, lda, b, ldb, beta, c, ldc)

    @_jit
    def _sync(flags, part, n):
        """A barrier: this part has reached point ``n``; wait until every part has. ``flags``
        holds each part's point, an abort flag (False is returned when another part has
        failed) and the address of ``sched_yield`` (or 0). The release store and acquire loads
        make each part's writes before the barrier visible to the others after it. The wait
        spins (a step lasts tens of microseconds, less than waking a sleeping thread costs),
        and yields the core now and then, in case the other part is waiting for it."""
        parts = flags.shape[0] - 2
        _spin.store_release(flags, part, n)
        for k in range(parts):
            spins = 0
            while _spin.load_acquire(flags, k) < n:
                if _spin.load_acquire(flags, parts) != 0:
                    return False
                spins += 1
                if spins % _spin.SPINS == 0 and flags[parts + 1] != 0:
                    _spin.call_void(flags[parts + 1])
        return True

    @_jit
    def forward_loop(kind, relu, addr, ilp64, caddr, packed_b, panels, edge, part, flags, A, R,
                     WhT, bias, b_hn, Sh, Sc, cache, sizes, reverse, j0, j1, W, rows, scale,
                     table, keys):
        """Part ``part`` of one direction's forward loop, ``_Recurrent._run_direction``'s: the
        hidden units ``[j0, j1)``. ``A`` holds ``x W_ih^T`` (or has each step's rows looked up
        from ``table``, below), the part's block of it
        (``TimeLoop.blocks``: ``(T, N, gates (j1 - j0))``); ``R`` is scratch for the
        step's recurrent product, ``(N, G)``, or ``(N, gates * (j1 - j0))`` (the part's units);
        states, caches and ``sizes`` (active rows a step) as there. The product is
        ``cblas_?gemm`` at ``addr`` with ``WhT (H, G)`` (all units, one part; ``_product``: by
        MKL's ``cblas_?gemm_compute`` at ``caddr`` on ``packed_b``, ``WhT`` packed by MKL, where
        ``caddr`` is not 0), or, when ``panels`` is not empty, ``packed.gemm`` with the part's
        columns of ``W_hh^T`` packed there. A barrier ends each step (every part of ``h_t`` written). False when another
        part failed. ``W``, ``rows``, ``scale``, when ``rows`` is not empty: the part packs
        its panels first, ``packed.pack_rows_t(W, rows, scale, panels)`` (the two parts side
        by side). ``table (V, gates (j1 - j0))`` and ``keys (T, N)``, when ``keys`` has rows: a
        looked-up input, ``A[t, n] = table[keys[t, n]]`` copied in at each step just before
        the kernel reads it (the part's block of ``input_product``'s projected table)."""
        T, N = A.shape[:2]
        H = Sh.shape[2]
        G = (4 if kind == LSTM else 3 if kind == GRU else 1) * H
        zero, one = A.dtype.type(0.0), A.dtype.type(1.0)
        P = panels.shape[0]
        if rows.shape[0]:
            _packed.pack_rows_t(W, rows, scale, panels)
        for s in range(T):
            t = T - 1 - s if reverse else s
            p = t + 2 if reverse else t
            b = sizes[t]
            if P:                                                 # R = h_{t-1} W_hh^T
                _packed.gemm(Sh[p], panels, R, 0, P, 0, b, False, edge)
            else:
                _product(addr, ilp64, caddr, packed_b, N, b, G, H, one, _at(Sh, p * N * H), H,
                         _at(WhT, 0), G, zero, _at(R, 0), G)
            if keys.shape[0]:                                     # A[t] = table[keys[t]]
                for n in range(b):
                    _fused._copy_row(A[t, n], table[keys[t, n]])
            if kind == LSTM:
                _fused.lstm_forward_cols(A, R, bias, t, Sh, Sc, p, cache, b, j0, j1)
            elif kind == GRU:
                _fused.gru_forward_cols(A, R, bias, b_hn, t, Sh, p, cache, b, j0, j1)
            else:
                _fused.rnn_forward_cols(A, R, bias, t, Sh, b, relu, j0, j1)
            for n in range(b, N):                                 # ended sequences: carry
                Sh[t + 1, n, j0:j1] = Sh[p, n, j0:j1]
                if kind == LSTM:
                    Sc[t + 1, n, j0:j1] = Sc[p, n, j0:j1]
            if not _sync(flags, part, s + 1):
                return False
        return True

    @_jit
    def backward_loop(kind, relu, addr, ilp64, caddr, packed_b, panels, panels1, edge, part,
                      flags, A, A0, A1, Wh, dHH, Sh, Sc, cache, gbuf, dh, dc, dout, has_dout,
                      sizes, reverse, j0, j1, db, dbn, keys, W, rows, rows1):
        """Part ``part`` of one direction's backward loop, ``_Recurrent._back_direction``'s: the
        units ``[j0, j1)``, ``A`` the part's block as in ``forward_loop``. ``Wh (G, H)`` the
        unscaled recurrent weights in fused order (packed by MKL in ``packed_b`` too where
        ``caddr`` is not 0, as in ``forward_loop``; or the part's columns of them packed in
        ``panels``; where each part has a block of its own, the LSTM's and RNN's step product
        ``dZ_t W_hh`` is two, ``A0[t]`` by ``panels`` and ``A1[t]`` by ``panels1``, the rows of
        ``W_hh`` for each block's columns, packed from ``rows`` and ``rows1``),
        ``dHH (2, N, G)`` scratch for the GRU's recurrent-side gate gradients, taken in turns (one part may
        write the next step's while another still reads this one's), ``dh, dc (N, H)`` the state
        gradients, in and out. A barrier after the kernel: ``dh_{t-1}`` needs all of ``dZ_t``.

        ``db (K, G)``, when it has rows, sums the gate gradients ``dZ`` over every step and row
        (taken while each step's are in cache; zeroed here): into its one row (the bias
        gradient), or, with ``keys (T, N)``, into row ``keys[t, n]`` (``fused._sums_row``); and
        ``dbn (H,)`` the GRU's ``dHn`` (that of ``b_hn``). ``W``, ``rows`` (and ``rows1``),
        when not empty: the part packs its panels first, ``packed.pack_rows(W, rows, j0, j1,
        panels)`` (and ``panels1``)."""
        T, N = A.shape[:2]
        H = dh.shape[1]
        gates = 4 if kind == LSTM else 3 if kind == GRU else 1
        G = gates * H
        one = A.dtype.type(1.0)
        beta = one if kind == GRU else A.dtype.type(0.0)         # GRU: dh = dh' z + ...
        P = panels.shape[0]
        if rows.shape[0]:
            _packed.pack_rows(W, rows, j0, j1, panels)
        if rows1.shape[0]:
            _packed.pack_rows(W, rows1, j0, j1, panels1)
        if db.shape[0]:
            for g in range(gates):
                db[:, g * H + j0:g * H + j1] = 0
            if kind == GRU:
                dbn[j0:j1] = 0
        for s in range(T):
            t = s if reverse else T - 1 - s
            p = t + 2 if reverse else t
            b = sizes[t]
            # the kernels take dout[t] into dh, and sum the gate gradients, a row at a time
            if kind == LSTM:
                _fused.lstm_backward_cols(A, t, Sc, p, cache, dh, dc, b, j0, j1, dout, has_dout,
                                          db, keys)
            elif kind == GRU:
                _fused.gru_backward_cols(A, t, Sh, p, cache, dh, dHH[s % 2], gbuf, b, j0, j1,
                                         dout, has_dout, db, dbn, keys)
            else:
                _fused.rnn_backward_cols(A, t, dh, b, relu, j0, j1, dout, has_dout, db, keys)
            for n in range(b, N):                                 # padding gets no gradient
                A[t, n] = 0                                       # (the part's block's row)
                if kind == GRU:
                    gbuf[t, n, j0:j1] = 0
            if not _sync(flags, part, s + 1):                     # dZ_t whole
                return False
            if P:                                                 # dh = dZ W_hh (+ dh' z)
                if kind == GRU:
                    _packed.gemm(dHH[s % 2], panels, dh[:, j0:j1], 0, P, 0, b, True, edge)
                else:
                    _packed.gemm(A0[t], panels, dh[:, j0:j1], 0, P, 0, b, False, edge)
                    if panels1.shape[0]:
                        _packed.gemm(A1[t], panels1, dh[:, j0:j1], 0, P, 0, b, True, edge)
            else:
                src = _at(dHH, (s % 2) * N * G) if kind == GRU else _at(A, t * N * G)
                _product(addr, ilp64, caddr, packed_b, N, b, H, G, one, src, G, _at(Wh, 0), H,
                         beta, _at(dh, 0), H)
        return True

    # the loops compile in the kernels, the packed product and the atomics of three other files
    jitcache.forget_if_changed(forward_loop, __file__,
                               [_fused.__file__, _packed.__file__, _spin.__file__])


def available() -> bool:
    return _fused.available()


class TimeLoop:
    """The compiled loop for one cell: ``forward`` and ``backward`` over a whole direction.

    With ``blas="packed"`` (float32), the recurrent weights are packed once per call
    (``rnnkit.packed``) and, where a step's product is large enough and the process may run on
    two cores, two threads share the loop: each owns half of the hidden units (its columns of
    the product, its part of the kernel) and one barrier a step keeps them in order."""

    def __init__(self, cell, native):
        self.cell, self.native = cell, native
        self.kind = {"RNNCell": RNN, "LSTMCell": LSTM, "GRUCell": GRU}[type(cell).__name__]
        self.relu = getattr(cell, "nonlinearity", "tanh") == "relu"
        self.packed = native is None
        self.addr = 0 if self.packed else (native.sgemm if cell.dtype == np.float32
                                           else native.dgemm)
        self.ilp64 = False if self.packed else native.ilp64
        # MKL: its product by a B it has packed, for the step's W_hh (``_packed_b``)
        self.caddr = 0 if self.packed else (native.scompute if cell.dtype == np.float32
                                            else native.dcompute)
        self._ws = {}                     # the packed loop's reused buffers and column maps

    @classmethod
    def for_cell(cls, cell):
        """The loop for ``cell`` (made once, kept on the cell), or None where it computes with
        NumPy's ufuncs, on the GPU, or with a BLAS whose GEMM cannot be found."""
        key = (cell.blas, cell._k, cell.xp, cell.dtype)
        kept = cell.__dict__.get("_timeloop")
        if kept is not None and kept[0] == key:
            return kept[1]
        loop = None
        if available() and cell.xp is np and cell._k is _fused:
            if getattr(cell.blas, "packs", False) and cell.dtype == np.float32:
                loop = cls(cell, None)
            else:
                native = cell.blas.native()
                loop = None if native is None else cls(cell, native)
        cell._timeloop = (key, loop)
        return loop

    def _buf(self, name, shape):
        """A reused float32 buffer (only the packed loop keeps any) of this shape, a view of
        the largest that ``name`` has needed (the forward and the backward pass share theirs):
        a fresh array of this size at every call would cost its page faults every time."""
        size = int(np.prod(shape))
        b = self._ws.get(name)
        if b is None or b.size < size:
            b = self._ws[name] = np.empty(size, dtype=np.float32)
        return b[:size].reshape(shape)

    def _packed_b(self, B, N):
        """``B`` packed by MKL for products of ``N`` rows (``blas.MklBlas.pack_b``) into the
        one buffer this loop keeps for it (the forward and the backward pass take turns: each
        packs its own at its start), or an empty array where the loop's BLAS does not pack."""
        if not self.caddr:
            return _NO_BYTES
        self._ws["mkl"] = self.cell.blas.pack_b(B, N, self._ws.get("mkl"))
        return self._ws["mkl"]

    def blocks(self, A, cuts):
        """Each part's block of ``A (T, N, G)``: where the loop runs on two threads, each owns a
        block of ``A``'s memory, ``(T, N, gates W)`` for its ``W`` units, one after the other, a
        step's part then one contiguous run, which the processor's prefetcher follows (its
        units' four gate blocks in every row of the whole buffer were 128 runs of 512 bytes a
        step at H=256, and the forward kernel took 19-31 us a step on them against 9-17 from
        one block); with one part, ``A`` itself, laid out whole."""
        return self._split(A, cuts)

    def _split(self, X, cuts):
        """``X (..., G)`` cut into the parts' blocks, ``(..., gates W)`` each, one after the
        other in ``X``'s memory; ``[X]`` for one part."""
        if len(cuts) == 2:
            return [X]
        if not X.flags.c_contiguous:
            raise ValueError("TimeLoop: a buffer laid out in blocks must be C-contiguous")
        lead, gates, flat, out, off = X.shape[:-1], self.cell.gates, X.reshape(-1), [], 0
        for j0, j1 in zip(cuts, cuts[1:]):
            shape = (*lead, gates * (j1 - j0))
            size = int(np.prod(shape))
            out.append(flat[off:off + size].reshape(shape))
            off += size
        return out

    def dz_parts(self, A, cuts):
        """The gate gradients that backward left in ``A``, for ``cells._Cell.weight_grads``:
        None where ``A`` is laid out whole, else each part's ``(dZ_k (T N, gates W), its
        columns of the fused gates, j0, j1)``."""
        if len(cuts) == 2:
            return None
        _, cols = self._columns(cuts, fused_columns=True)
        T, N, _ = A.shape
        return [(blk.reshape(T * N, -1), c, j0, j1)
                for blk, c, j0, j1 in zip(self.blocks(A, cuts), cols, cuts, cuts[1:])]

    def input_product(self, f, X, A, cuts, keys=None, P=None) -> None:
        """``A = X W_ih^T`` for ``X (T N, D)``, in the kernels' gate order and scale and in the
        layout of ``blocks``: the one product of the input projection per direction. With
        ``keys``, ``X`` is a table ``(V, D)`` and the product goes to ``P (V, G)`` instead, in
        the layout of ``table_blocks``; ``forward``, given the same ``keys`` and ``P``, then
        looks each step's rows up as it goes (``A = (X W_ih^T)[keys]``). The packed loop packs
        ``W_ih`` straight from the parameter into a buffer it keeps (no reordered, scaled
        copy); with two parts, each thread makes its own block."""
        T, N, G = A.shape
        if not self.packed:
            self.cell.blas.matmul(X, f.WxT, out=A.reshape(T * N, G) if keys is None else P)
            return
        _, cols = self._columns(cuts)
        W, M, D = self.cell.weight_ih, X.shape[0], X.shape[1]
        outs = (self.blocks(A, cuts) if keys is None else self.table_blocks(P, cuts))
        jobs = []
        for k, (out, (rows, scale)) in enumerate(zip(outs, cols)):
            panels = self._buf(f"Wi{k}", (_packed.panel_count(len(rows)), D, _packed.NR))
            jobs.append((rows, scale, panels, out.reshape(M, len(rows))))
        if len(jobs) == 1:
            rows, scale, panels, out = jobs[0]
            _packed.matmul_rows_t(X, W, rows, scale, out, self.cell.blas.pool, panels)
        else:                     # each thread its own block, packing its own part of W_ih
            self.cell.blas.pool.run(
                lambda rows, scale, panels, out, edge: _packed._pack_rows_t_and_gemm(
                    X, W, rows, scale, panels, out, 0, panels.shape[0], 0, M, edge, True),
                [(*job, _edge()) for job in jobs[::-1]])

    def table_blocks(self, P, cuts):
        """Each part's block of a projected table ``P (V, G)``, ``(V, gates W)`` for its ``W``
        units, one after the other in ``P``'s memory (as ``blocks`` lays out ``A``); with one
        part, ``P`` itself."""
        return self._split(P, cuts)

    def input_grad(self, f, dZ, out, cuts) -> None:
        """``out (M, D) = dZ W_ih`` for the gate gradients in ``dZ``: ``(T, N, G)`` in the
        layout of ``blocks``, or ``(M, G)`` laid out whole; the input's gradient, packed like
        ``input_product``. With two blocks, each thread packs its block's rows of ``W_ih``, then
        each takes half of the rows of ``dX``, from both blocks (``packed.gemm_two``)."""
        G = dZ.shape[-1]
        if not self.packed:
            self.cell.blas.matmul(dZ.reshape(-1, G), f.Wx, out=out)
            return
        W, pool = self.cell.weight_ih, self.cell.blas.pool
        D, P = W.shape[1], _packed.panel_count(W.shape[1])
        if dZ.ndim == 2 or len(cuts) == 2:
            order, _ = self._columns([0, self.cell.hidden_size])
            panels = self._buf("Wi", (P, len(order), _packed.NR))
            _packed.matmul_rows(dZ.reshape(-1, G), W, order, out, pool, panels)
            return
        _, cols = self._columns(cuts)
        parts = [(blk.reshape(-1, blk.shape[2]), rows, self._buf(f"Wi{k}", (P, len(rows),
                                                                             _packed.NR)))
                 for k, (blk, (rows, _)) in enumerate(zip(self.blocks(dZ, cuts), cols))]
        pool.run(lambda rows, panels: _packed.pack_rows(W, rows, 0, D, panels),
                 [(rows, panels) for _, rows, panels in parts[::-1]])
        M = out.shape[0]
        h = M // 2 // _packed.MR * _packed.MR
        (d0, _, p0), (d1, _, p1) = parts
        pool.run(lambda r0, r1, edge: _packed.gemm_two(d0, p0, d1, p1, out, r0, r1, edge),
                 [(h, M, _edge()), (0, h, _edge())])

    def _columns(self, cuts, fused_columns: bool = False):
        """For each part of ``cuts``: its columns of the fused gates (each gate's units
        ``[j0, j1)``), and for each of them the parameter's row and the scale (``cells.Fused``):
        ``(order, [(rows, scale) for each part])``, or with ``fused_columns`` the columns
        themselves, ``(order, [cols for each part])``."""
        key = ("cols", tuple(cuts))
        if key not in self._ws:
            H, gates = self.cell.hidden_size, self.cell.gates
            f = self.cell.fused()
            order = np.arange(gates * H) if f.order is None else np.asarray(f.order)
            parts, columns = [], []
            for j0, j1 in zip(cuts, cuts[1:]):
                cols = np.concatenate([np.arange(g * H + j0, g * H + j1) for g in range(gates)])
                parts.append((order[cols], np.ascontiguousarray(f.scale[cols])))
                columns.append(cols)
            self._ws[key] = (order, parts, columns)
        order, parts, columns = self._ws[key]
        return (order, columns) if fused_columns else (order, parts)

    def cuts(self, N, G):
        """The units' bounds ``[0, ..., H]``: two parts (whole panels of 32 columns where ``H``
        allows) for ``blas="packed"``, when a step's product is large enough and the process may
        run on two cores; else one. The parts fix ``A``'s layout (``blocks``): the sequence
        layer takes them once a direction and hands the same to the input product, both passes
        and ``dX``."""
        H = self.cell.hidden_size
        if self.packed and N * G * H >= THREADED and H >= 2 * MIN_UNITS and _cores() >= 2:
            mid = H // 2 if H < 128 else round(H / 64) * 32
            return [0, mid, H]
        return [0, H]

    def _run(self, loop, args, cuts):
        """``loop(*args(part, flags))`` for each part, part 1 on the backend's helper thread
        (one call into compiled code a part: between two, a thread would hold Python's GIL,
        which the other may be waiting for, see ``packed.Pool``)."""
        parts = len(cuts) - 1
        flags = np.zeros(parts + 2, dtype=np.int64)      # each part's step, abort, sched_yield
        flags[-1] = _spin.sched_yield()

        def part(k):
            try:
                loop(*args(k, flags))        # False: another part failed, and raises its error
            except BaseException:
                flags[parts] = 1                                  # the other part stops waiting
                raise
        if parts == 1:
            part(0)
        else:
            self.cell.blas.pool.run(part, [(k,) for k in range(1, parts)] + [(0,)])

    def forward(self, f, A, S, cache, sizes, reverse: bool, cuts, keys=None, P=None) -> None:
        """All steps of ``recurrent._Recurrent._run_direction`` (its arguments; ``cuts`` as
        ``cuts(N, G)`` gives them, which ``input_product`` laid ``A`` out for). With ``keys
        (T, N)`` and the projected table ``P`` that ``input_product`` made from them, each
        step's rows of ``A`` are looked up in ``P`` first."""
        Sc = S[1] if len(S) > 1 else S[0]                         # unused without c
        hn = cache[0] if cache else S[0]
        b_hn = f.b_hn if self.kind == GRU else f.b
        T, N, G = A.shape
        H, gates = self.cell.hidden_size, self.cell.gates
        sizes = np.asarray(sizes, dtype=np.int64)
        if self.packed:               # each part's columns of W_hh^T, packed from the parameter
            WhT, panels, R = _NO_WEIGHTS, [], []      # (by the part's thread, in the loop)
            _, cols = self._columns(cuts)
            for k, (rows, scale) in enumerate(cols):
                panels.append(self._buf(f"Wh{k}", (_packed.panel_count(len(rows)), H,
                                                   _packed.NR)))
                R.append(self._buf(f"R{k}", (N, len(rows))))
            W = self.cell.weight_hh
        else:
            WhT, panels, R = f.WhT, [_NO_PANELS], [np.empty((N, G), dtype=A.dtype)]
            W, cols = _NO_WEIGHTS, [(_NO_ROWS, _NO_SCALE)]
        packed_b = _NO_BYTES if self.packed else self._packed_b(WhT, N)
        blocks = self.blocks(A, cuts)
        if keys is None:
            keys, tables = _NO_KEYS, [A[0, :0]] * len(blocks)    # no table: 0 rows
        else:
            keys, tables = np.ascontiguousarray(keys, dtype=np.int64), self.table_blocks(P, cuts)
        self._run(forward_loop, lambda k, flags: (
            self.kind, self.relu, self.addr, self.ilp64, self.caddr, packed_b, panels[k],
            _edge(), k, flags, blocks[k], R[k], WhT, f.b, b_hn, S[0], Sc, hn, sizes, reverse, cuts[k],
            cuts[k + 1], W, *cols[k], tables[k], keys), cuts)

    def backward(self, f, A, S, cache, d, gbuf, dout, sizes, reverse: bool, keys=None,
                 sums=None, *, cuts):
        """All steps of ``recurrent._Recurrent._back_direction`` (its arguments; ``cuts``
        those of the forward pass, which laid ``A`` out). Returns the
        gate gradients summed as the loop goes, each step's rows while they are in cache,
        ``(db (K, G), db_hn (H,) or None)`` in the kernels' order, or None where the cell has no
        bias and no ``keys`` are given. Without ``keys``, ``db`` has one row, the bias gradient
        (what ``cells._Cell.weight_grads`` takes); with ``keys (T, N)`` (integers in ``[0, K)``),
        row ``v`` sums the rows whose key is ``v`` (the tokens of a looked-up input), into
        ``sums (K, G)``, which the caller gives."""
        Sc = S[1] if len(S) > 1 else S[0]
        hn = cache[0] if cache else S[0]
        g = gbuf[0] if gbuf else S[0]
        dc = d[1] if len(d) > 1 else d[0]
        T, N, G = A.shape
        dHH = np.empty((2, N, G) if self.kind == GRU else (2, 1, 1), dtype=A.dtype)
        has_dout = dout is not None
        if not has_dout:
            dout = np.empty((1, 1, 1), dtype=A.dtype)
        sizes = np.asarray(sizes, dtype=np.int64)
        blocks = self.blocks(A, cuts)
        # the step's product dZ_t W_hh reads every part's dZ_t: the whole row of A (or of the
        # GRU's dHH), or, where the parts have blocks of A, the two blocks' rows in turn, each
        # by its own rows of W_hh (the rows0 and rows1 below)
        A0, A1 = blocks[0], blocks[-1]
        if self.packed:               # each part's columns of W_hh, packed from the parameter
            Wh, panels, panels1 = _NO_WEIGHTS, [], []  # (by the part's thread, in the loop)
            order, parts = self._columns(cuts)
            rows0, rows1 = order, _NO_ROWS
            if len(blocks) > 1 and self.kind != GRU:
                rows0, rows1 = parts[0][0], parts[1][0]
            for k, (j0, j1) in enumerate(zip(cuts, cuts[1:])):
                P = _packed.panel_count(j1 - j0)
                panels.append(self._buf(f"Wh{k}", (P, len(rows0), _packed.NR)))
                panels1.append(self._buf(f"Wh{k}b", (P, len(rows1), _packed.NR)) if len(rows1)
                               else _NO_PANELS)
            W = self.cell.weight_hh
        else:
            Wh, panels, panels1 = f.Wh, [_NO_PANELS] * (len(cuts) - 1), [_NO_PANELS] * 2
            W, rows0, rows1 = _NO_WEIGHTS, _NO_ROWS, _NO_ROWS
        packed_b = _NO_BYTES if self.packed else self._packed_b(Wh, N)
        # no sums: a db without rows (and a dbn the GRU's kernel does not write)
        db, dbn = np.empty((0, G), dtype=A.dtype), np.empty(0, dtype=A.dtype)
        if keys is not None:
            keys, db = np.ascontiguousarray(keys, dtype=np.int64), sums
        else:
            keys = _NO_KEYS
            if self.cell.bias:
                db = np.empty((1, G), dtype=A.dtype)
        if db.shape[0] and self.kind == GRU:
            dbn = np.empty(self.cell.hidden_size, dtype=A.dtype)
        self._run(backward_loop, lambda k, flags: (
            self.kind, self.relu, self.addr, self.ilp64, self.caddr, packed_b, panels[k],
            panels1[k], _edge(), k, flags, blocks[k], A0, A1, Wh, dHH, S[0], Sc, hn, g, d[0], dc, dout, has_dout,
            sizes, reverse, cuts[k], cuts[k + 1], db, dbn, keys, W, rows0, rows1), cuts)
        if not db.shape[0]:
            return None
        return db, (dbn if self.kind == GRU else None)


_NO_PANELS = np.empty((0, 1, _packed.NR), dtype=np.float32)   # the BLAS path: no packed weights
_NO_WEIGHTS = np.empty((1, 1), dtype=np.float32)               # the packed path: no BLAS weights
_NO_SCALE = np.empty(0, dtype=np.float32)                       # no columns to pack
_NO_KEYS = np.empty((0, 0), dtype=np.int64)         # no lookup; sums of dZ into one row
_NO_ROWS = np.empty(0, dtype=np.int64)                          # no weights to pack
_NO_BYTES = np.empty(0, dtype=np.uint8)                 # no weights packed by MKL


def _edge():
    """Scratch for a ragged last panel (``packed.gemm``'s ``edge``), one for each part."""
    return np.empty((_packed.MR, _packed.NR), dtype=np.float32)
