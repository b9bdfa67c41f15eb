"""GPU training throughput: rnnkit on CuPy vs PyTorch's cuDNN, side by side in one process.

The language-model training step of ``bench_train.py`` (Embedding -> 2 x {LSTM, GRU, RNN} ->
Linear -> cross-entropy -> Adam, float32) on ``device='cuda'``, against the same model in
PyTorch on the GPU (cuDNN's fused RNNs). Both take turns in blocks of steps
(``common.side_by_side``), the device synchronised at the end of every step; the ratio of
medians is what to read (> 1: rnnkit is faster).

    python benchmarks/bench_gpu.py                        # H=512, B=64, T=100, all three cells
    python benchmarks/bench_gpu.py --cells lstm --hidden 1024

Needs CuPy (pip install 'rnnkit[gpu]'), a CUDA build of PyTorch and an NVIDIA GPU; without them it
says so and exits with status 0 and no rows.
"""
from __future__ import annotations

import numpy as np

from bench_train import torch_step
from common import finish, parser, side_by_side
from rnnkit.backend import cuda_available
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.optim import Adam


def rnnkit_gpu_step(cell, V, E, H, L, B, T, seed=0):
    import cupy
    rng = np.random.default_rng(seed)
    model = LanguageModel(LMConfig(vocab_size=V, cell=cell, embedding_size=E, hidden_size=H,
                                   num_layers=L, dropout=0.0), rng=rng, device="cuda")
    opt = Adam(model.params, model.grads, lr=1e-3)
    x = cupy.asarray(rng.integers(0, V, (B, T)))
    y = cupy.asarray(rng.integers(0, V, (B, T)))

    def step():
        loss = model.loss(x, y)
        model.backward()
        opt.step()
        cupy.cuda.Device().synchronize()
        return loss
    return step


def compare(cell, V=65, E=64, H=512, L=2, B=64, T=100, reps=10, warmup=3) -> dict:
    ours = rnnkit_gpu_step(cell, V, E, H, L, B, T)
    theirs = torch_step(cell, V, E, H, L, B, T, device="cuda")
    for _ in range(warmup):
        ours()
        theirs()
    med = side_by_side({"ours": ours, "theirs": theirs}, rounds=reps)
    mo, mt = med["ours"], med["theirs"]
    return {"cell": cell, "H": H, "layers": L, "B": B, "T": T, "rnnkit_ms": mo * 1e3,
            "torch_ms": mt * 1e3, "rnnkit_tok_s": B * T / mo, "torch_tok_s": B * T / mt,
            "ratio": mt / mo}


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=100)
    args = ap.parse_args(argv)
    try:
        import torch
        has_torch_gpu = torch.cuda.is_available()
    except ImportError:
        has_torch_gpu = False
    if not (cuda_available() and has_torch_gpu):
        print("no GPU run: needs CuPy, a CUDA build of PyTorch and an NVIDIA GPU")
        return finish([], args.json)
    print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}")
    rows = []
    for cell in args.cells:
        r = compare(cell, H=args.hidden, B=args.batch, T=args.bptt)
        rows.append(r)
        print(f"{cell:4s} H={r['H']} B={r['B']} T={r['T']}: rnnkit {r['rnnkit_tok_s']:10,.0f} tok/s "
              f"({r['rnnkit_ms']:6.1f} ms) | torch cuDNN {r['torch_tok_s']:10,.0f} tok/s "
              f"({r['torch_ms']:6.1f} ms) | ratio {r['ratio']:.2f}x")
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
