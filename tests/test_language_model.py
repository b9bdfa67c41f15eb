"""LanguageModel: gradients, weight tying, carried state, the Stepper and PyTorch parity."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.gradcheck import numerical_gradient, relative_error
from rnnkit.models.language_model import LanguageModel, LMConfig, Stepper


def small(cell="lstm", tie=False, dropout=0.0, **kw):
    cfg = LMConfig(vocab_size=7, cell=cell, embedding_size=5, hidden_size=5, num_layers=2,
                   dropout=dropout, tie_weights=tie, dtype="float64", **kw)
    return LanguageModel(cfg, rng=np.random.default_rng(0))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tie", [False, True])
def test_gradcheck_through_the_whole_model(cell, tie):
    model = small(cell, tie, dropout=0.3)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 7, (2, 4)), rng.integers(0, 7, (2, 4))

    def loss():
        for layer in (model.drop_in, model.drop_out):
            layer.rng = np.random.default_rng(5)
        model.rnn.rng = np.random.default_rng(6)
        model.reset_state()
        return model.loss(x, y)

    loss()
    model.backward()
    names = [n for n, _, _ in model.named_parameters()]
    assert ("decoder.weight" in names) != tie            # a tied weight is listed once
    for name, p, g in model.named_parameters():
        idx = rng.choice(p.size, size=min(p.size, 25), replace=False)
        num = numerical_gradient(loss, p, 1e-6, idx)
        assert relative_error(num, g) < 1e-6, name


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_steps_reuse_the_models_state_buffer(dropout):
    """The recurrent output lives in one buffer the model keeps (the decoder's input gradient is
    written over it in backward): steps of other shapes get their own, the same step twice
    gives the same loss and gradients, and the logits forward returns are the caller's."""
    model = small("lstm", dropout=dropout)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 7, (2, 4)), rng.integers(0, 7, (2, 4))
    results = []
    for ids, tgt in ((x, y), (x[:, :3], y[:, :3]), (x, y)):
        for layer in (model.drop_in, model.drop_out):
            layer.rng = np.random.default_rng(5)
        model.rnn.rng = np.random.default_rng(6)
        model.reset_state()
        loss = model.loss(ids, tgt)
        model.backward()
        assert model._h.shape == (*ids.shape, 5)
        results.append((loss, [g.copy() for g in model.grads]))
    assert results[2][0] == results[0][0] and results[1][0] != results[0][0]
    for a, b in zip(results[2][1], results[0][1]):
        np.testing.assert_array_equal(a, b)
    model.reset_state()
    logits = model(x)
    kept = logits.copy()
    model(x[:, ::-1])
    np.testing.assert_array_equal(logits, kept)
    assert not np.shares_memory(logits, model._h)


def test_tied_weights_share_one_array():
    model = small(tie=True)
    assert model.decoder.weight is model.embedding.weight
    sd = model.state_dict()
    assert sd["decoder.weight"] is sd["embedding.weight"]
    with pytest.raises(ValueError, match="embedding_size == hidden_size"):
        LMConfig(vocab_size=5, embedding_size=4, hidden_size=6, tie_weights=True)


def test_state_carries_between_batches_and_resets():
    model = small("gru")
    model.eval()
    x = np.random.default_rng(2).integers(0, 7, (3, 8))
    full = model(x)
    model.reset_state()
    parts = np.concatenate([model(x[:, :3]), model(x[:, 3:])], axis=1)
    np.testing.assert_allclose(parts, full, rtol=1e-12)
    saved = model.get_state()
    model.reset_state()
    assert model.get_state() is None
    model.set_state(saved)
    np.testing.assert_array_equal(model.get_state()[0], saved[0])


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepper_equals_forward(cell, layers):
    cfg = LMConfig(vocab_size=7, cell=cell, embedding_size=4, hidden_size=5, num_layers=layers,
                   dropout=0.0, dtype="float64")
    model = LanguageModel(cfg, rng=np.random.default_rng(layers))
    model.eval()
    x = np.random.default_rng(3).integers(0, 7, (4, 6))
    model.reset_state()
    want = model(x)
    stepper = Stepper(model, batch_size=4)
    got = np.stack([stepper.step(x[:, t]) for t in range(6)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # batch 1 takes its own path (matrix-vector products on output-major weights)
    model.reset_state()
    want = model(x[1:2])
    stepper = Stepper(model, batch_size=1)
    got = np.stack([stepper.step(x[1:2, t]) for t in range(6)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_stepper_refuses_ids_it_cannot_look_up():
    """A negative id would be taken from the end of the table, silently; a float, a wrong
    batch or an id past the vocabulary is refused too, with one message."""
    model = small().eval()
    V = model.config.vocab_size
    stepper = Stepper(model, batch_size=2)
    stepper.step(np.array([0, V - 1]))
    for bad, match in (([0, -1], "must lie in"), ([V, 0], "must lie in"),
                       ([0.0, 1.0], "integer array"), ([0, 1, 2], r"shape \(2,\)"),
                       ([[0, 1]], r"shape \(2,\)")):
        with pytest.raises(ValueError, match=match):
            stepper.step(np.array(bad))


def test_stepper_of_a_packed_model():
    """blas="packed": the model trains on the packed kernel, the stepper multiplies with NumPy
    (packing the weights at every step would cost more than the step); same logits."""
    from rnnkit import blas, packed
    if not packed.available():
        pytest.skip("needs numba")
    cfg = LMConfig(vocab_size=11, cell="lstm", embedding_size=8, hidden_size=64, num_layers=2,
                   dropout=0.0)
    model = LanguageModel(cfg, rng=np.random.default_rng(0), blas="packed")
    model.eval()
    x = np.random.default_rng(1).integers(0, 11, (40, 5))
    model.reset_state()
    want = model(x)
    stepper = Stepper(model, batch_size=40)
    assert stepper._blas is blas.get_blas("numpy")
    got = np.stack([stepper.step(x[:, t]) for t in range(5)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_init_range_and_config_round_trip():
    model = small(init_range=0.1)
    assert all(np.abs(p).max() <= 0.1 for p in model.params)
    cfg = model.config
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config"):
        LMConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="cell must be"):
        LMConfig(vocab_size=5, cell="transformer")


def test_bad_ids_shape():
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        small()(np.zeros(3, np.int64))


def test_parity_with_a_torch_model_on_the_same_weights():
    torch = pytest.importorskip("torch")
    model = small("lstm")
    model.eval()

    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(7, 5)
            self.rnn = torch.nn.LSTM(5, 5, 2, batch_first=True)
            self.decoder = torch.nn.Linear(5, 7)

        def forward(self, x):
            return self.decoder(self.rnn(self.embedding(x))[0])

    t = TorchLM().double()
    t.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 7, (3, 5)), rng.integers(0, 7, (3, 5))
    loss = model.loss(x, y)
    model.backward()
    tl = torch.nn.functional.cross_entropy(t(torch.tensor(x)).reshape(-1, 7), torch.tensor(y).reshape(-1))
    tl.backward()
    assert abs(loss - tl.item()) < 1e-12
    for name, p in t.named_parameters():
        assert relative_error(p.grad.numpy(), model.grad_dict()[name]) < 1e-10, name
