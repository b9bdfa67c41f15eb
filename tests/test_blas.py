"""The matrix-product seam (``rnnkit.blas``): choosing a backend, and MKL's products equal to
NumPy's for every memory layout the layers hand it."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit import blas
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.nn import LSTM, Linear

MKL = blas.load_mkl()
needs_mkl = pytest.mark.skipif(MKL is None, reason="needs MKL (pip install 'rnnkit[mkl]')")
TOL = {np.float32: 2e-6, np.float64: 1e-13}


@pytest.fixture(params=["all by MKL", "small ones by NumPy"])
def small(request, monkeypatch):
    """Every test of MKL's products runs twice: with every product made by MKL (``SMALL = 0``),
    and as shipped, where products under ``blas.SMALL`` multiply-adds go to NumPy."""
    if request.param == "all by MKL":
        monkeypatch.setattr(blas, "SMALL", 0)
    return request.param


def close(got, want):
    want = np.asarray(want, np.float64)
    err = np.linalg.norm(np.asarray(got, np.float64) - want) / max(np.linalg.norm(want), 1e-30)
    assert err <= TOL[got.dtype.type], err


# -- choosing ----------------------------------------------------------------------------------
def test_numpy_backend_is_numpy(monkeypatch):
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    b = blas.get_blas("numpy")
    assert b.name == "numpy"
    a = np.arange(6.0).reshape(2, 3)
    w = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(b.matmul(a, w), a @ w)


def test_auto_takes_mkl_when_it_loads(monkeypatch):
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    assert blas.get_blas("auto").name == ("mkl" if MKL else "numpy")


def test_environment_variable_chooses(monkeypatch):
    monkeypatch.setenv("RNNKIT_BLAS", "numpy")
    assert blas.get_blas("auto").name == "numpy"
    assert LSTM(3, 4, rng=np.random.default_rng(0)).cells[0][0].blas.name == "numpy"
    monkeypatch.setenv("RNNKIT_BLAS", "openblas")
    with pytest.raises(ValueError, match="RNNKIT_BLAS must be one of"):
        blas.get_blas("auto")


def test_bad_name_and_missing_mkl_say_why(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="blas must be one of"):
        blas.get_blas("atlas")
    with pytest.raises(ValueError, match="blas must be one of"):
        LSTM(3, 4, blas="atlas")
    # a fresh process whose RNNKIT_MKL names a file that is not MKL
    monkeypatch.setattr(blas, "_MKL", {})
    monkeypatch.setenv("RNNKIT_MKL", str(tmp_path / "libmkl_rt.so"))
    assert blas.load_mkl() is None
    assert "libmkl_rt.so" in blas.mkl_error()
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    assert blas.get_blas("auto").name == "numpy"           # auto falls back quietly
    with pytest.raises(ValueError, match="blas='mkl' but MKL cannot be loaded"):
        blas.get_blas("mkl")
    monkeypatch.setenv("RNNKIT_BLAS", "mkl")
    with pytest.raises(ValueError, match="RNNKIT_BLAS=mkl but MKL cannot be loaded"):
        blas.get_blas("auto")


def test_mkl_is_for_the_cpu_only():
    class FakeCupy:                                        # any array module but NumPy
        matmul = staticmethod(np.matmul)
    with pytest.raises(ValueError, match="needs the CPU"):
        blas.get_blas("mkl", xp=FakeCupy)
    assert blas.get_blas("auto", xp=FakeCupy).name == "numpy"
    assert blas.get_blas("auto", xp=FakeCupy).xp is FakeCupy


def test_the_environment_variable_leaves_the_gpu_alone(monkeypatch):
    class FakeCupy:
        matmul = staticmethod(np.matmul)
    monkeypatch.setenv("RNNKIT_BLAS", "mkl")
    assert blas.get_blas("auto", xp=FakeCupy).xp is FakeCupy


# -- MKL's products ----------------------------------------------------------------------------
def layouts(rng, M, K, N, dtype):
    """``(a, b)`` pairs with the same values in every layout the layers use, and some more."""
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    big_a = np.zeros((2 * M, K + 3), dtype)
    big_a[::2, 1:K + 1] = a
    yield "C C", a, b
    yield "T C", np.ascontiguousarray(a.T).T, b
    yield "C T", a, np.ascontiguousarray(b.T).T
    yield "T T", np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
    yield "strided rows", big_a[::2, 1:K + 1], b
    yield "copied (columns strided)", np.repeat(a, 2, axis=1)[:, ::2], b


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(32, 64, 256), (64, 48, 40), (1, 7, 5), (5, 1, 3), (4, 6, 1),
                                   (1, 1, 1)])
def test_mkl_matmul_equals_numpy(dtype, M, K, N, small):
    rng = np.random.default_rng(M * 100 + K * 10 + N)
    for name, a, b in layouts(rng, M, K, N, dtype):
        want = np.matmul(a, b)
        got = MKL.matmul(a, b)
        assert got.dtype == dtype and got.shape == (M, N), name
        close(got, want)
        out = np.full((M + 2, N + 4), np.nan, dtype)
        res = MKL.matmul(a, b, out=out[1:M + 1, 2:N + 2])           # into part of a bigger array
        close(res, want)
        assert np.isnan(out[0]).all() and np.isnan(out[:, :2]).all(), "wrote outside out"


@needs_mkl
def test_mkl_leaves_what_it_cannot_take_to_numpy(small):
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((3, 4)).astype(np.float32)
    b64 = rng.standard_normal((4, 2))
    assert MKL.matmul(a32, b64).dtype == np.float64                 # NumPy's promotion
    batch = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(MKL.matmul(batch, a32.T), np.matmul(batch, a32.T))
    empty = np.zeros((0, 4), np.float32)
    assert MKL.matmul(empty, a32.T).shape == (0, 3)
    out = np.empty((2, 3), np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    res = MKL.matmul(a32, b, out=out.T)                             # out.T is not row-major
    close(res, a32 @ b)
    close(out.T, a32 @ b)
    with pytest.raises(ValueError):
        MKL.matmul(a32, a32)                                        # shapes: NumPy's error


# -- the layers on MKL ---------------------------------------------------------------------------
@needs_mkl
def test_linear_on_mkl_equals_numpy(small):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    dy = rng.standard_normal((4, 5, 3)).astype(np.float32)
    out = {}
    for name in ("numpy", "mkl"):
        lin = Linear(6, 3, rng=np.random.default_rng(0), blas=name)
        y = lin(x)
        dx = lin.backward(dy)
        out[name] = (y, dx, *(g.copy() for g in lin.grads))
    for got, want in zip(out["mkl"], out["numpy"]):
        close(got, want)


@needs_mkl
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_language_model_training_step_on_mkl_equals_numpy(cell, monkeypatch, small):
    """Two whole steps, the second on the weights the first updated."""
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 11, (3, 7)), rng.integers(0, 11, (3, 7))
    res = {}
    for name in ("numpy", "mkl"):
        monkeypatch.setenv("RNNKIT_BLAS", name)
        model = LanguageModel(LMConfig(vocab_size=11, cell=cell, embedding_size=5, hidden_size=6,
                                       num_layers=2, dropout=0.0), rng=np.random.default_rng(0))
        losses = []
        for _ in range(2):
            losses.append(model.loss(x, y))
            model.backward()
            for p, g in zip(model.params, model.grads):
                p -= 0.1 * g
        res[name] = (np.array(losses), [g.copy() for g in model.grads])
    np.testing.assert_allclose(res["mkl"][0], res["numpy"][0], rtol=1e-5)
    for got, want in zip(res["mkl"][1], res["numpy"][1]):
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
