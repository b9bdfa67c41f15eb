"""The GPU kernels' code, checked without a GPU.

``nn/fused_cuda.py`` keeps each kernel's CUDA source as plain strings (``kernel_sources``).
``cuda_on_cpu.py`` compiles the bodies for the CPU, and ``test_gpu.py`` runs them, on its
stand-in for CuPy, in whole layers and models against the NumPy kernels. Here: the stand-in
kernels take their arguments as CuPy's raw arrays need them, and, with ``nvcc`` present, the
bodies compile for the device.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from cuda_on_cpu import compile_kernels, source
from rnnkit.nn import fused_cuda


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    kernels = compile_kernels(tmp_path_factory.mktemp("cuda_on_cpu"))
    if kernels is None:
        pytest.skip("needs a C++ compiler")
    return kernels


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
