"""The loop over time in compiled code (numba, optional): no Python between two steps.

``recurrent.py`` can loop a cell over time in Python: at every step one BLAS call for the
recurrent product ``h_{t-1} W_hh^T`` and one call of a fused kernel, each paying Python's and
NumPy's dispatch (tens of microseconds a step, most of a small RNN's step). Here the same loop
runs inside numba: it calls the same BLAS as the layer's ``rnnkit.blas`` backend, by the
address of its ``cblas_?gemm`` (``blas.NativeGemm``), and the same kernels as ``fused.py``,
on the same buffers in the same order, so the numbers are the Python loop's. Tested equal to it
in ``tests/test_timeloop.py``.

``TimeLoop.for_cell(cell)`` gives the loop when the cell computes with the numba kernels on the
CPU and its BLAS can be found; otherwise the sequence layer loops in Python.
"""
from __future__ import annotations

import numpy as np

from . import fused as _fused

RNN, LSTM, GRU = 0, 1, 2

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
    def forward_loop(kind, relu, addr, ilp64, A, R, WhT, bias, b_hn, Sh, Sc, cache, sizes,
                     reverse):
        """One direction's forward loop, ``_Recurrent._run_direction``'s: ``A (T, N, G)`` holds
        ``x W_ih^T``, ``WhT (H, G)`` is the fused ``W_hh^T``, ``R (N, G)`` scratch for the
        step's recurrent product; states, caches and ``sizes`` (active rows a step) as there."""
        T, N, G = A.shape
        H = Sh.shape[2]
        zero, one = A.dtype.type(0.0), A.dtype.type(1.0)
        for s in range(T):
            t = T - 1 - s if reverse else s
            p = t + 2 if reverse else t
            b = sizes[t]
            _gemm(addr, ilp64, b, G, H, one, _at(Sh, p * N * H), H, _at(WhT, 0), G, zero,
                  _at(R, 0), G)                                   # R = h_{t-1} W_hh^T
            if kind == LSTM:
                _fused.lstm_forward(A, R, bias, t, Sh, Sc, p, cache, b)
            elif kind == GRU:
                _fused.gru_forward(A, R, bias, b_hn, t, Sh, p, cache, b)
            else:
                _fused.rnn_forward(A, R, bias, t, Sh, b, relu)
            for n in range(b, N):                                 # ended sequences: carry
                Sh[t + 1, n] = Sh[p, n]
                if kind == LSTM:
                    Sc[t + 1, n] = Sc[p, n]

    @_jit
    def backward_loop(kind, relu, addr, ilp64, A, Wh, dHH, Sh, Sc, cache, gbuf, dh, dc, dout,
                      has_dout, sizes, reverse):
        """One direction's backward loop, ``_Recurrent._back_direction``'s: ``Wh (G, H)`` the
        unscaled recurrent weights in fused order, ``dHH (N, G)`` scratch for the GRU's
        recurrent-side gate gradients, ``dh, dc (N, H)`` the state gradients, in and out."""
        T, N, G = A.shape
        H = dh.shape[1]
        one = A.dtype.type(1.0)
        beta = one if kind == GRU else A.dtype.type(0.0)         # GRU: dh = dh' z + ...
        for s in range(T):
            t = s if reverse else T - 1 - s
            p = t + 2 if reverse else t
            b = sizes[t]
            if has_dout:
                for n in range(b):
                    dh[n] += dout[t, n]
            if kind == LSTM:
                _fused.lstm_backward(A, t, Sc, p, cache, dh, dc, b)
            elif kind == GRU:
                _fused.gru_backward(A, t, Sh, p, cache, dh, dHH, gbuf, b)
            else:
                _fused.rnn_backward(A, t, dh, b, relu)
            for n in range(b, N):                                 # padding gets no gradient
                A[t, n] = 0
                if kind == GRU:
                    gbuf[t, n] = 0
            src = _at(dHH, 0) if kind == GRU else _at(A, t * N * G)
            _gemm(addr, ilp64, b, H, G, one, src, G, _at(Wh, 0), H, beta, _at(dh, 0),
                  H)                                              # dh = dZ W_hh (+ dh' z)


def available() -> bool:
    return _fused.available()


class TimeLoop:
    """The compiled loop for one cell: ``forward`` and ``backward`` over a whole direction."""

    def __init__(self, cell, native):
        self.cell, self.native = cell, native
        self.kind = {"RNNCell": RNN, "LSTMCell": LSTM, "GRUCell": GRU}[type(cell).__name__]
        self.relu = getattr(cell, "nonlinearity", "tanh") == "relu"
        self.addr = native.sgemm if cell.dtype == np.float32 else native.dgemm

    @classmethod
    def for_cell(cls, cell):
        """The loop for ``cell``, or None where it computes with NumPy's ufuncs, on the GPU,
        or with a BLAS whose GEMM cannot be found."""
        if not (available() and cell.xp is np and cell._k is _fused):
            return None
        native = cell.blas.native()
        return None if native is None else cls(cell, native)

    def forward(self, f, A, S, cache, sizes, reverse: bool) -> None:
        """All steps of ``recurrent._Recurrent._run_direction`` (its arguments)."""
        Sc = S[1] if len(S) > 1 else S[0]                         # unused without c
        hn = cache[0] if cache else S[0]
        b_hn = f.b_hn if self.kind == GRU else f.b
        R = np.empty(A.shape[1:], dtype=A.dtype)
        forward_loop(self.kind, self.relu, self.addr, self.native.ilp64, A, R, f.WhT, f.b, b_hn,
                     S[0], Sc, hn, np.asarray(sizes, dtype=np.int64), reverse)

    def backward(self, f, A, S, cache, d, gbuf, dout, sizes, reverse: bool) -> None:
        """All steps of ``recurrent._Recurrent._back_direction`` (its arguments)."""
        Sc = S[1] if len(S) > 1 else S[0]
        hn = cache[0] if cache else S[0]
        g = gbuf[0] if gbuf else S[0]
        dc = d[1] if len(d) > 1 else d[0]
        dHH = np.empty(A.shape[1:] if self.kind == GRU else (1, 1), dtype=A.dtype)
        has_dout = dout is not None
        if not has_dout:
            dout = np.empty((1, 1, 1), dtype=A.dtype)
        backward_loop(self.kind, self.relu, self.addr, self.native.ilp64, A, f.Wh, dHH, S[0], Sc,
                      hn, g, d[0], dc, dout, has_dout, np.asarray(sizes, dtype=np.int64), reverse)
