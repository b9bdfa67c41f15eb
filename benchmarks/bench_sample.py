"""Sampling speed: microseconds per generated token, rnnkit vs PyTorch (CPU), batch 1 and batched.

The model is the language model of the training benchmark (Embedding(65, 64) -> 2 x LSTM(256)
-> Linear(256, 65)). Both sides do the same work per token: one recurrent step, the output layer,
a softmax with temperature and a draw from it. PyTorch runs its default CPU path
(``nn.LSTM`` on one step with the state carried, under ``torch.no_grad()``).

    python benchmarks/bench_sample.py
"""
from __future__ import annotations

import time

import numpy as np

from rnnkit.generate import SampleSettings, generate_batch
from rnnkit.models.language_model import LanguageModel, LMConfig
from common import finish, parser


def rnnkit_us_per_token(cell="lstm", H=256, L=2, V=65, E=64, n=2000, batch=1) -> float:
    model = LanguageModel(LMConfig(vocab_size=V, cell=cell, embedding_size=E, hidden_size=H,
                                   num_layers=L, dropout=0.0), rng=np.random.default_rng(0)).eval()
    settings = SampleSettings(length=n, temperature=0.8)
    generate_batch(model, [1], SampleSettings(length=50), np.random.default_rng(0), num_samples=batch)
    t0 = time.perf_counter()
    for _ in generate_batch(model, [1], settings, np.random.default_rng(1), num_samples=batch,
                            stream=True):
        pass
    return (time.perf_counter() - t0) / n * 1e6


def torch_us_per_token(cell="lstm", H=256, L=2, V=65, E=64, n=2000, batch=1) -> float:
    import torch
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    emb, rnn, lin = torch.nn.Embedding(V, E), rnn_cls(E, H, L, batch_first=True), torch.nn.Linear(H, V)
    g = torch.Generator().manual_seed(1)

    def run(steps):
        x, state = torch.ones(batch, 1, dtype=torch.long), None
        with torch.no_grad():
            for _ in range(steps):
                out, state = rnn(emb(x), state)
                p = torch.softmax(lin(out[:, -1]) / 0.8, dim=-1)
                x = torch.multinomial(p, 1, generator=g)
    run(50)
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--tokens", type=int, default=2000)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    rows = []
    for batch in (1, 64):
        ours = rnnkit_us_per_token(n=args.tokens, batch=batch)
        theirs = torch_us_per_token(n=args.tokens, batch=batch)
        rows.append({"batch": batch, "rnnkit_us_per_step": ours, "torch_us_per_step": theirs,
                     "rnnkit_us_per_token": ours / batch, "ratio": theirs / ours})
        print(f"batch {batch:3d}: rnnkit {ours:8.1f} us/step ({ours / batch:7.2f} us/token) | "
              f"torch {theirs:8.1f} us/step | ratio {theirs / ours:.1f}x")
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
