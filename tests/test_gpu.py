"""The GPU path (CuPy): the same layers and models on device='cuda' give the CPU's numbers.

Skipped where CuPy or an NVIDIA GPU is absent (CI has neither). Both GPU implementations of the
cells' elementwise work are checked: the fused CuPy kernels and CuPy's ufuncs.
"""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.backend import cuda_available, to_numpy
from rnnkit.gradcheck import relative_error
from rnnkit.models.language_model import LanguageModel, LMConfig, Stepper
from rnnkit.nn import GRU, LSTM, RNN
from rnnkit.optim import Adam

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="needs CuPy and an NVIDIA GPU")]

LAYERS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}), "lstm": (LSTM, {}),
          "gru": (GRU, {})}


def _outputs(layer, x, h0, lengths, dy, kind):
    xp = layer.xp
    x, dy = xp.asarray(x), xp.asarray(dy)
    h0 = tuple(xp.asarray(h) for h in h0) if kind == "lstm" else xp.asarray(h0)
    y, h = layer(x, h0, lengths=lengths)
    dx, dh0 = layer.backward(dy)
    flat = lambda s: list(s) if kind == "lstm" else [s]          # noqa: E731
    return [to_numpy(a) for a in [y, dx] + flat(h) + flat(dh0) + list(layer.grads)]


@pytest.mark.parametrize("kernels", ["cupy", "numpy"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_layers_on_the_gpu_equal_the_cpu(kind, kernels, dtype, tol):
    cls, extra = LAYERS[kind]
    rng = np.random.default_rng(3)
    N, T, D, H, L = 5, 7, 6, 9, 2
    x = rng.standard_normal((N, T, D)).astype(dtype)
    shape = (L * 2, N, H)
    h0 = (tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2)) if kind == "lstm"
          else rng.standard_normal(shape).astype(dtype))
    dy = rng.standard_normal((N, T, 2 * H)).astype(dtype)
    lengths = np.array([7, 3, 5, 1, 6])
    cpu = cls(D, H, num_layers=L, bidirectional=True, rng=np.random.default_rng(1), dtype=dtype,
              kernels="numpy", **extra)
    gpu = cls(D, H, num_layers=L, bidirectional=True, rng=np.random.default_rng(1), dtype=dtype,
              device="cuda", kernels=kernels, **extra)
    for a, b in zip(_outputs(cpu, x, h0, lengths, dy, kind), _outputs(gpu, x, h0, lengths, dy, kind)):
        assert relative_error(a.astype(np.float64), b.astype(np.float64)) < tol


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_language_model_training_and_sampling_on_the_gpu(cell):
    cfg = LMConfig(vocab_size=11, cell=cell, embedding_size=6, hidden_size=8, num_layers=2,
                   dropout=0.0, dtype="float64")
    models = [LanguageModel(cfg, rng=np.random.default_rng(0), device=d) for d in ("cpu", "cuda")]
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (4, 9)), rng.integers(0, 11, (4, 9))
    losses = []
    for m in models:
        opt = Adam(m.params, m.grads, lr=1e-2)
        run = []
        for _ in range(3):
            run.append(m.loss(x, y))
            m.backward()
            opt.step()
        losses.append(run)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-10)
    for a, b in zip(models[0].params, models[1].params):
        np.testing.assert_allclose(a, to_numpy(b), rtol=1e-9, atol=1e-12)
    for ids in (np.array([1, 4, 7]), np.array([5])):          # batch 1 has its own path
        steppers = [Stepper(m.eval(), batch_size=len(ids)) for m in models]
        for _ in range(4):
            a = steppers[0].step(ids)
            b = to_numpy(steppers[1].step(models[1].xp.asarray(ids)))
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
