"""Fused elementwise kernels for the cells, compiled with numba (an optional extra).

The NumPy kernels in ``cells.py`` make a dozen passes over each step's gate arrays, one ufunc at a
time; these make one, over the feature-major buffers described there. They compute the same equations (see the cells' docstrings), write the same
buffers, and are tested equal to the NumPy kernels and to PyTorch. Matrix products stay with
NumPy's BLAS.

How they are made to vectorise: ``error_model='numpy'`` drops the per-division zero check, every
inner loop runs over the batch, which is contiguous, and in float32 ``tanh`` is a rational approximation (the
one Eigen uses: ``x P(x^2) / Q(x^2)`` on ``|x| <= 7.9053``, relative error below 4e-7, far inside
rnnkit's 1e-5 float32 tolerance) that the compiler turns into SIMD code, where a call to the C
library's ``tanhf`` would not be. float64 keeps the exact ``math.tanh``. ``nogil=True`` lets
threads run kernels side by side.

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

    # Every kernel takes whole feature-major buffers (A (G, T, N), S (H, T + 2, N), caches
    # (H, T, N)) and the step's indices, so that numba sees C-contiguous arrays and the inner
    # loop over the batch is a unit-stride loop it can vectorise. ``R (G, N)`` is the step's
    # recurrent product W_hh h, computed by BLAS just before.

    # -- LSTM (fused gate order i, f, o, g; i, f, o pre-scaled by 1/2) ----------------------------
    @_jit
    def lstm_forward(A, R, t, Sh, Sc, p, tc, b):
        """``A[:, t] <- acts(A[:, t] + R)``; ``c = f c_prev + i g``; ``tc = tanh(c)``; ``h = o tc``."""
        H = Sh.shape[0]
        half = A.dtype.type(0.5)
        for j in range(3 * H):
            for n in range(b):
                A[j, t, n] = half * ftanh(A[j, t, n] + R[j, n]) + half
        for j in range(3 * H, 4 * H):
            for n in range(b):
                A[j, t, n] = ftanh(A[j, t, n] + R[j, n])
        for j in range(H):
            for n in range(b):
                c = A[H + j, t, n] * Sc[j, p, n] + A[j, t, n] * A[3 * H + j, t, n]
                Sc[j, t + 1, n] = c
                tcj = ftanh(c)
                tc[j, t, n] = tcj
                Sh[j, t + 1, n] = A[2 * H + j, t, n] * tcj

    @_jit
    def lstm_backward(A, t, Sc, p, tc, dh, dc, dZ, b):
        """Gate gradients ``dZ[:, t]`` (before the nonlinearities); ``dc <- dc' * f``."""
        H = dh.shape[0]
        one = A.dtype.type(1.0)
        for j in range(H):
            for n in range(b):
                i, f, o, g = A[j, t, n], A[H + j, t, n], A[2 * H + j, t, n], A[3 * H + j, t, n]
                tcj, dhj = tc[j, t, n], dh[j, n]
                dcj = dc[j, n] + dhj * o * (one - tcj * tcj)
                dZ[j, t, n] = dcj * g * i * (one - i)
                dZ[H + j, t, n] = dcj * Sc[j, p, n] * f * (one - f)
                dZ[2 * H + j, t, n] = dhj * tcj * o * (one - o)
                dZ[3 * H + j, t, n] = dcj * i * (one - g * g)
                dc[j, n] = dcj * f

    # -- GRU (gate order r, z, n; r, z pre-scaled by 1/2) ------------------------------------------
    @_jit
    def gru_forward(A, R, t, Sh, p, b_hn, hn, b):
        """``r, z = sigmoid(A + R)``; ``hn = R_n + b_hn``; ``n = tanh(A_n + r hn)``;
        ``h = n + z (h_prev - n)``; activations back into ``A``."""
        H = Sh.shape[0]
        half = A.dtype.type(0.5)
        for j in range(2 * H):
            for k in range(b):
                A[j, t, k] = half * ftanh(A[j, t, k] + R[j, k]) + half
        for j in range(H):
            for k in range(b):
                hnj = R[2 * H + j, k] + b_hn[j]
                hn[j, t, k] = hnj
                n = ftanh(A[2 * H + j, t, k] + A[j, t, k] * hnj)
                A[2 * H + j, t, k] = n
                Sh[j, t + 1, k] = n + A[H + j, t, k] * (Sh[j, p, k] - n)

    @_jit
    def gru_backward(A, t, Sh, p, hn, dh, dXP, dHH, b):
        """Input-side ``dXP[:, t]`` and recurrent-side ``dHH[:, t]`` gradients; ``dh <- dh' z``."""
        H = dh.shape[0]
        one = A.dtype.type(1.0)
        for j in range(H):
            for k in range(b):
                r, z, n = A[j, t, k], A[H + j, t, k], A[2 * H + j, t, k]
                d = dh[j, k]
                dzn = d * (one - z) * (one - n * n)
                dzz = d * (Sh[j, p, k] - n) * z * (one - z)
                dzr = dzn * hn[j, t, k] * r * (one - r)
                dXP[j, t, k] = dzr
                dXP[H + j, t, k] = dzz
                dXP[2 * H + j, t, k] = dzn
                dHH[j, t, k] = dzr
                dHH[H + j, t, k] = dzz
                dHH[2 * H + j, t, k] = dzn * r
                dh[j, k] = d * z

    # -- Elman RNN ------------------------------------------------------------------------------
    @_jit
    def rnn_forward(A, R, t, Sh, b, relu):
        """``h = tanh(A + R)`` (or relu) into ``Sh[:, t + 1]``, kept in ``A`` too."""
        H = Sh.shape[0]
        zero = A.dtype.type(0.0)
        for j in range(H):
            for n in range(b):
                v = A[j, t, n] + R[j, n]
                v = max(v, zero) if relu else ftanh(v)
                A[j, t, n] = v
                Sh[j, t + 1, n] = v

    @_jit
    def rnn_backward(A, t, dh, dZ, b, relu):
        """``dZ[:, t] = dh (1 - h^2)`` (relu: ``dh [h > 0]``)."""
        H = dh.shape[0]
        one, zero = A.dtype.type(1.0), A.dtype.type(0.0)
        for j in range(H):
            for n in range(b):
                h = A[j, t, n]
                if relu:
                    dZ[j, t, n] = dh[j, n] if h > zero else zero
                else:
                    dZ[j, t, n] = dh[j, n] * (one - h * h)
