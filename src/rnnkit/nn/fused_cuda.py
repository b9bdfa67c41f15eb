"""Fused elementwise kernels for the cells on an NVIDIA GPU, compiled by CuPy (an optional extra).

The GPU twin of ``fused.py``: the same functions with the same arguments (whole time-major
buffers plus the step's indices), the same equations (see the cells' docstrings) and the same
buffers written, so ``cells.py`` calls either without knowing which. Each kernel is one CUDA
launch over the step's ``b * H`` (row, unit) pairs, where the NumPy kernels would launch a dozen
ufuncs. Matrix products stay with cuBLAS (``cupy.matmul``).

Every array handed to a kernel is a contiguous block flattened to one axis (``A[t, :b]`` is
contiguous because rows are the batch and the active rows a prefix), so a kernel indexes plain
``row * G + gate * H + unit`` offsets. Gates that end in a sigmoid arrive pre-scaled by 1/2, as
on the CPU: ``sigmoid(z) = (1 + tanh(z / 2)) / 2``.

The kernels compile on first use (``backend.cuda_available()`` says whether CuPy sees a GPU).
"""
from __future__ import annotations

import functools

@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernels, compiled by CuPy on first use: ``name -> cupy.ElementwiseKernel``."""
    import cupy  # noqa: PLC0415 - optional extra, imported only on the GPU path
    return {name: cupy.ElementwiseKernel(params_in, params_out, body, "rnnkit_" + name)
            for name, (params_in, params_out, body) in kernel_sources().items()}


def kernel_sources() -> dict:
    """Each kernel's CuPy ``ElementwiseKernel`` source, ``name -> (params_in, params_out,
    body)``: plain strings, no CuPy needed (``tests/cuda_on_cpu.py`` compiles the bodies for
    the CPU too, and ``tests/test_gpu.py`` runs them on a stand-in for CuPy against the NumPy
    kernels). A body runs once for each index ``i`` of ``[0, size)``, over ``raw`` arrays of
    element type ``T``."""
    def kernel(name, params_in, params_out, body):
        return params_in, params_out, body

    half, one = "((T)0.5)", "((T)1)"
    return {
        # i f o g (i, f, o pre-scaled); c' = f c + i g; h' = o tanh(c')
        "lstm_forward": kernel(
            "lstm_forward", "raw T R, raw T bias, raw T c_prev, int64 H",
            "raw T a, raw T c_out, raw T h_out, raw T tc_out", f"""
            const ptrdiff_t k = i / H, j = i % H, row = k * 4 * H;
            const T gi = {half} * tanh(a[row + j] + R[row + j] + bias[j]) + {half};
            const T gf = {half} * tanh(a[row + H + j] + R[row + H + j] + bias[H + j]) + {half};
            const T go = {half} * tanh(a[row + 2 * H + j] + R[row + 2 * H + j]
                                       + bias[2 * H + j]) + {half};
            const T gg = tanh(a[row + 3 * H + j] + R[row + 3 * H + j] + bias[3 * H + j]);
            a[row + j] = gi; a[row + H + j] = gf; a[row + 2 * H + j] = go;
            a[row + 3 * H + j] = gg;
            const T c = gf * c_prev[i] + gi * gg;
            const T tc = tanh(c);
            c_out[i] = c; tc_out[i] = tc; h_out[i] = go * tc;
            """),
        "lstm_backward": kernel(
            "lstm_backward", "raw T c_prev, raw T tc, raw T dh, int64 H", "raw T a, raw T dc", f"""
            const ptrdiff_t k = i / H, j = i % H, row = k * 4 * H;
            const T gi = a[row + j], gf = a[row + H + j], go = a[row + 2 * H + j],
                    gg = a[row + 3 * H + j];
            const T t = tc[i], d_h = dh[i];
            const T d_c = dc[i] + d_h * go * ({one} - t * t);
            a[row + j] = d_c * gg * gi * ({one} - gi);
            a[row + H + j] = d_c * c_prev[i] * gf * ({one} - gf);
            a[row + 2 * H + j] = d_h * t * go * ({one} - go);
            a[row + 3 * H + j] = d_c * gi * ({one} - gg * gg);
            dc[i] = d_c * gf;
            """),
        # r z n (r, z pre-scaled); n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))
        "gru_forward": kernel(
            "gru_forward", "raw T R, raw T bias, raw T b_hn, raw T h_prev, int64 H",
            "raw T a, raw T hn, raw T h_out", f"""
            const ptrdiff_t k = i / H, j = i % H, row = k * 3 * H;
            const T r = {half} * tanh(a[row + j] + R[row + j] + bias[j]) + {half};
            const T z = {half} * tanh(a[row + H + j] + R[row + H + j] + bias[H + j]) + {half};
            const T hnj = R[row + 2 * H + j] + b_hn[j];
            const T cand = tanh(a[row + 2 * H + j] + bias[2 * H + j] + r * hnj);
            a[row + j] = r; a[row + H + j] = z; a[row + 2 * H + j] = cand;
            hn[i] = hnj;
            h_out[i] = cand + z * (h_prev[i] - cand);
            """),
        "gru_backward": kernel(
            "gru_backward", "raw T h_prev, raw T hn, int64 H",
            "raw T a, raw T dh, raw T dHH, raw T dHn", f"""
            const ptrdiff_t k = i / H, j = i % H, row = k * 3 * H;
            const T r = a[row + j], z = a[row + H + j], cand = a[row + 2 * H + j];
            const T d = dh[i];
            const T dzn = d * ({one} - z) * ({one} - cand * cand);
            const T dzz = d * (h_prev[i] - cand) * z * ({one} - z);
            const T dzr = dzn * hn[i] * r * ({one} - r);
            a[row + j] = dzr; a[row + H + j] = dzz; a[row + 2 * H + j] = dzn;
            dHH[row + j] = dzr; dHH[row + H + j] = dzz; dHH[row + 2 * H + j] = dzn * r;
            dHn[i] = dzn * r;
            dh[i] = d * z;
            """),
        "rnn_forward": kernel(
            "rnn_forward", "raw T R, raw T bias, int64 H, bool relu", "raw T a, raw T h_out", """
            const T v = a[i] + R[i] + bias[i % H];
            const T h = relu ? ((v > (T)0 || v != v) ? v : (T)0) : tanh(v);
            a[i] = h; h_out[i] = h;
            """),
        "rnn_backward": kernel(
            "rnn_backward", "raw T dh, bool relu", "raw T a", f"""
            const T h = a[i];
            a[i] = relu ? (h > (T)0 ? dh[i] : (T)0) : dh[i] * ({one} - h * h);
            """),
    }


def _flat(block):
    """A contiguous block as one axis (a view: the kernel writes into it; ``reshape`` of a
    block that is not contiguous would be a copy, and the writes lost)."""
    if not block.flags.c_contiguous:
        raise ValueError("fused_cuda: a kernel's array must be a contiguous block")
    return block.reshape(-1)


def lstm_forward(A, R, bias, t, Sh, Sc, p, tc, b):
    H = Sh.shape[2]
    _kernels()["lstm_forward"](_flat(R[:b]), bias, _flat(Sc[p, :b]), H, _flat(A[t, :b]),
                               _flat(Sc[t + 1, :b]), _flat(Sh[t + 1, :b]), _flat(tc[t, :b]),
                               size=b * H)


def lstm_backward(A, t, Sc, p, tc, dh, dc, b):
    H = dh.shape[1]
    _kernels()["lstm_backward"](_flat(Sc[p, :b]), _flat(tc[t, :b]), _flat(dh[:b]), H,
                                _flat(A[t, :b]), _flat(dc[:b]), size=b * H)


def gru_forward(A, R, bias, b_hn, t, Sh, p, hn, b):
    H = Sh.shape[2]
    _kernels()["gru_forward"](_flat(R[:b]), bias, b_hn, _flat(Sh[p, :b]), H, _flat(A[t, :b]),
                              _flat(hn[t, :b]), _flat(Sh[t + 1, :b]), size=b * H)


def gru_backward(A, t, Sh, p, hn, dh, dHH, dHn, b):
    H = dh.shape[1]
    _kernels()["gru_backward"](_flat(Sh[p, :b]), _flat(hn[t, :b]), H, _flat(A[t, :b]),
                               _flat(dh[:b]), _flat(dHH[:b]), _flat(dHn[t, :b]), size=b * H)


def rnn_forward(A, R, bias, t, Sh, b, relu):
    H = Sh.shape[2]
    _kernels()["rnn_forward"](_flat(R[:b]), bias, H, bool(relu), _flat(A[t, :b]),
                              _flat(Sh[t + 1, :b]), size=b * H)


def rnn_backward(A, t, dh, b, relu):
    H = dh.shape[1]
    _kernels()["rnn_backward"](_flat(dh[:b]), bool(relu), _flat(A[t, :b]), size=b * H)
