"""``fused_cuda``'s kernels compiled for the CPU (test support; see
``test_cuda_kernels_on_cpu.py``).

An ``ElementwiseKernel`` body is C++ that runs once for each index ``i``, and each index writes
its own elements, so a plain loop over ``i`` gives what the GPU gives.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np

from rnnkit.nn import fused_cuda

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def params(spec):
    """``"raw T a, int64 H, bool relu"`` -> ``[("raw", "a"), ("int64", "H"), ("bool", "relu")]``."""
    out = []
    for p in spec.split(","):
        words = p.split()
        out.append(("raw", words[2]) if words[0] == "raw" else (words[0], words[1]))
    return out


def declare(plist):
    """C parameters for ``params``' list: ``T* a, long long H, bool relu``."""
    c = {"raw": "T* {}", "int64": "long long {}", "bool": "bool {}"}
    return ", ".join(c[kind].format(name) for kind, name in plist)


def source(device=False):
    """Every kernel as a C++ (or, with ``device``, CUDA) function of ``(n, params...)``."""
    lines = ["#include <cmath>", "#include <cstddef>", "using std::tanh;"] if not device else []
    for name, (ins, outs, body) in fused_cuda.kernel_sources().items():
        plist = params(ins) + params(outs)
        decl = declare(plist)
        if device:
            lines += [f"template <typename T> __global__ void {name}(long long n, {decl}) {{",
                      "  const ptrdiff_t i = blockIdx.x * (ptrdiff_t)blockDim.x + threadIdx.x;",
                      f"  if (i < n) {{ {body} }}", "}"]
            lines += [f"template __global__ void {name}<{T}>(long long, "
                      f"{decl.replace('T*', T + '*')});" for T in ("float", "double")]
            continue
        lines += [f"template <typename T> static void {name}_impl(long long n, {decl}) {{",
                  f"  for (ptrdiff_t i = 0; i < n; ++i) {{ {body} }}", "}"]
        args = ", ".join(n for _, n in plist)
        for T in ("float", "double"):
            lines.append(f'extern "C" void {name}_{T}(long long n, {decl.replace("T*", T + "*")}) '
                         f'{{ {name}_impl<{T}>(n, {args}); }}')
    return "\n".join(lines) + "\n"


class CpuKernel:
    """Called as CuPy's kernel is (``fused_cuda``'s wrappers: inputs, outputs, ``size=``), on
    NumPy arrays, by the compiled body."""

    def __init__(self, lib, name, params):
        self.lib, self.name, self.params = lib, name, params
        CT = {"raw": ctypes.c_void_p, "int64": ctypes.c_longlong, "bool": ctypes.c_bool}
        for T in ("float", "double"):
            fn = getattr(lib, f"{name}_{T}")
            fn.argtypes = [ctypes.c_longlong] + [CT[kind] for kind, _ in params]
            fn.restype = None

    def __call__(self, *args, size):
        assert len(args) == len(self.params), (self.name, len(args))
        arrays = [a for (kind, _), a in zip(self.params, args) if kind == "raw"]
        dtype = arrays[0].dtype
        converted = []
        for (kind, pname), a in zip(self.params, args):
            if kind == "raw":
                assert isinstance(a, np.ndarray) and a.dtype == dtype, (self.name, pname)
                assert a.ndim == 1 and a.flags.c_contiguous, (self.name, pname, a.shape)
                converted.append(a.ctypes.data)
            elif kind == "int64":
                assert isinstance(a, (int, np.integer)), (self.name, pname, type(a))
                converted.append(int(a))
            else:
                assert isinstance(a, (bool, np.bool_)), (self.name, pname, type(a))
                converted.append(bool(a))
        getattr(self.lib, f"{self.name}_{C_TYPES[dtype]}")(int(size), *converted)


def compile_kernels(folder):
    """``name -> callable`` for each of ``fused_cuda``'s kernels, its body compiled for the CPU
    into ``folder`` and called as CuPy's kernel is; None where there is no C++ compiler."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return None
    (folder / "kernels.cpp").write_text(source())
    lib = folder / "kernels.so"
    done = subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-o", str(lib),
                           str(folder / "kernels.cpp")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    dll = ctypes.CDLL(str(lib))
    return {name: CpuKernel(dll, name, params(ins) + params(outs))
            for name, (ins, outs, _) in fused_cuda.kernel_sources().items()}
