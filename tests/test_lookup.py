"""A recurrent layer's looked-up input, ``forward(table, ids=ids)``: ``x = table[ids]``.

Where the first layer folds the lookup into its input projection (``_Recurrent._folds``: the
compiled loop, a small table), and where it gathers the rows itself, every output, final state
and gradient must equal those of the same layer run on ``table[ids]`` with the input's gradient
scattered back into the table's rows. The language model takes this path whenever its
embeddings have no dropout.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.nn import GRU, LSTM, RNN, Embedding, fused, recurrent
from rnnkit.nn.basic import scatter_rows

LAYERS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}), "lstm": (LSTM, {}),
          "gru": (GRU, {})}
needs_numba = pytest.mark.skipif(not fused.available(), reason="needs numba (rnnkit[fast])")


def table_gradient(ids, dx, V):
    """The table's gradient from the gathered input's, by the obvious loop."""
    dt = np.zeros((V, dx.shape[-1]), dtype=dx.dtype)
    for i, row in zip(ids.reshape(-1), dx.reshape(ids.size, -1)):
        dt[i] += row
    return dt


def both_ways(kind, V, D, H, N, T, *, batch_first=True, lengths=None, dtype=np.float64,
              seed=0, **kw):
    """(results on table[ids], results on (table, ids=ids), whether the lookup folded)."""
    cls, extra = LAYERS[kind]
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, D)).astype(dtype)
    ids = rng.integers(0, V, (N, T) if batch_first else (T, N))
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h0 = rng.standard_normal((L, N, H)).astype(dtype)
    state = (h0, rng.standard_normal((L, N, H)).astype(dtype)) if kind == "lstm" else h0
    dy = rng.standard_normal((N, T, H * (2 if kw.get("bidirectional") else 1))).astype(dtype)
    dy = dy if batch_first else dy.transpose(1, 0, 2).copy()
    dstate = tuple(0.5 * s for s in state) if kind == "lstm" else 0.5 * state
    out = []
    for lookup in (False, True):
        layer = cls(D, H, rng=np.random.default_rng(seed + 1), dtype=dtype,
                    batch_first=batch_first, **extra, **kw)
        if lookup:
            y, s_n = layer(table, state, lengths=lengths, ids=ids)
            folded = layer._cache["lookup"][2]
            dtable, ds0 = layer.backward(dy, dstate)
        else:
            y, s_n = layer(table[ids], state, lengths=lengths)
            dx, ds0 = layer.backward(dy, dstate)
            dtable = table_gradient(ids, dx, V)
        flat = lambda s: list(s) if isinstance(s, tuple) else [s]            # noqa: E731
        out.append([y, *flat(s_n), dtable, *flat(ds0), *[g.copy() for g in layer.grads]])
    return out[0], out[1], folded


def assert_same(want, got, tol):
    assert len(want) == len(got)
    for k, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape, k
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol, err_msg=f"result {k}")


CASES = list(itertools.product(LAYERS, (False, True), (False, True), (True, False)))


@pytest.mark.parametrize("kind,bidir,lengths,batch_first", CASES)
@pytest.mark.parametrize("fold", [True, False])
def test_lookup_equals_gathering_first(monkeypatch, kind, bidir, lengths, batch_first, fold):
    """Two layers, nonzero initial states and final-state gradients, variable lengths (which
    sort the batch), both layouts; the lookup folded and gathered."""
    if fold and not fused.available():
        pytest.skip("the lookup folds in the compiled loop only (numba)")
    if not fold:
        monkeypatch.setattr(recurrent, "FOLD_BYTES", 0)
    lens = np.array([7, 3, 9, 1, 9, 4]) if lengths else None
    want, got, folded = both_ways(kind, V=5, D=4, H=6, N=6, T=9, batch_first=batch_first,
                                  lengths=lens, num_layers=2, bidirectional=bidir)
    assert folded == fold
    assert_same(want, got, 1e-10)


@needs_numba
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("blas", ["numpy", "packed"])
def test_folded_lookup_on_each_blas_in_float32(monkeypatch, kind, blas):
    """float32 on NumPy's BLAS and on the packed kernel, where the loop runs on two threads
    (H=128, N=16: a step large enough for ``timeloop.THREADED`` for every cell; each thread
    sums its own columns by token), with dropout between the layers (the same draws either way)
    and a vocabulary that leaves some rows of the table unused."""
    from rnnkit.nn import timeloop
    monkeypatch.setattr(timeloop, "_cores", lambda: 2)
    parts = []
    monkeypatch.setattr(timeloop.TimeLoop, "cuts", lambda self, N, G, f=timeloop.TimeLoop.cuts:
                        parts.append(f(self, N, G)) or parts[-1])
    want, got, folded = both_ways(kind, V=40, D=16, H=128, N=16, T=20, dtype=np.float32,
                                  num_layers=2, dropout=0.3, blas=blas)
    assert folded
    assert all(len(p) == (3 if blas == "packed" else 2) for p in parts)    # two threads, or one
    assert_same(want, got, 2e-5)


@needs_numba
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lookup_without_bias(kind):
    want, got, folded = both_ways(kind, V=5, D=3, H=4, N=4, T=6, bias=False)
    assert folded
    assert_same(want, got, 1e-10)


def test_when_the_lookup_folds(monkeypatch):
    """Folded where the compiled loop runs and the table is small next to the batch; gathered
    where it is not (a word-level vocabulary), or where the layer loops in Python."""
    layer = LSTM(4, 256)
    if fused.available():
        assert layer._folds(V=65, N=32, T=64)
    assert not layer._folds(V=10_000, N=20, T=35)           # V > N T / 4
    assert not layer._folds(V=600, N=100, T=100)            # sums 600 x 1024 > FOLD_BYTES
    assert not LSTM(4, 256, kernels="numpy")._folds(V=65, N=32, T=64)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stateful_lookup_carries_the_state(kind):
    """Chunks of one sequence, the state carried between them: outputs and gradients of each
    chunk as on the gathered rows, and the outputs those of one long run."""
    cls, _ = LAYERS[kind]
    rng = np.random.default_rng(2)
    table = rng.standard_normal((3, 4))
    ids = rng.integers(0, 3, (4, 12))
    def make():
        return cls(4, 5, stateful=True, rng=np.random.default_rng(0), dtype=np.float64)
    whole, _ = make()(table[ids])
    a, b = make(), make()
    outs = []
    for chunk in (ids[:, :5], ids[:, 5:]):
        ya, _ = a(table[chunk])
        yb, _ = b(table, ids=chunk)
        assert b._cache["lookup"][2] == fused.available()
        dy = np.cos(ya)
        dx, _ = a.backward(dy)
        dt, _ = b.backward(dy)
        np.testing.assert_allclose(yb, ya, atol=1e-12)
        np.testing.assert_allclose(dt, table_gradient(chunk, dx, 3), atol=1e-12)
        for ga, gb in zip(a.grads, b.grads):
            np.testing.assert_allclose(gb, ga, atol=1e-12)
        outs.append(yb)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, atol=1e-12)


def test_bad_lookups_are_refused():
    layer = LSTM(3, 4)
    table = np.zeros((5, 3), np.float32)
    ids = np.zeros((2, 4), np.int64)
    for bad_table, bad_ids, why in (
            (np.zeros((5, 4), np.float32), ids, r"table of shape \(V, 3\)"),
            (np.zeros((2, 4, 3), np.float32), ids, r"table of shape \(V, 3\)"),
            (np.zeros((5, 3), np.float64), ids, "table has dtype float64"),
            (table, ids.astype(np.float32), "ids must be an integer array, got float32"),
            (table, ids.tolist(), "ids must be an integer array, got list"),
            (table, np.zeros(4, np.int64), r"ids must have shape \(N, T\), got \(4,\)"),
            (table, ids + 5, r"ids must lie in \[0, 5\)"),
            (table, ids - 1, r"ids must lie in \[0, 5\)"),
            (table, np.zeros((2, 0), np.int64), "empty input")):
        with pytest.raises(ValueError, match=why):
            layer(bad_table, ids=bad_ids)


def test_scatter_rows_and_the_embeddings_table_gradient():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, 50)
    rows = rng.standard_normal((50, 3))
    dW = np.full((9, 3), np.nan)
    scatter_rows(dW, ids, rows)
    np.testing.assert_allclose(dW, table_gradient(ids, rows, 9), atol=1e-12)
    scatter_rows(dW, ids[:0], rows[:0])
    assert not dW.any()
    emb = Embedding(9, 3, padding_idx=2, dtype=np.float64)
    emb.backward_table(np.ones((9, 3)))
    assert emb.grads[0][2].sum() == 0 and emb.grads[0].sum() == 24
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(9, 3\)"):
        emb.backward_table(np.ones(3))


@pytest.mark.parametrize("cell,tie", [("lstm", False), ("gru", False), ("rnn", False),
                                      ("lstm", True)])
def test_language_model_looks_up_its_input_without_embedding_dropout(cell, tie):
    """With no dropout on the embeddings (none configured, or in eval), the model hands the
    recurrent layer the table and the ids; its loss and gradients are those of the layers
    called one after another on the embeddings (with tied weights too)."""
    cfg = LMConfig(vocab_size=11, cell=cell, embedding_size=8, hidden_size=8, num_layers=2,
                   dropout=0.0, tie_weights=tie, dtype="float64")
    model = LanguageModel(cfg, rng=np.random.default_rng(0))
    twin = LanguageModel(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (16, 12)), rng.integers(0, 11, (16, 12))
    loss = model.loss(x, y)
    model.backward()
    assert model._lookup
    h, _ = twin.rnn(twin.embedding(x))
    want = twin.criterion(twin.decoder(h), y)
    twin.embedding.backward(twin.rnn.backward(twin.decoder.backward(twin.criterion.backward()))[0])
    if tie:
        twin.embedding.grads[0] += twin.decoder.grads[0]
    assert model.rnn._folds(11, 16, 12) == fused.available()
    assert abs(loss - want) < 1e-12
    for (name, _, g), g2 in zip(model.named_parameters(), twin.grads):
        np.testing.assert_allclose(g, g2, rtol=1e-9, atol=1e-12, err_msg=name)
    dropping = LanguageModel(LMConfig(vocab_size=11, cell=cell, embedding_size=6, hidden_size=8,
                                      dropout=0.2, dtype="float64"))
    dropping.loss(x, y)
    assert not dropping._lookup                 # dropout on the embeddings: looked up first
    dropping.eval()
    dropping.loss(x, y)
    assert dropping._lookup
