"""The GPU path (CuPy): the same layers and models on device='cuda' give the CPU's numbers.

Each test runs twice: on an NVIDIA GPU with CuPy (skipped where there is none; CI has neither),
and on a stand-in for CuPy on the CPU (``cupy_standin.py``: NumPy arrays that behave as CuPy's
where code written for NumPy trips, with ``fused_cuda``'s kernels compiled for the CPU), which
runs everywhere there is a C++ compiler. Both GPU implementations of the cells' elementwise
work are checked: the fused CuPy kernels and CuPy's ufuncs.
"""
from __future__ import annotations

import numpy as np
import pytest

import cupy_standin
from cuda_on_cpu import compile_kernels
from rnnkit.backend import cuda_available, to_numpy
from rnnkit.cli.main import main as cli_main
from rnnkit.generate import SampleSettings, generate, generate_batch
from rnnkit.gradcheck import relative_error
from rnnkit.models.language_model import LanguageModel, LMConfig, Stepper
from rnnkit.nn import GRU, LSTM, RNN
from rnnkit.optim import Adam

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def standin_kernels(tmp_path_factory):
    return compile_kernels(tmp_path_factory.mktemp("standin_kernels"))


@pytest.fixture(params=["gpu", "stand-in"], autouse=True)
def cuda(request, monkeypatch):
    """``device='cuda'`` on the GPU, or on the stand-in for CuPy."""
    if request.param == "gpu":
        if not cuda_available():
            pytest.skip("needs CuPy and an NVIDIA GPU")
        return
    kernels = request.getfixturevalue("standin_kernels")
    if kernels is None:
        pytest.skip("the stand-in's kernels need a C++ compiler")
    cupy_standin.install(monkeypatch, kernels)


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
        assert a.dtype == b.dtype == dtype                 # no promotion on either device
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


@pytest.mark.parametrize("settings", [SampleSettings(length=12, temperature=0.8),
                                      SampleSettings(length=12, top_k=3, top_p=0.9)])
def test_sampling_on_the_gpu_draws_the_cpu_tokens(settings):
    """The same seed draws the same text on both devices (float64: the logits agree to far
    below any gap between two tokens' cumulative probabilities), one stream and many."""
    cfg = LMConfig(vocab_size=13, cell="lstm", embedding_size=6, hidden_size=10, num_layers=2,
                   dropout=0.0, dtype="float64")
    models = [LanguageModel(cfg, rng=np.random.default_rng(4), device=d).eval()
              for d in ("cpu", "cuda")]
    one = [list(generate(m, [1, 2, 3], settings, np.random.default_rng(7))) for m in models]
    assert one[0] == one[1]
    many = [generate_batch(m, [5], settings, np.random.default_rng(8), num_samples=4)
            for m in models]
    np.testing.assert_array_equal(many[0], to_numpy(many[1]))


def test_the_command_line_trains_samples_and_evaluates_on_the_gpu(tmp_path, capsys):
    """``--device cuda`` end to end: training with checkpoints, then sampling and evaluation
    from the checkpoint on the GPU give what they give on the CPU."""
    text = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to "
            "suffer\n") * 40
    data = tmp_path / "input.txt"
    data.write_text(text, encoding="utf-8")
    small = ["--hidden-size", "12", "--embedding-size", "6", "--batch-size", "4", "--bptt", "12",
             "--no-progress", "--sample-length", "10", "--max-steps", "6", "--eval-interval",
             "3", "--seed", "3", "--dtype", "float64"]
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert cli_main(["train", "--data", str(data), "--out", str(out), "--device", device,
                         *small]) == 0
        runs[device] = out
    capsys.readouterr()
    for command in (["sample", "--length", "30", "--seed", "5", "--prime", "To be"],
                    ["eval", "--data", str(data)]):
        printed = {}
        for device, out in runs.items():
            assert cli_main([command[0], str(out / "best.npz"), *command[1:], "--device",
                             device]) == 0
            printed[device] = capsys.readouterr().out
        assert printed["cpu"].strip() and printed["cpu"] == printed["cuda"]


def test_the_gpu_benchmarks_step_trains(import_benchmark):
    """``bench_gpu.py``'s rnnkit step (its CuPy calls included), on a tiny model: the loss on
    its batch falls as Adam steps."""
    step = import_benchmark("bench_gpu").rnnkit_gpu_step("lstm", V=7, E=4, H=8, L=2, B=3, T=5, seed=1)
    losses = [step() for _ in range(100)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]


def test_stepping_an_id_out_of_range_is_refused_on_the_gpu():
    """CuPy's ``take`` wraps an id out of range round where NumPy's refuses it, and both take a
    negative id from the end: the stepper checks."""
    cfg = LMConfig(vocab_size=5, cell="gru", embedding_size=3, hidden_size=4, num_layers=1)
    model = LanguageModel(cfg, rng=np.random.default_rng(0), device="cuda").eval()
    stepper = Stepper(model, batch_size=2)
    stepper.step(model.xp.asarray(np.array([0, 4])))
    for bad in ([0, 5], [-1, 2]):
        with pytest.raises(ValueError, match="ids must lie"):
            stepper.step(model.xp.asarray(np.array(bad)))


@pytest.mark.parametrize("cell,dropout", [("lstm", 0.0), ("gru", 0.2)])
def test_a_training_step_copies_to_the_host_twice(request, cell, dropout):
    """Every copy to the host waits for the device to finish what it was given: a language
    model's training step makes two, the ids' range (checked before the lookup) and the loss
    with its count and the targets' range (one copy each, where ``int()`` and ``float()`` of
    each made six). Counted on the stand-in (dropout's masks go the other way)."""
    if request.node.callspec.params["cuda"] == "gpu":
        pytest.skip("copies are counted on the stand-in")
    cfg = LMConfig(vocab_size=11, cell=cell, embedding_size=6, hidden_size=8, num_layers=2,
                   dropout=dropout)
    model = LanguageModel(cfg, rng=np.random.default_rng(0), device="cuda")
    opt = Adam(model.params, model.grads)
    x = model.xp.asarray(np.random.default_rng(1).integers(0, 11, (3, 5)))
    model.loss(x, x)
    model.backward()
    opt.step()
    before = cupy_standin.syncs()
    loss = model.loss(x, x)
    model.backward()
    opt.step()
    assert cupy_standin.syncs() - before == 2 and isinstance(loss, float)
