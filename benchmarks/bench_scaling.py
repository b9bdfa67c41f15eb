"""How the cost of a training step grows: time per token as T, B and H double (rnnkit, LSTM LM).

Expected: time per token flat in T (the work is linear in T), falling or flat in B (bigger
matrix products are more efficient), and roughly 4x per doubling of H (quadratic work per token),
less where small products ran below the machine's peak.

    python benchmarks/bench_scaling.py
"""
from __future__ import annotations


from bench_train import compare
from common import finish, parser

BASE = dict(H=256, B=32, T=64)


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--cell", default="lstm")
    args = ap.parse_args(argv)
    rows = []
    configs = [("base", BASE)]
    for key in ("T", "B", "H"):
        for mult in (2, 4):
            configs.append((f"{key} x{mult}", {**BASE, key: BASE[key] * mult}))
    base_us = None
    for name, c in configs:
        r = compare(args.cell, H=c["H"], B=c["B"], T=c["T"], reps=3, with_torch=False,
                    peak_n=0)
        us = r["rnnkit_ms"] * 1e3 / (c["B"] * c["T"])
        base_us = base_us or us
        rows.append({"change": name, **c, "us_per_token": us, "vs_base": us / base_us,
                     "gflops": r["rnnkit_gflops"]})
        print(f"{name:7s} H={c['H']:4d} B={c['B']:4d} T={c['T']:4d}: {us:7.2f} us/token "
              f"({us / base_us:5.2f}x base, {r['rnnkit_gflops']:.0f} GFLOP/s)")
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
