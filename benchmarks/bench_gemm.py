"""The per-step matrix products of a recurrent layer: NumPy's BLAS, MKL, and a packed kernel.

At every time step an LSTM multiplies its state by the recurrent weights, ``h W_hh^T``
(forward, ``(B, H) x (H, 4H)``) and ``dZ W_hh`` (backward, ``(B, 4H) x (4H, H)``): small products,
``B`` rows only, that run far below the GEMM peak. Timed here:

- NumPy's OpenBLAS on its two threads (what rnnkit uses), and on one thread;
- MKL (``rnnkit[mkl]``), when it is installed: its GEMM, and its product by weights it has
  packed once (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``), which the loop over time
  takes on MKL;
- rnnkit's own packed kernel (``rnnkit.packed``, ``blas="packed"``; needs numba): the weights
  packed once, as oneDNN keeps them, where a general GEMM re-packs them at every call; on one
  core, and with the panels split between two threads that run side by side with no
  synchronisation between calls (an upper bound: the loop over time adds a barrier a step).

Each library is timed in its own blocks of calls (``common.side_by_side``).

    python benchmarks/bench_gemm.py
"""
from __future__ import annotations

import threading

import numpy as np

from rnnkit import blas, packed
from common import finish, parser, side_by_side

SHAPES = [("forward h W_hh^T", 32, 256, 1024), ("backward dZ W_hh", 32, 1024, 256),
          ("forward h W_hh^T", 64, 512, 2048), ("backward dZ W_hh", 64, 2048, 512)]
LIBS = (("numpy", "NumPy"), ("numpy_1t", "NumPy 1 thread"), ("mkl", "MKL"),
        ("mkl_packed", "MKL, W packed"), ("packed_1t", "packed 1 core"),
        ("packed_2t", "packed 2 cores"))


if packed.available():
    import numba

    @numba.njit(nogil=True)
    def packed_calls(a, panels, out, p0, p1, edge, calls):
        """``packed.gemm`` ``calls`` times in a row (the timing loop, without Python)."""
        for _ in range(calls):
            packed.gemm(a, panels, out, p0, p1, 0, a.shape[0], False, edge)


def compare(name, M, K, N, calls=200, rounds=5) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    want = a @ w

    def loop(fn):
        def run():
            for _ in range(calls):
                fn()
        return run
    fns, errors = {"numpy": loop(lambda: np.matmul(a, w, out=out))}, {}
    set_threads, get_threads = blas._openblas_functions()
    if set_threads is not None:
        def one_thread():
            previous = get_threads()
            set_threads(1)
            try:
                loop(lambda: np.matmul(a, w, out=out))()
            finally:
                set_threads(previous)
        fns["numpy_1t"] = one_thread
    mkl = blas.load_mkl()
    if mkl is not None:
        fns["mkl"] = loop(lambda: mkl.matmul(a, w, out=out))
        w_packed, outm = mkl.pack_b(w, M), np.empty((M, N), np.float32)
        mkl.matmul_packed(a, w_packed, outm)
        errors["mkl_packed"] = float(np.abs(outm - want).max() / np.abs(want).max())
        fns["mkl_packed"] = loop(lambda: mkl.matmul_packed(a, w_packed, outm))
    if packed.available():
        panels = packed.pack(w)
        P = panels.shape[0]
        outp = np.empty((M, N), np.float32)
        edges = [np.empty((packed.MR, packed.NR), np.float32) for _ in range(2)]
        packed_calls(a, panels, outp, 0, P, edges[0], 1)
        errors["packed"] = float(np.abs(outp - want).max() / np.abs(want).max())
        fns["packed_1t"] = lambda: packed_calls(a, panels, outp, 0, P, edges[0], calls)

        def two_cores():
            half = threading.Thread(target=packed_calls,
                                    args=(a, panels, outp, P // 2, P, edges[1], calls))
            half.start()
            packed_calls(a, panels, outp, 0, P // 2, edges[0], calls)
            half.join()
        fns["packed_2t"] = two_cores
    med = side_by_side(fns, rounds=rounds, warmup=2)
    row = {"product": name, "M": M, "K": K, "N": N}
    for lib, sec in med.items():
        us = sec / calls * 1e6
        row[f"{lib}_us"], row[f"{lib}_gflops"] = us, 2 * M * K * N / us / 1e3
    if mkl is not None:
        row["speedup"] = row["numpy_us"] / row["mkl_us"]
    for name, err in errors.items():
        row[f"{name}_rel_error"] = err
        assert err < 1e-5, f"the {name} product is wrong: {err:.1e}"
    return row


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    if blas.load_mkl() is None:
        print(f"MKL is not installed ({blas.mkl_error()})")
    if not packed.available():
        print("numba is not installed: no packed kernel")
    rows = []
    for shape in SHAPES:
        r = compare(*shape)
        rows.append(r)
        print(f"{r['product']:17s} ({r['M']}, {r['K']}) x ({r['K']}, {r['N']}):"
              + "".join(f" | {label} {r[k + '_us']:6.1f} us ({r[k + '_gflops']:3.0f} GFLOP/s)"
                        for k, label in LIBS if k + "_us" in r))
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
