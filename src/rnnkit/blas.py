"""The matrix-product seam: NumPy's ``matmul``, Intel MKL's GEMM (an optional extra), or
rnnkit's own packed kernel (``blas="packed"``, with numba: ``PackedBlas``, ``rnnkit.packed``).

Most of a recurrent network's time goes into matrix products, and on a CPU much of that into
the small product of every time step, ``h W_hh^T`` with ``h`` only ``(N, H)``. On an Intel
processor MKL's GEMM runs those faster than NumPy's OpenBLAS (2-core Xeon,
``benchmarks/bench_gemm.py``: ``(32, 256) x (256, 1024)``, the H=256 LSTM's forward step, about
62 us against 86 us); on an AMD EPYC (Zen 4) it ran them slower (195 us against 136 us). So
``auto`` takes MKL on Intel processors only. A language model whose recurrent layers are large
enough takes rnnkit's packed kernel instead, on other processors with AVX-512 and two cores when
numba is installed (``for_model``): on the AMD EPYC it ran the per-step products at 185-220
GFLOP/s on two cores, against OpenBLAS's 94-134.

    blas = get_blas("auto")            # MKL when installed on an Intel processor, else NumPy
    blas.matmul(a, b, out=c)           # c = a @ b for 2-D a, b (transposed views welcome)

``name`` is ``"numpy"``, ``"mkl"`` or ``"packed"``. The NumPy one also serves CuPy
(``get_blas(..., xp=cupy)``).
MKL comes from ``pip install 'rnnkit[mkl]'`` (Intel's ``mkl`` wheel, which puts ``libmkl_rt`` in
the environment's ``lib``), from a conda environment, or from the path in ``RNNKIT_MKL``.
``RNNKIT_BLAS=numpy`` (or ``blas="numpy"``) turns it off. Products MKL cannot take (other
dtypes, more than 2 dimensions, empty) and small ones (``SMALL``) go to NumPy.

MKL and NumPy's OpenBLAS give the same products up to rounding (the order of the sums), so
results agree to float32 tolerance, not to the bit. One library should do all the large
products of a training step: each keeps its idle threads spinning for a while after a call, and
they slow down the other's (see ``benchmarks/common.py``); so every layer of rnnkit takes its
products from here.

MKL can also pack a matrix once and multiply by it many times (``cblas_sgemm_pack``), as
oneDNN's RNN kernels do with ``W_hh``. Measured here, packing ``W_hh`` once per sequence made the
LSTM layer 1.02x faster at H=256 and 1.00x at H=512, and training took 10-18 MB more memory at
H=256, so rnnkit does not.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import glob
import os
import platform
import site
import sys
import threading
import warnings

import numpy as np

from . import packed as _packed
from .backend import array_module

BLAS = ("auto", "numpy", "mkl", "packed")
# Products of fewer multiply-adds (M * K * N) go to NumPy even with MKL. MKL's call costs about
# 6 us more (measured: (25, 100) x (100, 100) in float64, 6.9 us in NumPy, 15.2 us in MKL), and
# min-char-rnn's batch-1 step ran at half the speed through MKL. OpenBLAS runs products up to
# this size on one thread, so no second pool of threads is woken to spin beside MKL's.
SMALL = 1 << 18
_ROW, _NOTRANS, _TRANS = 101, 111, 112
_PACK_B, _PACKED = 162, 151          # MKL: CblasBMatrix (which to pack), CblasPacked
_INT_MAX = 2 ** 31 - 1          # MKL's LP64 interface: sizes and strides are C ints


class NumpyBlas:
    """Products by the array module's own ``matmul``."""

    name = "numpy"

    def __init__(self, xp=np):
        self.xp = xp

    def matmul(self, a, b, out=None):
        return self.xp.matmul(a, b, out=out)

    def native(self):
        """The OpenBLAS GEMM that NumPy calls, for compiled code (``NativeGemm``), or None
        (CuPy, or a NumPy whose BLAS cannot be found)."""
        return _numpy_openblas() if self.xp is np else None


