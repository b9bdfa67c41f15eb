"""The parity cases and how PyTorch computes them: shared by make_golden.py and the live tests.

Every case is a configuration of a sequence layer plus inputs drawn from a seeded Generator.
``reference(case, arrays)`` runs torch on the same weights and returns outputs, final states and
every gradient, as NumPy arrays named as in the golden file.
"""
from __future__ import annotations

import itertools

import numpy as np

from rnnkit.nn import GRU, LSTM, RNN

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def golden_cases():
    """The committed grid: every kind x layers x direction x bias x lengths x dtype, plus
    time-major layouts (batch_first=False) for each kind."""
    cases = []
    grid = itertools.product(KINDS, (1, 2), (False, True), (True, False), (False, True),
                             ("float32", "float64"))
    for kind, layers, bidir, bias, lengths, dtype in grid:
        cases.append(dict(kind=kind, num_layers=layers, bidirectional=bidir, bias=bias,
                          lengths=lengths, batch_first=True, dtype=dtype))
    for kind, dtype in itertools.product(KINDS, ("float32", "float64")):
        cases.append(dict(kind=kind, num_layers=2, bidirectional=True, bias=True, lengths=True,
                          batch_first=False, dtype=dtype))
    for i, c in enumerate(cases):
        c.update(seed=1000 + i, N=3, T=4, D=3, H=2)
    return cases


def build(case, rng, kernels="auto", blas="auto"):
    """Our layer for ``case``, initialised from ``rng`` (its weights are what torch loads)."""
    kind = case["kind"]
    cls = {"lstm": LSTM, "gru": GRU}.get(kind, RNN)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    return cls(case["D"], case["H"], num_layers=case["num_layers"], bias=case["bias"],
               batch_first=case["batch_first"], bidirectional=case["bidirectional"],
               rng=rng, dtype=case["dtype"], kernels=kernels, blas=blas, **kw)


def make_inputs(case, rng):
    """x, h0, (c0), dy, dh_n, (dc_n) and lengths for ``case``, from ``rng``."""
    N, T, D, H = case["N"], case["T"], case["D"], case["H"]
    dt = np.dtype(case["dtype"])
    LD = case["num_layers"] * (2 if case["bidirectional"] else 1)
    dirs = 2 if case["bidirectional"] else 1
    shape_x = (N, T, D) if case["batch_first"] else (T, N, D)
    shape_y = (N, T, dirs * H) if case["batch_first"] else (T, N, dirs * H)
    a = {"x": rng.standard_normal(shape_x), "h0": rng.standard_normal((LD, N, H)),
         "dy": rng.standard_normal(shape_y), "dh_n": rng.standard_normal((LD, N, H))}
    if case["kind"] == "lstm":
        a["c0"] = rng.standard_normal((LD, N, H))
        a["dc_n"] = rng.standard_normal((LD, N, H))
    a = {k: v.astype(dt) for k, v in a.items()}
    if case["lengths"]:
        lengths = rng.integers(1, T + 1, size=N)
        lengths[rng.integers(N)] = T      # one full-length sequence, as packing has
        a["lengths"] = lengths.astype(np.int64)
    return a


def reference(case, weights, a):
    """Run torch on ``weights`` (name -> array) and inputs ``a``; return name -> array."""
    import torch

    dt = getattr(torch, case["dtype"])
    kind = case["kind"]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(kind, torch.nn.RNN)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    m = cls(case["D"], case["H"], num_layers=case["num_layers"], bias=case["bias"],
            batch_first=case["batch_first"], bidirectional=case["bidirectional"], **kw).to(dt)
    m.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items() if k in ("x", "h0", "c0")}
    state = (t["h0"], t["c0"]) if kind == "lstm" else t["h0"]
    x = t["x"]
    if "lengths" in a:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(a["lengths"]),
                                                    batch_first=case["batch_first"],
                                                    enforce_sorted=False)
    y, hn = m(x, state)
    if "lengths" in a:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=case["batch_first"],
                                                      total_length=case["T"])
    hn, cn = hn if kind == "lstm" else (hn, None)
    loss = (y * torch.tensor(a["dy"])).sum() + (hn * torch.tensor(a["dh_n"])).sum()
    if cn is not None:
        loss = loss + (cn * torch.tensor(a["dc_n"])).sum()
    loss.backward()
    out = {"y": y, "h_n": hn, "dx": t["x"].grad, "dh0": t["h0"].grad}
    if cn is not None:
        out.update(c_n=cn, dc0=t["c0"].grad)
    out.update({"grad." + k: p.grad for k, p in m.named_parameters()})
    return {k: v.detach().numpy().copy() for k, v in out.items()}
