"""Fused elementwise kernels for the cells, compiled with numba (an optional extra).

The NumPy kernels in ``cells.py`` make a dozen passes over each step's gate arrays, one ufunc at a
time; these make one. They compute the same equations (see the cells' docstrings), write the same
buffers, and are tested equal to the NumPy kernels and to PyTorch. Matrix products stay with
NumPy's BLAS.

How they are made to vectorise: ``error_model='numpy'`` drops the per-division zero check, every
inner loop runs over contiguous rows, and in float32 ``tanh`` is a rational approximation (the
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

    # -- LSTM (fused gate order i, f, o, g; i, f, o pre-scaled by 1/2) ----------------------------
    @_jit
    def lstm_forward(A, R, c_prev, c, tc, h, b):
        """``A[:b] <- acts(A + R)``; ``c = f c_prev + i g``; ``tc = tanh(c)``; ``h = o tc``."""
        H = c.shape[1]
        half = A.dtype.type(0.5)
        for r in range(b):
            a, rr = A[r], R[r]
            for j in range(3 * H):
                a[j] = half * ftanh(a[j] + rr[j]) + half
            for j in range(3 * H, 4 * H):
                a[j] = ftanh(a[j] + rr[j])
            cp, cn, t, hn = c_prev[r], c[r], tc[r], h[r]
            for j in range(H):
                cj = a[H + j] * cp[j] + a[j] * a[3 * H + j]
                cn[j] = cj
                tj = ftanh(cj)
                t[j] = tj
                hn[j] = a[2 * H + j] * tj

    @_jit
    def lstm_backward(A, tc, c_prev, dh, dc, dZ, b):
        """Gate gradients ``dZ[:b]`` (before the nonlinearities); ``dc <- dc' * f``."""
        H = dh.shape[1]
        one = A.dtype.type(1.0)
        for r in range(b):
            a, t, cp, dhr, dcr, dz = A[r], tc[r], c_prev[r], dh[r], dc[r], dZ[r]
            for j in range(H):
                i, f, o, g = a[j], a[H + j], a[2 * H + j], a[3 * H + j]
                tj, dhj = t[j], dhr[j]
                dcj = dcr[j] + dhj * o * (one - tj * tj)
                dz[j] = dcj * g * i * (one - i)
                dz[H + j] = dcj * cp[j] * f * (one - f)
                dz[2 * H + j] = dhj * tj * o * (one - o)
                dz[3 * H + j] = dcj * i * (one - g * g)
                dcr[j] = dcj * f

    # -- GRU (gate order r, z, n; r, z pre-scaled by 1/2) ------------------------------------------
    @_jit
    def gru_forward(A, R, b_hn, h_prev, hn, h, b):
        """``r, z = sigmoid(A + R)``; ``hn = R_n + b_hn``; ``n = tanh(A_n + r hn)``;
        ``h = n + z (h_prev - n)``; activations back into ``A``."""
        H = h.shape[1]
        half = A.dtype.type(0.5)
        for r in range(b):
            a, rr, hp, hnr, hr = A[r], R[r], h_prev[r], hn[r], h[r]
            for j in range(2 * H):
                a[j] = half * ftanh(a[j] + rr[j]) + half
            for j in range(H):
                hnj = rr[2 * H + j] + b_hn[j]
                hnr[j] = hnj
                n = ftanh(a[2 * H + j] + a[j] * hnj)
                a[2 * H + j] = n
                hr[j] = n + a[H + j] * (hp[j] - n)

    @_jit
    def gru_backward(A, hn, h_prev, dh, dXP, dHH, b):
        """Input-side ``dXP[:b]`` and recurrent-side ``dHH[:b]`` gradients; ``dh <- dh' z``."""
        H = dh.shape[1]
        one = A.dtype.type(1.0)
        for r in range(b):
            a, hnr, hp, dhr, dx, dr = A[r], hn[r], h_prev[r], dh[r], dXP[r], dHH[r]
            for j in range(H):
                rg, z, n = a[j], a[H + j], a[2 * H + j]
                d = dhr[j]
                dzn = d * (one - z) * (one - n * n)
                dzz = d * (hp[j] - n) * z * (one - z)
                dzr = dzn * hnr[j] * rg * (one - rg)
                dx[j] = dzr
                dx[H + j] = dzz
                dx[2 * H + j] = dzn
                dr[j] = dzr
                dr[H + j] = dzz
                dr[2 * H + j] = dzn * rg
                dhr[j] = d * z

    # -- Elman RNN ------------------------------------------------------------------------------
    @_jit
    def rnn_forward(A, R, h, b, relu):
        """``h = tanh(A + R)`` (or relu), also written back into ``A``."""
        H = h.shape[1]
        zero = A.dtype.type(0.0)
        for r in range(b):
            a, rr, hr = A[r], R[r], h[r]
            if relu:
                for j in range(H):
                    v = max(a[j] + rr[j], zero)
                    a[j] = v
                    hr[j] = v
            else:
                for j in range(H):
                    v = ftanh(a[j] + rr[j])
                    a[j] = v
                    hr[j] = v

    @_jit
    def rnn_backward(A, dh, dZ, b, relu):
        """``dZ[:b] = dh (1 - h^2)`` (relu: ``dh [h > 0]``)."""
        H = dh.shape[1]
        one, zero = A.dtype.type(1.0), A.dtype.type(0.0)
        for r in range(b):
            a, d, dz = A[r], dh[r], dZ[r]
            if relu:
                for j in range(H):
                    dz[j] = d[j] if a[j] > zero else zero
            else:
                for j in range(H):
                    dz[j] = d[j] * (one - a[j] * a[j])
