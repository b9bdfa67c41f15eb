"""min-char-rnn's own job, rnnkit vs the classic loop: a vanilla RNN, hidden 100, 25 steps, Adagrad.

The baseline is min-char-rnn's algorithm (Karpathy, 2015) implemented here the way it does it: batch 1, column vectors, one-hot inputs, a Python loop over time for forward and
backward, per-step weight gradients, Adagrad with lr 0.1 and clipping to [-5, 5]. rnnkit trains
the same model (one-hot input is an embedding lookup; Wxh/Whh/Why are RNN and Linear weights) on
B parallel streams, which is where its speed comes from.

    python benchmarks/bench_minchar.py
"""
from __future__ import annotations

import time

import numpy as np

from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.optim import Adagrad, clip_grad_value
from common import finish, parser


def minchar_tokens_per_s(V=65, H=100, T=25, steps=200, seed=0) -> float:
    """The classic batch-1 loop (float64, as the original)."""
    rng = np.random.default_rng(seed)
    Wxh, Whh, Why = (rng.standard_normal(s) * 0.01 for s in ((H, V), (H, H), (V, H)))
    bh, by = np.zeros((H, 1)), np.zeros((V, 1))
    params = [Wxh, Whh, Why, bh, by]
    mem = [np.zeros_like(p) for p in params]
    data = rng.integers(0, V, T * steps + 1)
    hprev = np.zeros((H, 1))

    def loss_fun(inputs, targets, hprev):
        xs, hs, ps = {}, {-1: hprev}, {}
        loss = 0.0
        for t in range(len(inputs)):
            xs[t] = np.zeros((V, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
            y = Why @ hs[t] + by
            ps[t] = np.exp(y - y.max()) / np.sum(np.exp(y - y.max()))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby, dhnext = np.zeros_like(bh), np.zeros_like(by), np.zeros_like(hprev)
        for t in reversed(range(len(inputs))):
            dy = ps[t].copy()
            dy[targets[t]] -= 1
            dWhy += dy @ hs[t].T
            dby += dy
            dh = Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = Whh.T @ dhraw
        grads = [dWxh, dWhh, dWhy, dbh, dby]
        for g in grads:
            np.clip(g, -5, 5, out=g)
        return loss, grads, hs[len(inputs) - 1]

    t0 = time.perf_counter()
    for k in range(steps):
        inputs, targets = data[k * T:(k + 1) * T], data[k * T + 1:(k + 1) * T + 1]
        _, grads, hprev = loss_fun(inputs, targets, hprev)
        for p, g, m in zip(params, grads, mem):
            m += g * g
            p += -0.1 * g / np.sqrt(m + 1e-8)
    return steps * T / (time.perf_counter() - t0)


def rnnkit_tokens_per_s(V=65, H=100, T=25, B=256, steps=30, dtype="float32", seed=0) -> float:
    """The same model and optimiser, B streams at once."""
    rng = np.random.default_rng(seed)
    model = LanguageModel(LMConfig(vocab_size=V, cell="rnn", embedding_size=H, hidden_size=H,
                                   num_layers=1, dropout=0.0, dtype=dtype), rng=rng)
    opt = Adagrad(model.params, model.grads, lr=0.1, eps=1e-8)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    for _ in range(3):
        model.loss(x, y)
        model.backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.loss(x, y)
        model.backward()
        clip_grad_value(model.grads, 5.0)
        opt.step()
    return steps * B * T / (time.perf_counter() - t0)


def main(argv=None):
    ap = parser(__doc__)
    args = ap.parse_args(argv)
    base = minchar_tokens_per_s()
    rows = [{"name": "min-char-rnn loop (B=1, float64)", "tokens_per_s": base, "ratio": 1.0}]
    print(f"min-char-rnn loop, batch 1: {base:10,.0f} tokens/s")
    for B, dt in ((1, "float64"), (64, "float32"), (256, "float32"), (1024, "float32")):
        r = rnnkit_tokens_per_s(B=B, dtype=dt, steps=200 if B == 1 else 30)
        rows.append({"name": f"rnnkit B={B} {dt}", "tokens_per_s": r, "ratio": r / base})
        print(f"rnnkit, batch {B:4d} {dt}: {r:10,.0f} tokens/s | {r / base:5.1f}x")
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
