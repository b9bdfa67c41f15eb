"""Fused elementwise kernels for the cells, compiled with numba (an optional extra), and a
one-pass sampler for ``generate`` (``sample_row``).

The NumPy kernels in ``cells.py`` make a dozen passes over each step's gate arrays, one ufunc at a
time; these make one, over the time-major buffers described there. They compute the same
equations (see the cells' docstrings), write the same buffers, and are tested equal to the NumPy
kernels and to PyTorch. Matrix products are not here: ``rnnkit.blas`` does them.

How they are made to vectorise: ``error_model='numpy'`` drops the per-division zero check, every
inner loop runs over the features of one row, which are contiguous, and in float32 ``tanh`` is a
rational approximation (the one Eigen uses: ``x P(x^2) / Q(x^2)`` on ``|x| <= 7.9053``, relative
error below 4e-7, far inside rnnkit's 1e-5 float32 tolerance) that the compiler turns into SIMD
code, where a call to the C library's ``tanhf`` would not be. float64 keeps the exact
``math.tanh``. ``nogil=True`` lets threads run kernels side by side.

``available()`` says whether numba imports; without it rnnkit uses the NumPy kernels.
"""
from __future__ import annotations

import math

try:
    import numba
    import numpy as np
    from numba import types
    from numba.extending import overload
except ImportError:  # pragma: no cover - depends on the environment
    numba = None


def available() -> bool:
    return numba is not None


def ftanh(x):  # pragma: no cover - a stub; the compiled versions come from the overload below
    return math.tanh(x)


