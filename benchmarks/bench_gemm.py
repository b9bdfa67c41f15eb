"""The per-step matrix products of a recurrent layer: NumPy's BLAS against MKL (``rnnkit.blas``).

At every time step an LSTM multiplies its state by the recurrent weights, ``h W_hh^T``
(forward, ``(B, H) x (H, 4H)``) and ``dZ W_hh`` (backward, ``(B, 4H) x (4H, H)``): small products,
``B`` rows only, that run far below the GEMM peak. Each library is timed in its own blocks of
calls (``common.side_by_side``).

    python benchmarks/bench_gemm.py
"""
from __future__ import annotations

import numpy as np

from rnnkit import blas
from common import finish, parser, side_by_side

SHAPES = [("forward h W_hh^T", 32, 256, 1024), ("backward dZ W_hh", 32, 1024, 256),
          ("forward h W_hh^T", 64, 512, 2048), ("backward dZ W_hh", 64, 2048, 512)]


def compare(name, M, K, N, calls=200, rounds=5) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)

    def loop(fn):
        def run():
            for _ in range(calls):
                fn()
        return run
    fns = {"numpy": loop(lambda: np.matmul(a, w, out=out))}
    mkl = blas.load_mkl()
    if mkl is not None:
        fns["mkl"] = loop(lambda: mkl.matmul(a, w, out=out))
    med = side_by_side(fns, rounds=rounds, warmup=2)
    row = {"product": name, "M": M, "K": K, "N": N}
    for lib, sec in med.items():
        us = sec / calls * 1e6
        row[f"{lib}_us"], row[f"{lib}_gflops"] = us, 2 * M * K * N / us / 1e3
    if mkl is not None:
        row["speedup"] = row["numpy_us"] / row["mkl_us"]
    return row


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    if blas.load_mkl() is None:
        print(f"MKL is not installed ({blas.mkl_error()}); timing NumPy's BLAS alone")
    rows = []
    for shape in SHAPES:
        r = compare(*shape)
        rows.append(r)
        line = (f"{r['product']:17s} ({r['M']}, {r['K']}) x ({r['K']}, {r['N']}): NumPy "
                f"{r['numpy_us']:6.1f} us ({r['numpy_gflops']:3.0f} GFLOP/s)")
        if "speedup" in r:
            line += (f" | MKL {r['mkl_us']:6.1f} us ({r['mkl_gflops']:3.0f} GFLOP/s) | "
                     f"{r['speedup']:.2f}x")
        print(line)
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
