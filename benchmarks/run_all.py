"""Run every benchmark, rnnkit beside PyTorch, and write benchmarks/results/results.{json,md}.

    python benchmarks/run_all.py            # or: make bench (installs the CPU build of torch)

The machine is shared and noisy: read the ratios, which are measured side by side in one run,
not the absolute times.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

import bench_gemm
import bench_memory
import bench_minchar
import bench_sample
import bench_scaling
import bench_train

OUT = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch
    from rnnkit import blas
    from rnnkit.nn import fused
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "numba": fused.available(), "blas": blas.get_blas().name,
            "blas_large_lm": blas.get_blas(blas.for_model("auto", 256, 4)).name,
            "packed_min_weights": blas.PACKED_MIN_WEIGHTS,
            "mkl": blas.load_mkl().version() if blas.load_mkl() else "not installed",
            "date": time.strftime("%Y-%m-%d %H:%M")}


# Each table of the report: its title, the JSON key of its rows, and (header, cell) columns.
# The first column is left-aligned, the rest right-aligned.
TABLES = [
    ("Training throughput (tokens/s; ratio > 1: rnnkit faster)", "train", [
        ("cell", "{cell}"), ("H", "{H}"), ("B", "{B}"), ("T", "{T}"),
        ("rnnkit", "{rnnkit_tok_s:,.0f}"), ("PyTorch", "{torch_tok_s:,.0f}"),
        ("ratio", "{ratio:.2f}x"), ("of best steps", "{ratio_best:.2f}x"),
        ("rnnkit on NumPy's BLAS", "{numpy_blas_ratio:.2f}x"),
        ("on packed", "{packed_ratio:.2f}x"), ("on MKL", "{mkl_ratio:.2f}x"),
        ("share of GEMM peak: rnnkit", "{peak_share:.0%}"),
        ("in products done", "{done_peak_share:.0%}"), ("PyTorch", "{torch_peak_share:.0%}"),
        ("rnnkit, of the highest peak", "{peak_share_vs_highest:.0%}")]),
    ("One time step's matrix product (microseconds, GFLOP/s): NumPy's OpenBLAS on 2 threads and "
     "on 1, MKL (its GEMM, and its product by W packed once, as the loop over time takes it), "
     "and rnnkit's packed kernel (blas='packed') on 1 core and on 2", "gemm", [
        ("product", "{product}"), ("M", "{M}"), ("K", "{K}"), ("N", "{N}"),
        ("NumPy", "{numpy_us:.1f}"), ("GFLOP/s", "{numpy_gflops:.0f}"),
        ("NumPy 1 thread", "{numpy_1t_us:.1f}"), ("MKL", "{mkl_us:.1f}"),
        ("GFLOP/s", "{mkl_gflops:.0f}"), ("MKL, W packed", "{mkl_packed_us:.1f}"),
        ("GFLOP/s", "{mkl_packed_gflops:.0f}"), ("packed 1 core", "{packed_1t_us:.1f}"),
        ("GFLOP/s", "{packed_1t_gflops:.0f}"), ("packed 2 cores", "{packed_2t_us:.1f}"),
        ("GFLOP/s", "{packed_2t_gflops:.0f}")]),
    ("Sampling (2 x 256 LSTM, vocabulary 65)", "sample", [
        ("batch", "{batch}"), ("rnnkit us/step", "{rnnkit_us_per_step:.1f}"),
        ("us/token", "{rnnkit_us_per_token:.2f}"), ("PyTorch us/step", "{torch_us_per_step:.1f}"),
        ("ratio", "{ratio:.1f}x")]),
    ("min-char-rnn's job (vanilla RNN, hidden 100, 25 steps, Adagrad)", "minchar", [
        ("run", "{name}"), ("tokens/s", "{tokens_per_s:,.0f}"), ("vs min-char-rnn", "{ratio:.1f}x")]),
    ("Peak memory of training (MB above the process before the model is built)", "memory", [
        ("cell", "{cell}"), ("H", "{H}"), ("B", "{B}"), ("T", "{T}"),
        ("rnnkit", "{rnnkit_step_mb:.1f}"), ("PyTorch", "{torch_step_mb:.1f}"),
        ("rnnkit / PyTorch", "{ratio:.2f}"), ("rnnkit on NumPy's BLAS", "{numpy_blas_step_mb:.1f}"),
        ("/ PyTorch", "{numpy_blas_ratio:.2f}")]),
    ("How cost grows (LSTM LM, rnnkit)", "scaling", [
        ("change", "{change}"), ("H", "{H}"), ("B", "{B}"), ("T", "{T}"),
        ("us/token", "{us_per_token:.2f}"), ("vs base", "{vs_base:.2f}x"), ("GFLOP/s", "{gflops:.0f}")]),
]


def _cell(fmt: str, row: dict) -> str:
    """``fmt`` filled from ``row``; "n/a" where the row lacks a figure (MKL not installed)."""
    try:
        return fmt.format(**row)
    except KeyError:
        return "n/a"


def _packed_from(entries: int) -> str:
    """"N entries or more (gates x H^2: ...)": the smallest H that takes the packed kernel."""
    first = {c: math.ceil(math.sqrt(entries / g)) for c, g in (("an LSTM", 4), ("a GRU", 3),
                                                                ("an RNN", 1))}
    return (f"{entries:,} entries or more (gates x H^2: "
            + ", ".join(f"{c} from H = {h}" for c, h in first.items()) + ")")


def _peaks(res: dict) -> str:
    """The GEMM peaks of a run's training rows, as the report's header gives them."""
    med = [r["gemm_peak_gflops"] for r in res.get("train", [])]
    if not med:
        return "not measured"
    return (f"{min(med):.0f}-{max(med):.0f} GFLOP/s (medians of each configuration), the "
            f"highest block {res['gemm_peak_highest_gflops']:.0f}")


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# rnnkit benchmarks ({m['date']})", "",
             f"{m['cpu']}, {m['cores']} cores; Python {m['python']}, NumPy {m['numpy']}, "
             f"PyTorch {m['torch']} (2 threads), numba kernels: {m['numba']}; rnnkit's "
             f"matrix products: {m['blas']} for a layer's `auto` (MKL, "
             f"{'not installed' if m['mkl'] == 'not installed' else 'installed: ' + m['mkl']},"
             f" is taken on Intel processors only), {m.get('blas_large_lm', m['blas'])} in a "
             f"language model whose W_hh has {_packed_from(m.get('packed_min_weights', 3 << 16))}. "
             f"float32 GEMM peak (four products of order 1024 on NumPy's BLAS, timed in turns "
             f"with each configuration's steps): {_peaks(res)}."]
    for title, key, columns in TABLES:
        if not res.get(key):
            continue
        align = ["---"] + ["---:"] * (len(columns) - 1)
        lines += ["", f"## {title}", "", "| " + " | ".join(h for h, _ in columns) + " |",
                  "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_cell(fmt, r) for _, fmt in columns) + " |"
                  for r in res[key]]
    return "\n".join(lines) + "\n"


def main():
    import torch
    torch.set_num_threads(2)
    OUT.mkdir(exist_ok=True)
    res = {"machine": machine(), "train": []}
    print("== training throughput")
    for cell in ("lstm", "gru", "rnn"):
        for H, B, T in ((256, 32, 64), (512, 64, 100)):
            r = bench_train.compare(cell, H=H, B=B, T=T, reps=9 if H == 256 else 5)
            res["train"].append(r)
            print(f"{cell} H={H}: ratio {r['ratio']:.2f}x (best steps {r['ratio_best']:.2f}x)")
    # each row's shares against the peak timed in turns with its own steps (add_shares)
    res["gemm_peak_highest_gflops"] = highest = max(r["gemm_peak_best_gflops"]
                                                    for r in res["train"])
    for r in res["train"]:
        bench_train.add_shares(r, highest)
        print(f"{r['cell']} H={r['H']}: {r['peak_share']:.0%} of the GEMM peak "
              f"({r['done_peak_share']:.0%} in products done, {r['peak_share_vs_highest']:.0%} "
              f"of the highest), PyTorch {r['torch_peak_share']:.0%}")
    print("== one step's matrix product")
    res["gemm"] = bench_gemm.main([])
    print("== sampling")
    res["sample"] = bench_sample.main([])
    print("== min-char-rnn")
    res["minchar"] = bench_minchar.main([])
    print("== memory")
    res["memory"] = bench_memory.main([])
    print("== scaling")
    res["scaling"] = bench_scaling.main([])
    (OUT / "results.json").write_text(json.dumps(res, indent=2))
    (OUT / "results.md").write_text(markdown(res))
    print(f"wrote {OUT / 'results.json'} and {OUT / 'results.md'}")


if __name__ == "__main__":
    main()