def _operand(a, itemsize):
    """``(trans, ld, array)`` describing the 2-D ``a`` to a row-major CBLAS call, copying it
    when its strides are neither row- nor column-major (negative, zero, not whole items)."""
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == itemsize or cols == 1) and s0 % itemsize == 0 and s0 >= max(cols, 1) * itemsize:
        return _NOTRANS, s0 // itemsize, a
    if (s0 == itemsize or rows == 1) and s1 % itemsize == 0 and s1 >= max(rows, 1) * itemsize:
        return _TRANS, s1 // itemsize, a
    a = np.ascontiguousarray(a)
    return _NOTRANS, max(cols, 1), a


class MklBlas:
    """Products by MKL's CBLAS through ctypes (the GIL is released during each call)."""

    name = "mkl"

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.lib, self.path, self.xp = lib, path, np
        # 32-bit ints, whatever MKL_INTERFACE_LAYER says (ILP64 would read our ints wrongly)
        if lib.MKL_Set_Interface_Layer(0) < 0:                   # 0: MKL_INTERFACE_LP64
            raise OSError("MKL refused its LP64 interface")
        i, vp = ctypes.c_int, ctypes.c_void_p
        self._gemm = {}
        for dt, ch, fl in ((np.dtype(np.float32), "s", ctypes.c_float),
                           (np.dtype(np.float64), "d", ctypes.c_double)):
            g = getattr(lib, f"cblas_{ch}gemm")      # (layout, transa, transb, M, N, K, alpha,
            g.argtypes = [i, i, i, i, i, i, fl, vp, i, vp, i, fl, vp, i]   # a, lda, b, ldb,
            g.restype = None                                              # beta, c, ldc)
            self._gemm[dt] = g
        # packing a matrix once for many products (MKL 2017 and later; without it, no packing)
        self._pack = {}
        for dt, ch, fl in ((np.dtype(np.float32), "s", ctypes.c_float),
                           (np.dtype(np.float64), "d", ctypes.c_double)):
            fns = [getattr(lib, f"cblas_{ch}gemm_{name}", None)
                   for name in ("pack_get_size", "pack", "compute")]
            if None in fns:
                continue
            size, pack, compute = fns
            size.argtypes, size.restype = [i, i, i, i], ctypes.c_size_t   # (which, M, N, K)
            pack.argtypes = [i, i, i, i, i, i, fl, vp, i, vp]  # (layout, which, trans, M, N,
            pack.restype = None                                # K, alpha, src, ld, dest)
            compute.argtypes = [i, i, i, i, i, i, vp, i, vp, i, fl, vp, i]   # (layout, transa,
            compute.restype = None      # transb, M, N, K, a, lda, b, ldb, beta, c, ldc)
            self._pack[dt] = (size, pack, compute)

    def native(self):
        """MKL's GEMM for compiled code (``NativeGemm``), and its product by a packed ``B``
        where this MKL packs."""
        compute = [_address(self._pack[np.dtype(dt)][2]) if np.dtype(dt) in self._pack else 0
                   for dt in (np.float32, np.float64)]
        return NativeGemm(_address(self.lib.cblas_sgemm), _address(self.lib.cblas_dgemm), False,
                          *compute)

    def pack_b(self, B, m: int, buf=None):
        """``B (k, n)`` (rows of contiguous items) in MKL's packed format, for products
        ``(m, k) x B`` by ``cblas_?gemm_compute`` (``NativeGemm.scompute``): into ``buf``, a
        byte array that an earlier call returned, where it is large enough, else a new one;
        returns the buffer. The loop over time multiplies by the same ``W_hh`` at every step:
        packed once a loop, a step's product at H=256 (B=32) took 46 us against 61 from
        ``cblas_sgemm``, which packs ``B`` at every call (2-core Xeon; 1.1-1.8x from H=64 to
        1024). MKL asks for 10x the matrix's size at H=256 and writes less than 2x of it
        (the untouched pages are never resident); a buffer is not to be moved once packed."""
        k, n = B.shape
        size_of, pack, _ = self._pack[B.dtype]
        size = size_of(_PACK_B, m, n, k)
        if buf is None or buf.nbytes < size:
            buf = np.empty(size, dtype=np.uint8)
        pack(_ROW, _PACK_B, _NOTRANS, m, n, k, 1.0, B.ctypes.data, B.strides[0] // B.itemsize,
             buf.ctypes.data)
        return buf

    def matmul_packed(self, a, packed, out):
        """``out (m, n) = a (m, k) B`` for a ``B (k, n)`` that ``pack_b(B, m)`` packed: a step's
        product as the loop over time makes it (``timeloop._product``), for the benchmark and
        the tests. ``a`` and ``out`` of ``B``'s dtype, rows of contiguous items."""
        if not (a.dtype == out.dtype and _row_major(a) and _row_major(out)
                and out.shape[0] == a.shape[0]):
            raise ValueError("matmul_packed: a and out must be row-major, of one dtype and "
                             "as many rows")
        (m, k), n = a.shape, out.shape[1]
        self._pack[a.dtype][2](_ROW, _NOTRANS, _PACKED, m, n, k, a.ctypes.data,
                               a.strides[0] // a.itemsize, packed.ctypes.data, n, 0.0,
                               out.ctypes.data, out.strides[0] // out.itemsize)
        return out

    def version(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.lib.MKL_Get_Version_String(buf, 256)
        return buf.value.decode(errors="replace")

    def _check(self, a, b, out):
        """The dtype when MKL can take ``a @ b`` exactly as ``np.matmul`` would: plain 2-D
        arrays of one float dtype, sizes that fit a C int, and an ``out`` that is writable,
        row-major and apart from both inputs (NumPy copies when they overlap; a GEMM would
        overwrite what it is still reading)."""
        if type(a) is not np.ndarray or type(b) is not np.ndarray:     # subclasses: NumPy's
            return None
        dt = a.dtype
        if a.ndim != 2 or b.ndim != 2 or b.dtype != dt or dt not in self._gemm:
            return None
        if a.shape[1] != b.shape[0] or 0 in a.shape or 0 in b.shape:
            return None
        if max(a.shape + b.shape) > _INT_MAX or max(map(abs, a.strides + b.strides)) > _INT_MAX:
            return None
        if out is not None and (type(out) is not np.ndarray or out.dtype != dt
                                or out.shape != (a.shape[0], b.shape[1]) or not _row_major(out)
                                or not out.flags.writeable or out.strides[0] > _INT_MAX
                                or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
            return None
        return dt

    def matmul(self, a, b, out=None):
        dt = self._check(a, b, out)
        if dt is None or a.shape[0] * a.shape[1] * b.shape[1] < SMALL:   # NumPy's, as NumPy does
            return np.matmul(a, b, out=out)
        (M, K), N = a.shape, b.shape[1]
        if out is None:
            out = np.empty((M, N), dtype=dt)
        ta, lda, a = (_NOTRANS, K, a) if a.flags.c_contiguous else _operand(a, dt.itemsize)
        tb, ldb, b = (_NOTRANS, N, b) if b.flags.c_contiguous else _operand(b, dt.itemsize)
        ldc = out.strides[0] // dt.itemsize if M > 1 else N
        self._gemm[dt](_ROW, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
                       0.0, out.ctypes.data, ldc)
        return out


class PackedBlas:
    """Products by rnnkit's own float32 GEMM (``rnnkit.packed``: the right operand packed in
    panels, an LLVM micro-kernel, two threads). Needs numba; other dtypes, small products and
    shapes it does not take go to NumPy.

    Its recurrent layers pack ``W_hh`` once per sequence and share each step between two
    threads, each owning half of the hidden units (``nn/timeloop.py``). NumPy's OpenBLAS must
    then stay off the cores: after a product on its two threads its idle worker keeps spinning
    for about 0.1 s. So every large product here runs on rnnkit's two threads: by the packed
    kernel where ``A``'s rows are contiguous; else (the weight gradients ``dZ^T X``, where ``A`` is
    a transposed view, and the bias gradient ``ones @ dZ``) as two halves, each on one of
    rnnkit's threads with OpenBLAS held at one thread (its thread count is the process's; put
    back after each product)."""

    name = "packed"
    packs = True

    def __init__(self):
        self.xp = np
        self.pool = _packed.Pool()                # the helper thread, started on first use

    def native(self):
        """NumPy's OpenBLAS, for the float64 loops (the packed kernel is float32 only)."""
        return _numpy_openblas()

    def matmul(self, a, b, out=None):
        ok = (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
              and a.dtype == b.dtype == np.float32 and a.shape[1] == b.shape[0]
              and a.shape[0] * a.shape[1] * b.shape[1] >= SMALL
              and a.strides[0] % 4 == 0 and a.strides[1] % 4 == 0)
        if ok and out is not None:
            ok = (type(out) is np.ndarray and out.dtype == np.float32 and out.flags.writeable
                  and out.shape == (a.shape[0], b.shape[1]) and _row_major(out)
                  and out.strides[0] >= 0 and not np.may_share_memory(out, a)
                  and not np.may_share_memory(out, b))
        if not ok:                         # small, or not float32: NumPy's (OpenBLAS runs
            return np.matmul(a, b, out=out)  # products under SMALL on one thread itself)
        if out is None:
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
        M, N = out.shape
        P = _packed.panel_count(N)
        if ((a.strides[1] == 4 and M >= 2 * _packed.MR and (P % 2 == 0 or P > 4))
                or _openblas_functions()[0] is None):
            return _packed.matmul(a, b, out, self.pool)
        # a transposed A (the weight gradients, dZ^T X: reading dZ^T a tile at a time crosses a
        # page at every k), few rows (the bias gradient, ones @ dZ) or a few panels that two
        # threads would share unevenly (a decoder's V = 65 columns: 2 + 1 panels, the last one
        # mostly padding): two halves, each on one of rnnkit's threads, on OpenBLAS held at one
        # thread
        if M >= max(N, 2 * _packed.MR):                    # halves of the longer side: a
            h = M // 2                                     # decoder's dW (65 x 256) took 0.5
            jobs = [(a[:h], b, out[:h]), (a[h:], b, out[h:])]     # ms in columns, 1.0 in rows
        else:
            h = N // 2
            jobs = [(a, b[:, :h], out[:, :h]), (a, b[:, h:], out[:, h:])]
        with _openblas_one_thread():
            self.pool.run(lambda x, y, z: np.matmul(x, y, out=z), jobs)
        return out

    def matmul_groups(self, groups) -> None:
        """Two groups of products ``[(a, b, out), ...]``, each group on one of rnnkit's
        threads, on OpenBLAS held at one thread: the weight gradients of a layer whose loop
        left ``dZ`` in a block for each thread (``nn/timeloop.py``), each thread its own
        block's."""
        def run(group):
            for a, b, out in group:
                np.matmul(a, b, out=out)
        with _openblas_one_thread():                 # the second group on the helper
            self.pool.run(run, [(groups[1],), (groups[0],)])


_ONE_THREAD = threading.Lock()
_holders = [0, None]                 # products holding OpenBLAS at one thread; the count before


@contextlib.contextmanager
def _openblas_one_thread():
    """NumPy's OpenBLAS held at one thread (a process-wide setting) while any product of a
    ``PackedBlas`` needs it, from whatever thread; the count before is put back by the last."""
    set_threads, get_threads = _openblas_functions()
    with _ONE_THREAD:
        if _holders[0] == 0:
            _holders[1] = get_threads()
            set_threads(1)
        _holders[0] += 1
    try:
        yield
    finally:
        with _ONE_THREAD:
            _holders[0] -= 1
            if _holders[0] == 0:
                set_threads(_holders[1])


@dataclasses.dataclass(frozen=True)
class NativeGemm:
    """A BLAS's ``cblas_sgemm`` and ``cblas_dgemm`` for compiled code to call by address
    (``nn/timeloop.py``), and whether its integers are 64-bit (``ilp64``)."""

    sgemm: int
    dgemm: int
    ilp64: bool
    scompute: int = 0         # MKL's cblas_?gemm_compute (B packed by ``MklBlas.pack_b``), or 0
    dcompute: int = 0


def _address(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


def _openblas_files():
    """Shared libraries that may be NumPy's OpenBLAS: those bundled with NumPy's wheels (beside
    the package, in ``numpy.libs`` or ``numpy/.dylibs``), then, on Linux, any BLAS that this
    process has loaded (a NumPy built against the system's)."""
    root = os.path.dirname(np.__file__)
    for folder in (root + ".libs", os.path.join(root, ".dylibs"), os.path.join(root, ".libs")):
        yield from sorted(glob.glob(os.path.join(folder, "*openblas*")))
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "blas" in line.rsplit("/", 1)[-1]}
    except OSError:
        loaded = set()
    yield from sorted(p for p in loaded if os.path.isabs(p))


@functools.cache
def _numpy_openblas_library():
    """``(lib, prefix, suffix, ilp64)`` of NumPy's OpenBLAS (the first library that has its
    ``cblas_sgemm`` and ``cblas_dgemm``), or None. NumPy's wheels carry a 64-bit-integer
    OpenBLAS whose symbols are prefixed ``scipy_`` and suffixed ``64_``; older ones or the
    system's are plain ``cblas_sgemm``."""
    for path in _openblas_files():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre, suf, ilp64 in (("scipy_", "64_", True), ("", "64_", True), ("scipy_", "", False),
                                ("", "", False)):
            if hasattr(lib, f"{pre}cblas_sgemm{suf}") and hasattr(lib, f"{pre}cblas_dgemm{suf}"):
                return lib, pre, suf, ilp64
    return None


@functools.cache
def _numpy_openblas():
    """``NativeGemm`` of NumPy's OpenBLAS, or None."""
    found = _numpy_openblas_library()
    if found is None:
        return None
    lib, pre, suf, ilp64 = found
    return NativeGemm(_address(getattr(lib, f"{pre}cblas_sgemm{suf}")),
                      _address(getattr(lib, f"{pre}cblas_dgemm{suf}")), ilp64)


@functools.cache
def _openblas_functions():
    """NumPy's OpenBLAS ``(set_num_threads, get_num_threads)`` (ctypes), or ``(None, None)``."""
    found = _numpy_openblas_library()
    if found is None:
        return None, None
    lib, pre, suf, _ = found
    names = (f"{pre}openblas_set_num_threads{suf}", f"{pre}openblas_get_num_threads{suf}")
    if not all(hasattr(lib, n) for n in names):
        return None, None
    return getattr(lib, names[0]), getattr(lib, names[1])


@functools.cache
def _omatcopy() -> dict:
    """NumPy's OpenBLAS ``cblas_somatcopy`` and ``cblas_domatcopy`` (ctypes) by dtype, or
    ``{}`` where they cannot be found."""
    found = _numpy_openblas_library()
    if found is None:
        return {}
    lib, pre, suf, ilp64 = found
    i, n, vp = ctypes.c_int, ctypes.c_int64 if ilp64 else ctypes.c_int, ctypes.c_void_p
    fns = {}
    for dt, ch, fl in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
        fn = getattr(lib, f"{pre}cblas_{ch}omatcopy{suf}", None)
        if fn is not None:       # (order, trans, rows, cols, alpha, a, lda, b, ldb)
            fn.argtypes, fn.restype = [i, i, n, n, fl, vp, n, vp, n], None
            fns[np.dtype(dt)] = fn
    return fns


def transpose_into(a, alpha: float, out) -> None:
    """``out[...] = alpha * a.T`` for ``a (m, n)`` and ``out (n, m)`` (``out`` may be a block of
    columns of a wider array): one pass of NumPy's OpenBLAS ``omatcopy`` where it can be found,
    else the array module in blocks of rows. A fused recurrent weight ``W_hh^T`` is made so at
    every step (``cells.Fused.WhT``): at H=256 the LSTM's took 0.08 ms so against 0.30 in
    blocks (2-core Xeon), each of its four gate blocks one call."""
    fn = _omatcopy().get(a.dtype) if isinstance(out, np.ndarray) else None
    if (fn is not None and a.dtype == out.dtype and a.size and _row_major(a)
            and _row_major(out) and out.shape == a.shape[::-1]):
        fn(_ROW, _TRANS, a.shape[0], a.shape[1], alpha, a.ctypes.data,
           a.strides[0] // a.itemsize, out.ctypes.data, out.strides[0] // out.itemsize)
        return
    xp = array_module(out)
    for i in range(0, a.shape[0], 64):
        xp.multiply(a[i:i + 64].T, alpha, out=out[:, i:i + 64])


def _row_major(a) -> bool:
    """Rows of contiguous items, each row a whole number of items after the last."""
    s = a.itemsize
    return ((a.shape[1] == 1 or a.strides[1] == s)
            and (a.shape[0] == 1 or (a.strides[0] % s == 0 and a.strides[0] >= a.shape[1] * s)))


def _mkl_candidates():
    """Where to look for ``libmkl_rt``: ``RNNKIT_MKL`` alone when set; else this environment
    (where ``pip install mkl`` puts it), the user's site outside a virtual environment, and
    last the system's library path."""
    env = os.environ.get("RNNKIT_MKL")
    if env:
        yield env
        return
    prefixes = [sys.prefix]
    if sys.prefix == sys.base_prefix and getattr(site, "USER_BASE", None):
        prefixes.append(site.USER_BASE)
    for pre in prefixes:
        for pat in ("lib/libmkl_rt.so*", "lib/libmkl_rt*.dylib", "Library/bin/mkl_rt*.dll"):
            yield from sorted(glob.glob(os.path.join(pre, pat)), reverse=True)
    found = ctypes.util.find_library("mkl_rt")
    if found:
        yield found


@functools.cache
def _load() -> tuple:
    """``(MklBlas or None, why not)``: MKL is a shared library, so it is loaded once per process."""
    error = "libmkl_rt not found (pip install 'rnnkit[mkl]')"
    for path in _mkl_candidates():
        try:
            if sys.platform == "win32" and os.path.isabs(path):
                # mkl_rt loads its other DLLs (threading, kernels) from its own folder
                os.add_dll_directory(os.path.dirname(path))
            return MklBlas(ctypes.CDLL(path), path), ""
        except (OSError, AttributeError) as e:
            error = f"{path}: {e}"
    return None, error


def load_mkl():
    """The MKL backend, or None with the reason in ``mkl_error()``."""
    return _load()[0]


def mkl_error() -> str:
    return _load()[1]


def get_blas(name: str = "auto", xp=np):
    """The products for arrays of module ``xp``: ``auto`` (MKL if present on the CPU and the
    CPU is Intel's, else the array module's matmul), ``numpy``, ``mkl`` or ``packed``
    (``PackedBlas``, needs numba; what ``auto`` becomes for a large enough model, see
    ``for_model``). With ``auto``, the environment variable ``RNNKIT_BLAS`` may choose one of
    the others instead; it speaks of the CPU only, so a layer on the GPU keeps CuPy's matmul
    whatever it says."""
    if name not in BLAS:
        raise ValueError(f"blas must be one of {BLAS}, got {name!r}")
    said = f"blas={name!r}"
    if name == "auto":
        name = os.environ.get("RNNKIT_BLAS", "auto") or "auto"
        if name not in BLAS:
            raise ValueError(f"RNNKIT_BLAS must be one of {BLAS}, got {name!r}")
        said = f"RNNKIT_BLAS={name}"
        if xp is not np:
            return NumpyBlas(xp)
    if xp is not np:
        if name in ("mkl", "packed"):
            raise ValueError(f"blas={name!r} needs the CPU (device='cpu')")
        return NumpyBlas(xp)
    if name == "packed":
        if not _packed.available():
            raise ValueError(f"{said} needs numba (pip install 'rnnkit[fast]')")
        return _packed_blas()
    if name == "numpy" or (name == "auto" and not intel_cpu()):
        return _NUMPY
    lib = load_mkl()
    if lib is None and name == "mkl":
        raise ValueError(f"{said} but MKL cannot be loaded: {mkl_error()}")
    return lib or _NUMPY


@functools.cache
def intel_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this is an Intel processor. MKL's fastest GEMM kernels are Intel's alone: on an
    AMD EPYC (Zen 4, AVX-512) MKL's small products ran slower than NumPy's OpenBLAS (the LSTM
    language model of ``benchmarks/bench_train.py`` trained 0.88x as fast with MKL), so
    ``auto`` takes MKL on Intel processors only. ``blas="mkl"`` takes it anywhere. Linux says
whose the processor is in ``cpuinfo``; elsewhere ``platform.processor()`` does."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:                                              # not Linux
        return "intel" in platform.processor().lower()


_NUMPY = NumpyBlas(np)


@functools.cache
def _packed_blas() -> PackedBlas:
    """One ``PackedBlas`` for the process: its helper thread is shared by every layer."""
    if not avx512_cpu():
        warnings.warn("blas='packed' on a processor without AVX-512: its kernel's tile is made "
                      "for 32 vector registers, and compiled for AVX2 it ran 2.6x slower than "
                      "OpenBLAS (blas='numpy' is likely faster here)", RuntimeWarning,
                      stacklevel=3)
    return PackedBlas()


PACKED_MIN_WEIGHTS = 1 << 16   # for_model: smaller W_hh (gates x H x H) stay on NumPy's BLAS


def for_model(name: str, hidden_size: int, gates: int = 4, device: str = "cpu",
              dtype=np.float32) -> str:
    """The products for a whole model (every layer of it: one library should do all the large
    products of a step, see above) whose recurrent layers have ``hidden_size`` units and
    ``gates`` gates (4 LSTM, 3 GRU, 1 RNN): ``name``, except that ``auto`` (with
    ``RNNKIT_BLAS`` unset or ``auto``) becomes ``packed`` for float32 on the CPU where
    ``auto_packs()`` and ``W_hh`` has ``gates * hidden_size**2 >= PACKED_MIN_WEIGHTS`` entries:
    the packed kernel's gain is in the per-step product by ``W_hh``, against the fixed costs of
    its two threads. On an Intel processor with MKL installed, ``auto`` stays MKL: on a 2-core
    Xeon (AVX-512; ``benchmarks/bench_train.py``, three to five runs each) MKL ran the H=256
    language models 1.01-1.09x (LSTM), 1.02-1.15x (GRU) and 1.09-1.79x (RNN) as fast as the
    packed kernel, and those of H=512 1.07-1.18x; the packed kernel won only at H=1024 with
    B=16 (1.18-1.24x PyTorch's speed against MKL's 0.94-1.25x). Without MKL there, the packed
    kernel ran 1.25-1.28x (LSTM) and 1.16-1.20x (GRU) as fast as OpenBLAS at H=256, 1.06-1.11x
    at H=512; the H=256 RNN 0.78-1.19x (and half OpenBLAS's speed at B=8).

    Measured on a 2-core AMD EPYC (Zen 4), side by side with OpenBLAS in the same process
    (``benchmarks/bench_train.py``, four to fourteen runs each): language models trained on
    the packed kernel 1.01-1.23x as fast with an H=256 LSTM (2^18 entries), 0.96-1.35x with an
    H=256 GRU (3 x 2^16; 1.53-1.80x PyTorch's speed, where OpenBLAS gave 1.33-1.81x),
    0.97-1.31x (1.10x typical) with H=512 LSTM, GRU and RNN, and 0.66-0.99x with min-char-rnn's
    H=100 RNN (``benchmarks/bench_minchar.py``), which stays on NumPy's BLAS. Since the
    compiled loop sums the gate gradients on either BLAS and a language model's first layer
    looks its input up (``recurrent.py``), the H=256 RNN (2^16 entries; 0.87-1.02x before)
    ran 0.98-1.38x as fast on the packed kernel over nine runs of 15 blocks (median 1.06x;
    its best step faster in all nine), the H=128 LSTM (2^16) 0.88-1.29x (best step faster in
    all three), GRUs of H=160-224 0.85-1.14x (best step faster in all four)."""
    if (name != "auto" or device != "cpu" or np.dtype(dtype) != np.float32
            or gates * hidden_size ** 2 < PACKED_MIN_WEIGHTS
            or os.environ.get("RNNKIT_BLAS", "auto") not in ("", "auto")
            or (intel_cpu() and load_mkl() is not None)):
        return name
    return "packed" if auto_packs() else name


def auto_packs() -> bool:
    """Whether the packed kernel may stand in for ``auto`` (``for_model``): numba is
    installed, the processor has AVX-512, which the kernel's tile is made for, and the process
    may run on two cores, which its loop over time shares."""
    return _packed.available() and avx512_cpu() and _cores() >= 2


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                        # not on Linux
        return os.cpu_count() or 1


@functools.cache
def avx512_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the processor has AVX-512 (``avx512f``), which the packed kernel is made for.
    Linux says so in ``cpuinfo``; elsewhere this answers False."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False