if numba is not None:
    _P = tuple(np.float32(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13,
                                       -8.60467152213735e-11, 5.12229709037114e-08,
                                       1.48572235717979e-05, 6.37261928875436e-04,
                                       4.89352455891786e-03))
    _Q = tuple(np.float32(v) for v in (1.19825839466702e-06, 1.18534705686654e-04,
                                       2.26843463243900e-03, 4.89352518554385e-03))
    _CLAMP = np.float32(7.90531110763549805)

    @overload(ftanh, inline="always")
    def _ftanh(x):
        if x == types.float32:
            def tanh32(x):
                x = min(max(x, -_CLAMP), _CLAMP)        # NaN stays NaN: both comparisons fail
                x2 = x * x
                p = x2 * _P[0] + _P[1]
                p = x2 * p + _P[2]
                p = x2 * p + _P[3]
                p = x2 * p + _P[4]
                p = x2 * p + _P[5]
                p = x2 * p + _P[6]
                q = x2 * _Q[0] + _Q[1]
                q = x2 * q + _Q[2]
                q = x2 * q + _Q[3]
                return x * p / q
            return tanh32
        return lambda x: math.tanh(x)

    _jit = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})

    # Every kernel takes whole time-major buffers (A (T, N, G), S (T + 2, N, H), caches
    # (T, N, H)) and the step's indices, so that numba sees C-contiguous arrays; it walks the
    # step's first ``b`` rows and, inside a row, the features, which are contiguous: a unit-stride
    # loop it vectorises. ``R (N, gates * W)`` is the step's recurrent product h W_hh^T, computed
    # by BLAS just before; ``bias (G,)`` is added here rather than to all of A at once (one pass
    # fewer). Backward kernels overwrite the step's activations in A with the gate gradients.
    # Inside a row, each gate's block is taken as a slice of its own: numba vectorises loops
    # over slices, where it did not vectorise the same loops indexing whole rows at g * H + j.
    #
    # The ``*_cols`` kernels do only the hidden units ``[j0, j1)`` (every gate's columns for
    # them), and their ``R`` holds just those units' gates, ``W = j1 - j0`` columns a gate: the
    # threaded loop over time (``timeloop.py``, ``blas="packed"``) gives each of its two threads
    # its own units. The kernels without the suffix do all ``H`` units. Their ``A`` is the
    # part's own block of the gate buffer, ``(T, N, gates W)``, gate ``g`` of unit ``j`` at
    # column ``g W + j - j0`` (``timeloop.TimeLoop.blocks``; for all ``H`` units, the whole
    # buffer, ``g H + j``); the biases and the sums ``db`` are laid out whole, ``g H + j``.

    # The backward kernels of the loop over time (``*_backward_cols``) also take the step's
    # output gradient into ``dh`` and sum the gate gradients, a row at a time while the row is
    # in cache: as passes of their own over the step, the two took 8-13 us a step and thread of
    # an H=256 LSTM's backward (of ~105), most of it the reads of ``dout``, ``(N, T, H)`` as the
    # language model's decoder gives it, 64 KB between two rows of a step. The sums go to
    # ``db (K, G)``: to its one row (the bias gradient), or, with ``keys (T, N)``, to the row of
    # each position's token (a looked-up input, ``recurrent.py``: from those sums come the
    # bias gradient, ``dW_ih`` and the lookup table's gradient). ``db`` with no rows: no sums.
    @_jit
    def _none(A):
        """Stand-ins for ``dout``, ``db``, ``dbn`` and ``keys`` in the kernels that do all ``H``
        units (the Python loop's): no output gradient to take, no sums (arrays made here: numba
        takes a global array for a constant, which a kernel could not be compiled to write)."""
        return (np.empty((1, 1, 1), dtype=A.dtype), np.empty((0, 0), dtype=A.dtype),
                np.empty(0, dtype=A.dtype), np.empty((0, 0), dtype=np.int64))

    @_jit
    def _sums_row(db, keys, t, n):
        """The row of ``db (K, G)`` that row ``n`` of step ``t`` adds its gate gradients to:
        ``keys[t, n]`` (a looked-up input's token, see ``recurrent.py``), or 0 without keys."""
        return db[keys[t, n]] if keys.shape[0] else db[0]

    @_jit
    def _copy_row(dst, src):
        """``dst[:] = src`` (1-D, same length)."""
        for j in range(dst.shape[0]):
            dst[j] = src[j]

    @_jit
    def _add_row(dst, src):
        """``dst += src`` (1-D, same length)."""
        for j in range(dst.shape[0]):
            dst[j] += src[j]

    @_jit
    def _sum_row(row, gates, H, j0, j1, out):
        """``out[g H + j] += row[g W + j - j0]`` for each gate ``g`` and unit ``j`` in
        ``[j0, j1)``, ``W = j1 - j0``: a row of a part's block of ``A`` into sums laid out
        whole."""
        W = j1 - j0
        for g in range(gates):
            src, dst = row[g * W:(g + 1) * W], out[g * H + j0:g * H + j1]
            for j in range(W):
                dst[j] += src[j]

    # -- LSTM (fused gate order i, f, o, g; i, f, o pre-scaled by 1/2) ----------------------------
    @_jit
    def lstm_forward_cols(A, R, bias, t, Sh, Sc, p, tc, b, j0, j1):
        """``A[t] <- acts(A[t] + R + bias)``; ``c = f c_prev + i g``; ``h = o tanh(c)``.

        ``tanh(c)`` is not kept (``tc`` is not written; the NumPy and CUDA kernels keep it):
        ``lstm_backward_cols`` computes it again from ``c``, which the step before it in the
        backward pass has just read as its ``c_prev``. That saves a write here and a read
        there of ``(N, H)`` a step, by then from memory, and the buffer (``LSTMCell.cache_slots``
        is 0 with these kernels: 2 MB a layer of the H=256 language model)."""
        # short loops a row, each over few arrays: one loop over all seven does not vectorise
        H, W = Sh.shape[2], j1 - j0
        half = A.dtype.type(0.5)
        for n in range(b):
            a, r = A[t, n], R[n]
            for g in range(4):
                ag, rg = a[g * W:(g + 1) * W], r[g * W:(g + 1) * W]
                bg = bias[g * H + j0:]
                if g < 3:
                    for j in range(W):
                        ag[j] = half * ftanh(ag[j] + rg[j] + bg[j]) + half
                else:
                    for j in range(W):
                        ag[j] = ftanh(ag[j] + rg[j] + bg[j])
            i, f = a[:W], a[W:2 * W]
            o, g = a[2 * W:3 * W], a[3 * W:4 * W]
            c_prev, c_out, h_out = Sc[p, n, j0:j1], Sc[t + 1, n, j0:j1], Sh[t + 1, n, j0:j1]
            for j in range(W):
                c = f[j] * c_prev[j] + i[j] * g[j]
                c_out[j] = c
                h_out[j] = o[j] * ftanh(c)

    @_jit
    def lstm_forward(A, R, bias, t, Sh, Sc, p, tc, b):
        H = Sh.shape[2]
        lstm_forward_cols(A, R, bias, t, Sh, Sc, p, tc, b, 0, H)

    @_jit
    def lstm_backward_cols(A, t, Sc, p, tc, dh, dc, b, j0, j1, dout, has_dout, db, keys):
        """Gate gradients (before the nonlinearities) replace ``A[t]``; ``dc <- dc' * f``.
        ``tanh(c)`` from the step's ``c`` (``Sc[t + 1]``), as ``lstm_forward_cols`` computed
        it (the same function of the same number: the same bits); ``tc`` is not read.
        ``dh`` takes the output's gradient ``dout[t]`` first when ``has_dout``, and ``db``, when
        not empty, sums the gate gradients by ``keys`` (see ``_sums_row``)."""
        H, W = dh.shape[1], j1 - j0
        one = A.dtype.type(1.0)
        for n in range(b):
            a = A[t, n]
            i, f = a[:W], a[W:2 * W]
            o, g = a[2 * W:3 * W], a[3 * W:4 * W]
            c_prev, cn = Sc[p, n, j0:j1], Sc[t + 1, n, j0:j1]
            dhn, dcn = dh[n, j0:j1], dc[n, j0:j1]
            if has_dout:
                _add_row(dhn, dout[t, n, j0:j1])
            for j in range(W):
                ij, fj, oj, gj = i[j], f[j], o[j], g[j]
                tcj, dhj = ftanh(cn[j]), dhn[j]
                dcj = dcn[j] + dhj * oj * (one - tcj * tcj)
                i[j] = dcj * gj * ij * (one - ij)
                f[j] = dcj * c_prev[j] * fj * (one - fj)
                o[j] = dhj * tcj * oj * (one - oj)
                g[j] = dcj * ij * (one - gj * gj)
                dcn[j] = dcj * fj
            if db.shape[0]:
                _sum_row(a, 4, H, j0, j1, _sums_row(db, keys, t, n))

    @_jit
    def lstm_backward(A, t, Sc, p, tc, dh, dc, b):
        no_dout, no_sums, no_dbn, no_keys = _none(A)
        H = dh.shape[1]
        lstm_backward_cols(A, t, Sc, p, tc, dh, dc, b, 0, H, no_dout, False, no_sums,
                           no_keys)

    # -- GRU (gate order r, z, n; r, z pre-scaled by 1/2) ------------------------------------------
    @_jit
    def gru_forward_cols(A, R, bias, b_hn, t, Sh, p, hn, b, j0, j1):
        """``r, z = sigmoid(A + R + bias)``; ``hn = R_n + b_hn``; ``n = tanh(A_n + bias_n + r hn)``;
        ``h = n + z (h_prev - n)``; activations back into ``A[t]``."""
        H, W = Sh.shape[2], j1 - j0
        half = A.dtype.type(0.5)
        for k in range(b):
            a, rr = A[t, k], R[k]
            for g in range(2):
                ag, rg = a[g * W:(g + 1) * W], rr[g * W:(g + 1) * W]
                bg = bias[g * H + j0:]
                for j in range(W):
                    ag[j] = half * ftanh(ag[j] + rg[j] + bg[j]) + half
            r, z = a[:W], a[W:2 * W]
            n = a[2 * W:3 * W]
            rn, bn, bhn, hn_out = rr[2 * W:3 * W], bias[2 * H + j0:], b_hn[j0:], hn[t, k, j0:j1]
            for j in range(W):
                hnj = rn[j] + bhn[j]
                hn_out[j] = hnj
                n[j] = ftanh(n[j] + bn[j] + r[j] * hnj)
            h_prev, h_out = Sh[p, k, j0:j1], Sh[t + 1, k, j0:j1]
            for j in range(W):
                h_out[j] = n[j] + z[j] * (h_prev[j] - n[j])

    @_jit
    def gru_forward(A, R, bias, b_hn, t, Sh, p, hn, b):
        H = Sh.shape[2]
        gru_forward_cols(A, R, bias, b_hn, t, Sh, p, hn, b, 0, H)

    @_jit
    def gru_backward_cols(A, t, Sh, p, hn, dh, dHH, dHn, b, j0, j1, dout, has_dout, db, dbn,
                          keys):
        """Input-side gradients replace ``A[t]``; recurrent-side ones go to ``dHH (N, G)``, their
        candidate part also to ``dHn[t]``; ``dh <- dh' z``. ``dout``, ``db`` as in
        ``lstm_backward_cols``; ``dbn`` sums ``dHn`` over all rows (when ``db`` is not empty):
        the gradient of ``b_hn``, never by key."""
        H, W = dh.shape[1], j1 - j0
        one = A.dtype.type(1.0)
        for k in range(b):
            a, dhh = A[t, k], dHH[k]
            r, z = a[:W], a[W:2 * W]
            n = a[2 * W:3 * W]
            hr, hz, hnn = dhh[j0:j1], dhh[H + j0:H + j1], dhh[2 * H + j0:2 * H + j1]
            h_prev, hnk, dhk, dhn = Sh[p, k, j0:j1], hn[t, k, j0:j1], dh[k, j0:j1], dHn[t, k, j0:j1]
            if has_dout:
                _add_row(dhk, dout[t, k, j0:j1])
            # two loops, each writing few arrays: one loop writing all seven does not vectorise
            for j in range(W):
                rj, zj, nj = r[j], z[j], n[j]
                d = dhk[j]
                dzn = d * (one - zj) * (one - nj * nj)
                hz[j] = d * (h_prev[j] - nj) * zj * (one - zj)
                hr[j] = dzn * hnk[j] * rj * (one - rj)
                n[j] = dzn
                dhk[j] = d * zj
            for j in range(W):
                v = n[j] * r[j]
                hnn[j] = v
                dhn[j] = v
                r[j] = hr[j]
                z[j] = hz[j]
            if db.shape[0]:
                _sum_row(a, 3, H, j0, j1, _sums_row(db, keys, t, k))
                _add_row(dbn[j0:j1], dhn)

    @_jit
    def gru_backward(A, t, Sh, p, hn, dh, dHH, dHn, b):
        no_dout, no_sums, no_dbn, no_keys = _none(A)
        H = dh.shape[1]
        gru_backward_cols(A, t, Sh, p, hn, dh, dHH, dHn, b, 0, H, no_dout, False,
                          no_sums, no_dbn, no_keys)

    # -- Elman RNN ------------------------------------------------------------------------------
    @_jit
    def rnn_forward_cols(A, R, bias, t, Sh, b, relu, j0, j1):
        """``h = tanh(A[t] + R + bias)`` (or relu) into ``Sh[t + 1]``, kept in ``A[t]`` too."""
        W = j1 - j0
        zero = A.dtype.type(0.0)
        for n in range(b):
            a, r, bb, h_out = A[t, n], R[n], bias[j0:], Sh[t + 1, n, j0:j1]
            for j in range(W):
                v = a[j] + r[j] + bb[j]
                if relu:
                    v = v if (v > zero or v != v) else zero     # NaN passes, as np.maximum
                else:
                    v = ftanh(v)
                a[j] = v
                h_out[j] = v

    @_jit
    def rnn_forward(A, R, bias, t, Sh, b, relu):
        rnn_forward_cols(A, R, bias, t, Sh, b, relu, 0, Sh.shape[2])

    @_jit
    def rnn_backward_cols(A, t, dh, b, relu, j0, j1, dout, has_dout, db, keys):
        """``A[t] <- dh (1 - h^2)`` (relu: ``dh [h > 0]``), where ``A[t]`` held ``h``.
        ``dout``, ``db`` as in ``lstm_backward_cols``."""
        W = j1 - j0
        one, zero = A.dtype.type(1.0), A.dtype.type(0.0)
        for n in range(b):
            a, dhn = A[t, n], dh[n, j0:j1]
            if has_dout:
                _add_row(dhn, dout[t, n, j0:j1])
            for j in range(W):
                h = a[j]
                if relu:
                    a[j] = dhn[j] if h > zero else zero
                else:
                    a[j] = dhn[j] * (one - h * h)
            if db.shape[0]:
                _add_row(_sums_row(db, keys, t, n)[j0:j1], a)

    @_jit
    def rnn_backward(A, t, dh, b, relu):
        no_dout, no_sums, no_dbn, no_keys = _none(A)
        rnn_backward_cols(A, t, dh, b, relu, 0, dh.shape[1], no_dout, False, no_sums, no_keys)

    # -- sampling -------------------------------------------------------------------------------
    @_jit
    def sample_row(z, inv_temperature, u):
        """The token drawn by inverse CDF from ``softmax(z * inv_temperature)`` at the uniform
        draw ``u`` in [0, 1): the first ``v`` whose cumulative probability exceeds ``u``. One
        pass for the maximum, two for the sums, in float64; nothing allocated."""
        V = z.shape[0]
        m = z[0]
        for v in range(1, V):
            m = max(m, z[v])
        total = 0.0
        for v in range(V):
            total += math.exp((np.float64(z[v]) - m) * inv_temperature)
        target = u * total
        acc = 0.0
        for v in range(V):
            acc += math.exp((np.float64(z[v]) - m) * inv_temperature)
            if acc > target:
                return v
        return V - 1

    # -- optimiser ----------------------------------------------------------------------------------
    @numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
    def sum_squares(x):
        """``sum(x_i^2)`` over a flat array, accumulated in float64, in one pass, without BLAS:
        NumPy's ``vdot`` calls OpenBLAS's dot, which runs on OpenBLAS's threads for long
        arrays and leaves its idle worker spinning on a core (``blas.PackedBlas``)."""
        total = 0.0
        for i in range(x.shape[0]):
            v = np.float64(x[i])
            total += v * v
        return total

    _jit_exact = numba.njit(nogil=True, cache=True, error_model="numpy")   # no FMA: same bits

    @_jit_exact
    def adam_update(p, g, m, v, one_minus_b1, b2, one_minus_b2, sqrt_bc2, eps, step_size):
        """Adam's update of one flat parameter in one pass, the operations in the order of
        ``optim.Adam._update`` (so the numbers are the same to the bit)::

            m <- m + (g - m)(1 - b1)     v <- v b2 + g^2 (1 - b2)
            p <- p - m / (sqrt(v) / sqrt(1 - b2^t) + eps) * lr / (1 - b1^t)
        """
        for i in range(p.shape[0]):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * one_minus_b1
            vi = v[i] * b2 + (gi * gi) * one_minus_b2
            m[i] = mi
            v[i] = vi
            p[i] -= mi / (np.sqrt(vi) / sqrt_bc2 + eps) * step_size
