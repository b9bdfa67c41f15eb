"""The GPU kernels' code, checked without a GPU.

``nn/fused_cuda.py`` keeps each kernel's CUDA source as plain strings (``kernel_sources``). An
``ElementwiseKernel`` body is C++ that runs once for each index ``i``, and each index writes its
own elements, so running it in a plain loop gives what the GPU gives. Here the bodies are
compiled with the machine's C++ compiler, for ``float`` and ``double``, and stand in for CuPy's
kernels under ``fused_cuda``'s own wrappers: whole layers (stacked, bidirectional, variable
lengths, every cell) must then equal the NumPy kernels, outputs and gradients. With ``nvcc``
present, the bodies must also compile for the device. ``tests/test_gpu.py`` runs the real
thing where there is a GPU; no session has had one yet.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from cuda_on_cpu import compile_kernels, source
from rnnkit.gradcheck import relative_error
from rnnkit.nn import GRU, LSTM, RNN, fused_cuda

@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    kernels = compile_kernels(tmp_path_factory.mktemp("cuda_on_cpu"))
    if kernels is None:
        pytest.skip("needs a C++ compiler")
    return kernels


LAYERS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}), "lstm": (LSTM, {}),
          "gru": (GRU, {})}


def _run(layer, x, h0, lengths, dy, kind):
    y, h = layer(x, h0, lengths=lengths)
    dx, dh0 = layer.backward(dy)
    flat = (lambda s: list(s)) if kind == "lstm" else (lambda s: [s])
    return [y, dx] + flat(h) + flat(dh0) + [g.copy() for g in layer.grads]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_the_gpu_kernels_give_the_numpy_kernels_numbers(cpu_kernels, monkeypatch, kind, dtype,
                                                        tol):
    monkeypatch.setattr(fused_cuda, "_kernels", lambda: cpu_kernels)
    cls, extra = LAYERS[kind]
    rng = np.random.default_rng(5)
    N, T, D, H, L = 5, 7, 6, 9, 2
    x = rng.standard_normal((N, T, D)).astype(dtype)
    shape = (L * 2, N, H)
    h0 = (tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2)) if kind == "lstm"
          else rng.standard_normal(shape).astype(dtype))
    dy = rng.standard_normal((N, T, 2 * H)).astype(dtype)
    lengths = np.array([7, 3, 5, 1, 6])
    layers = [cls(D, H, num_layers=L, bidirectional=True, rng=np.random.default_rng(1),
                  dtype=dtype, kernels="numpy", **extra) for _ in range(2)]
    for row in layers[1].cells:                  # the GPU's kernels, run here
        for cell in row:
            cell._k, cell.fused_kernels = fused_cuda, True
    ref, got = (_run(layer, x, h0, lengths, dy, kind) for layer in layers)
    for a, b in zip(ref, got):
        assert relative_error(a.astype(np.float64), b.astype(np.float64)) < tol


def test_a_kernel_refuses_what_cupy_would_not_take(cpu_kernels):
    """The stand-in checks its arguments as CuPy's raw arrays would need them."""
    k = cpu_kernels["rnn_backward"]
    with pytest.raises(AssertionError):
        k(np.zeros((2, 3), np.float32), False, np.zeros(6, np.float32), size=6)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_gpu_kernels_compile_for_the_device(tmp_path):
    """Each body, in a CUDA kernel of its own for float and double, compiles to PTX (CuPy wraps
    it much as this does; this catches what is not CUDA C++ in a body)."""
    src = tmp_path / "kernels.cu"
    src.write_text(source(device=True))
    done = subprocess.run(["nvcc", "--ptx", "-o", str(tmp_path / "kernels.ptx"), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    for name in fused_cuda.kernel_sources():
        assert name in ptx
