"""Training throughput, rnnkit vs PyTorch (CPU), side by side in one process.

One training step of a language model: Embedding(V, E) -> num_layers x {LSTM, GRU, RNN} (H) ->
Linear(H, V) -> cross-entropy -> Adam, on a batch of B x T random tokens, float32. The libraries
take turns in blocks of steps (``common.side_by_side``) so that machine noise hits all; the ratio
of medians is what to read (> 1: rnnkit is faster). rnnkit runs with its products on NumPy's
BLAS, on its own packed kernel (``blas="packed"``, with numba) and, when ``rnnkit[mkl]`` is
installed, on MKL too; its headline figure is what the model takes with ``blas="auto"``
(``blas.for_model``: the packed kernel where ``W_hh`` has 2^16 entries or more, an LSTM from
H = 128 on, a GRU from 148, an RNN from 256, on an AVX-512 processor that is not Intel's).

    python benchmarks/bench_train.py                     # the core issue's configurations
    python benchmarks/bench_train.py --cells lstm --hidden 512 --batch 64 --bptt 100
"""
from __future__ import annotations

import statistics

import numpy as np

from rnnkit import blas, packed
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.optim import Adam
from common import finish, parser, timed_in_turns


def rnnkit_step(cell, V, E, H, L, B, T, seed=0, blas_name="auto"):
    rng = np.random.default_rng(seed)
    model = LanguageModel(LMConfig(vocab_size=V, cell=cell, embedding_size=E, hidden_size=H,
                                   num_layers=L, dropout=0.0), rng=rng, blas=blas_name)
    opt = Adam(model.params, model.grads, lr=1e-3)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))

    def step():
        model.loss(x, y)
        model.backward()
        opt.step()
    return step, model


def torch_step(cell, V, E, H, L, B, T, seed=0, device="cpu"):
    """The same step in PyTorch; on ``device='cuda'`` it waits for the GPU before returning."""
    import torch
    torch.manual_seed(seed)
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    emb, rnn, lin = torch.nn.Embedding(V, E), rnn_cls(E, H, L, batch_first=True), torch.nn.Linear(H, V)
    emb, rnn, lin = emb.to(device), rnn.to(device), lin.to(device)
    params = [*emb.parameters(), *rnn.parameters(), *lin.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    x, y = x.to(device), y.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=False)
        out, _ = rnn(emb(x))
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        sync()
    return step


GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def matmul_flops(cell, V, E, H, L, B, T) -> float:
    """Matrix-product FLOPs of one training step (forward + backward), the work a GEMM does."""
    G = GATES[cell] * H
    M = B * T
    f = 0.0
    for k in range(L):
        D = E if k == 0 else H
        f += 2 * M * D * G + 2 * M * H * G            # forward: input projection, recurrence
        f += 4 * M * H * G + 4 * M * D * G            # backward: dh, dW_hh, dW_ih, dx
    f += 2 * M * H * V * 3                            # decoder forward, dW, dX
    return f


def performed_flops(cell, V, E, H, L, B, T, model) -> float:
    """``matmul_flops`` less what rnnkit's ``model`` does not compute: where its first layer
    looks its input up (``LanguageModel``, ``recurrent.py``), the input projection, ``dX`` and
    ``dW_ih`` of layer 0 take the ``V`` rows of the table, not the ``B T`` looked-up ones."""
    f = matmul_flops(cell, V, E, H, L, B, T)
    if model.rnn._folds(V, B, T):
        f -= 6 * (B * T - V) * E * GATES[cell] * H
    return f


def add_shares(row: dict, highest: float | None = None) -> None:
    """The shares of the GEMM peak of a ``compare`` row: rnnkit's, over the counted products
    and over those it does, and PyTorch's, each a median step against the median of the peak's
    blocks timed in turns with the steps (``gemm_block``): the two medians saw the same machine,
    where a median step beside a peak taken apart mixes a busy spell with a quiet one. With
    ``highest`` (GFLOP/s, the highest peak measured through a run), also rnnkit's median step
    against it, lower than its share of the median block."""
    peak = row["gemm_peak_gflops"]
    row["peak_share"] = row["rnnkit_gflops"] / peak
    row["done_peak_share"] = row["rnnkit_done_gflops"] / peak
    if "torch_gflops" in row:
        row["torch_peak_share"] = row["torch_gflops"] / peak
    if highest is not None:
        row["highest_peak_gflops"] = highest
        row["peak_share_vs_highest"] = row["rnnkit_gflops"] / highest


def gemm_block(n=1024, count=4):
    """``(fn, flops)``: ``fn`` does ``count`` float32 GEMMs of order ``n`` with NumPy's BLAS
    (about a training step's time at H=256), for the GEMM peak timed in turns with the steps."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b, c = a.copy(), np.empty_like(a)

    def fn():
        for _ in range(count):
            np.matmul(a, b, out=c)
    return fn, 2.0 * n ** 3 * count


def compare(cell, V=65, E=64, H=256, L=2, B=32, T=64, reps=7, warmup=2, with_torch=True,
            peak_n=1024) -> dict:
    """One configuration: ``reps`` rounds of 2 timed steps each (``common.timed_in_turns``).

    rnnkit runs on NumPy's BLAS, on its packed kernel (with numba) and, when MKL loads, on MKL
    too; "rnnkit" is whichever ``blas="auto"`` takes on this machine. A block of GEMMs of order
    ``peak_n`` takes its turn in every round too, the GEMM peak for ``add_shares``
    (``gemm_peak_gflops``, the median block, and ``gemm_peak_best_gflops``); ``peak_n=0``
    leaves it out."""
    step, model = rnnkit_step(cell, V, E, H, L, B, T, blas_name="numpy")
    fns = {"numpy": step}
    if packed.available():
        fns["packed"] = rnnkit_step(cell, V, E, H, L, B, T, blas_name="packed")[0]
    if blas.load_mkl() is not None:
        fns["mkl"] = rnnkit_step(cell, V, E, H, L, B, T, blas_name="mkl")[0]
    if with_torch:
        fns["theirs"] = torch_step(cell, V, E, H, L, B, T)
    if peak_n:
        fns["gemm"], gemm_flops = gemm_block(peak_n)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = timed_in_turns(fns, rounds=reps)
    med = {name: statistics.median(t) for name, t in times.items()}
    auto = blas.get_blas(blas.for_model("auto", H, GATES[cell])).name    # what the model takes itself
    flops = matmul_flops(cell, V, E, H, L, B, T)
    row = {"cell": cell, "H": H, "layers": L, "B": B, "T": T, "V": V, "E": E, "blas": auto}
    for key, name in (("rnnkit", auto), ("numpy_blas", "numpy"), ("packed", "packed"),
                      ("mkl", "mkl")):
        if name in med:
            row.update({f"{key}_ms": med[name] * 1e3, f"{key}_tok_s": B * T / med[name]})
            if with_torch:
                row[f"{key}_ratio"] = med["theirs"] / med[name]
    if peak_n:                                                           # see add_shares
        row["gemm_peak_gflops"] = gemm_flops / med["gemm"] / 1e9
        row["gemm_peak_best_gflops"] = gemm_flops / min(times["gemm"]) / 1e9
    row["rnnkit_gflops"] = flops / med[auto] / 1e9
    row["rnnkit_done_gflops"] = performed_flops(cell, V, E, H, L, B, T, model) / med[auto] / 1e9
    if with_torch:
        mt = med["theirs"]
        row.update(torch_ms=mt * 1e3, torch_tok_s=B * T / mt, ratio=row.pop("rnnkit_ratio"),
                   torch_gflops=flops / mt / 1e9,
                   # the best step of each, a second view on a noisy machine: the median of a
                   # few blocks moves with the machine's load, the best step much less
                   ratio_best=min(times["theirs"]) / min(times[auto]))
    return row


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [compare(cell, H=args.hidden, B=args.batch, T=args.bptt, reps=args.reps)
            for cell in args.cells]
    highest = max(r["gemm_peak_best_gflops"] for r in rows)
    print("float32 GEMM peak, timed in turns with the steps: "
          + ", ".join(f"{r['cell']} {r['gemm_peak_gflops']:.0f}" for r in rows)
          + f" GFLOP/s (medians; the highest block {highest:.0f})")
    for r in rows:
        add_shares(r, highest)
        print(f"{r['cell']:4s} H={r['H']} B={r['B']} T={r['T']}: rnnkit ({r['blas']}) "
              f"{r['rnnkit_tok_s']:8,.0f} tok/s "
              f"({r['rnnkit_ms']:6.1f} ms, {r['peak_share']:.0%} of peak, "
              f"{r['done_peak_share']:.0%} in products done, "
              f"{r['peak_share_vs_highest']:.0%} of the highest) | torch "
              f"{r['torch_tok_s']:8,.0f} tok/s ({r['torch_ms']:6.1f} ms, "
              f"{r['torch_peak_share']:.0%}) | ratio {r['ratio']:.2f}x "
              f"(best steps {r['ratio_best']:.2f}x)"
              + "".join(f" | {name}: {r[k + '_tok_s']:8,.0f} tok/s, ratio {r[k + '_ratio']:.2f}x"
                        for k, name in (("numpy_blas", "NumPy's BLAS"), ("packed", "packed"),
                                        ("mkl", "MKL"))
                        if k + "_tok_s" in r))
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
