"""The matrix-product seam (``rnnkit.blas``): choosing a backend, and MKL's products equal to
NumPy's for every memory layout the layers hand it."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

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


def test_auto_takes_mkl_when_it_loads_on_an_intel_cpu(monkeypatch):
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    monkeypatch.setattr(blas, "intel_cpu", lambda: True)
    assert blas.get_blas("auto").name == ("mkl" if MKL else "numpy")


def test_auto_leaves_mkl_alone_on_other_cpus(monkeypatch):
    """MKL's small products are slower than OpenBLAS's on AMD processors; asked for, it loads."""
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    monkeypatch.setattr(blas, "intel_cpu", lambda: False)
    assert blas.get_blas("auto").name == "numpy"
    if MKL:
        assert blas.get_blas("mkl").name == "mkl"
        monkeypatch.setenv("RNNKIT_BLAS", "mkl")
        assert blas.get_blas("auto").name == "mkl"


def test_a_large_model_on_avx512_with_two_cores_takes_the_packed_kernel(monkeypatch):
    """blas.for_model: auto becomes packed for float32 on the CPU, for recurrent weights of
    2^16 entries or more (an LSTM from H=128 on, a GRU from H=148, an RNN from H=256), with numba,
    AVX-512 and two cores, where the processor is not Intel's with MKL installed and
    RNNKIT_BLAS does not choose; a language model asks it for all of its layers."""
    from rnnkit import packed
    from rnnkit.models.language_model import LanguageModel, LMConfig
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    monkeypatch.setattr(blas, "intel_cpu", lambda: False)
    monkeypatch.setattr(blas, "avx512_cpu", lambda: True)
    monkeypatch.setattr(blas, "_cores", lambda: 2)
    big = "packed" if packed.available() else "auto"
    assert blas.for_model("auto", 256, 4) == big and blas.for_model("auto", 256, 1) == big
    assert blas.for_model("auto", 127, 4) == "auto" and blas.for_model("auto", 128, 4) == big
    assert blas.for_model("auto", 147, 3) == "auto" and blas.for_model("auto", 148, 3) == big
    assert blas.for_model("auto", 255, 1) == "auto" and blas.for_model("auto", 100, 1) == "auto"
    assert blas.for_model("numpy", 512) == "numpy" and blas.for_model("mkl", 512) == "mkl"
    assert blas.for_model("auto", 512, device="cuda") == "auto"
    assert blas.for_model("auto", 512, dtype=np.float64) == "auto"
    model = LanguageModel(LMConfig(vocab_size=7, hidden_size=256, embedding_size=8))
    assert {model.rnn.cells[0][0].blas.name, model.decoder.blas.name} == {
        "packed" if packed.available() else "numpy"}
    for cell, H in (("lstm", 100), ("gru", 140), ("rnn", 200)):
        small = LanguageModel(LMConfig(vocab_size=7, cell=cell, hidden_size=H, embedding_size=8))
        assert small.rnn.cells[0][0].blas.name == small.decoder.blas.name == "numpy"
    for patch in (("avx512_cpu", lambda: False), ("_cores", lambda: 1)):
        with monkeypatch.context() as m:
            m.setattr(blas, *patch)
            assert blas.for_model("auto", 512) == "auto"
    with monkeypatch.context() as m:              # Intel's: MKL where it loads, else packed
        m.setattr(blas, "intel_cpu", lambda: True)
        m.setattr(blas, "load_mkl", lambda: object())
        assert blas.for_model("auto", 512) == "auto"
        m.setattr(blas, "load_mkl", lambda: None)
        assert blas.for_model("auto", 512) == big
    monkeypatch.setenv("RNNKIT_BLAS", "numpy")
    assert blas.for_model("auto", 512) == "auto"                  # and get_blas reads it
    monkeypatch.delenv("RNNKIT_BLAS")
    monkeypatch.setattr(packed, "available", lambda: False)
    assert not blas.auto_packs() and blas.for_model("auto", 512) == "auto"


def test_intel_cpu_reads_the_vendor(tmp_path):
    for vendor, intel in (("GenuineIntel", True), ("AuthenticAMD", False)):
        info = tmp_path / vendor
        info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\n")
        assert blas.intel_cpu(str(info)) is intel


def test_environment_variable_chooses(monkeypatch):
    monkeypatch.setenv("RNNKIT_BLAS", "numpy")
    assert blas.get_blas("auto").name == "numpy"
    assert LSTM(3, 4, rng=np.random.default_rng(0)).cells[0][0].blas.name == "numpy"
    monkeypatch.setenv("RNNKIT_BLAS", "openblas")
    with pytest.raises(ValueError, match="RNNKIT_BLAS must be one of"):
        blas.get_blas("auto")


def test_bad_name_and_missing_mkl_say_why(monkeypatch, tmp_path, fresh_mkl):
    with pytest.raises(ValueError, match="blas must be one of"):
        blas.get_blas("atlas")
    with pytest.raises(ValueError, match="blas must be one of"):
        LSTM(3, 4, blas="atlas")
    # a fresh process (fresh_mkl) whose RNNKIT_MKL names a file that is not MKL
    monkeypatch.setenv("RNNKIT_MKL", str(tmp_path / "libmkl_rt.so"))
    assert blas.load_mkl() is None
    assert "libmkl_rt.so" in blas.mkl_error()
    monkeypatch.delenv("RNNKIT_BLAS", raising=False)
    monkeypatch.setattr(blas, "intel_cpu", lambda: True)   # where auto would take MKL
    assert blas.get_blas("auto").name == "numpy"           # auto falls back quietly
    with pytest.raises(ValueError, match="blas='mkl' but MKL cannot be loaded"):
        blas.get_blas("mkl")
    monkeypatch.setenv("RNNKIT_BLAS", "mkl")
    with pytest.raises(ValueError, match="RNNKIT_BLAS=mkl but MKL cannot be loaded"):
        blas.get_blas("auto")


def test_an_installed_mkl_loads():
    """CI installs the ``mkl`` extra; if it could not be loaded, every MKL test would skip."""
    try:
        importlib.metadata.version("mkl")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the mkl package is not installed")
    assert MKL is not None, blas.mkl_error()


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
        view = out[1:M + 1, 2:N + 2]
        res = MKL.matmul(a, b, out=view)                            # into part of a bigger array
        assert res is view, name
        close(view, want)
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


@needs_mkl
def test_mkl_keeps_numpys_contract_where_a_gemm_would_not(monkeypatch, small):
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    want = a @ b
    a2 = a.copy()
    close(MKL.matmul(a2, b, out=a2), want)                          # out is an input
    b2 = b.copy()
    close(MKL.matmul(a, b2, out=b2), want)
    buf = np.zeros((64, 128), np.float32)
    buf[:, :64] = a
    close(MKL.matmul(buf[:, :64], b, out=buf[:, 32:96]), want)       # out overlaps an input
    ro = np.zeros((64, 64), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        MKL.matmul(a, b, out=ro)
    assert not ro.any()
    raw = np.zeros(64 * 258 + 16, np.uint8)                          # rows not whole items apart
    odd = np.ndarray((64, 64), np.float32, buffer=raw, strides=(258, 4))
    close(MKL.matmul(a, b, out=odd), want)
    class Sub(np.ndarray):
        pass
    assert type(MKL.matmul(a.view(Sub), b.view(Sub))) is Sub         # subclasses: NumPy's


@needs_mkl
def test_sizes_beyond_a_c_int_go_to_numpy(monkeypatch):
    monkeypatch.setattr(blas, "SMALL", 0)
    monkeypatch.setattr(blas, "_INT_MAX", 40)                       # as if 40 were 2^31 - 1
    calls = []
    real = MKL._gemm[np.dtype(np.float32)]
    monkeypatch.setitem(MKL._gemm, np.dtype(np.float32), lambda *a: (calls.append(a), real(*a)))
    rng = np.random.default_rng(6)
    small, big = (rng.standard_normal((8, 8)).astype(np.float32),
                  rng.standard_normal((8, 41)).astype(np.float32))
    close(MKL.matmul(small, small), small @ small)
    assert len(calls) == 1
    close(MKL.matmul(small, big), small @ big)                      # N > "2^31 - 1"
    wide = np.zeros((8, 50), np.float32)[:, :8]                     # row stride > "2^31 - 1" bytes
    wide[...] = small
    close(MKL.matmul(wide, small), small @ small)
    assert len(calls) == 1


@needs_mkl
def test_mkl_takes_32_bit_ints_whatever_the_environment_says():
    code = ("import numpy as np; from rnnkit import blas; blas.SMALL = 0; m = blas.load_mkl(); "
            "a = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096; "
            "print(m.name, float(np.abs(m.matmul(a, a.T) - a @ a.T).max()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, MKL_INTERFACE_LAYER="ILP64"), timeout=60)
    assert out.returncode == 0, out.stderr
    name, err = out.stdout.split()
    assert name == "mkl" and float(err) < 1e-4


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


# -- transposed copies ---------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["omatcopy", "NumPy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_into_a_block_of_columns(by, dtype, monkeypatch):
    """``out = alpha a^T`` into a block of a wider array's columns, whether NumPy's OpenBLAS
    does it (``omatcopy``) or NumPy does, in blocks of 64 rows; exact for a power of two."""
    if by == "omatcopy" and dtype not in {np.dtype(k).type for k in blas._omatcopy()}:
        pytest.skip("NumPy's OpenBLAS has no omatcopy here")
    if by == "NumPy":
        monkeypatch.setattr(blas, "_omatcopy", lambda: {})
    rng = np.random.default_rng(0)
    a = rng.standard_normal((150, 40)).astype(dtype)
    wide = np.full((40, 400), 7.0, dtype=dtype)
    blas.transpose_into(a, 0.5, wide[:, 100:250])
    np.testing.assert_array_equal(wide[:, 100:250], 0.5 * a.T)
    assert (wide[:, :100] == 7).all() and (wide[:, 250:] == 7).all()       # nothing else
    blas.transpose_into(a[10:20, 5:], 1.0, wide[5:, :10])                # strided rows too
    np.testing.assert_array_equal(wide[5:, :10], a[10:20, 5:].T)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(32, 256, 1024), (32, 1024, 256), (1, 64, 48), (5, 37, 148)])
def test_mkl_product_by_a_packed_matrix_equals_numpy(dtype, M, K, N):
    """``pack_b`` then ``matmul_packed``, as the loop over time multiplies by ``W_hh``; the
    buffer is reused when it is large enough, and a product by it stays right."""
    rng = np.random.default_rng(M + K)
    a, w = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    buf = MKL.pack_b(w, M)
    close(MKL.matmul_packed(a, buf, np.empty((M, N), dtype)), a @ w)
    w2 = rng.standard_normal((K, N)).astype(dtype)
    assert MKL.pack_b(w2, M, buf) is buf
    close(MKL.matmul_packed(a, buf, np.empty((M, N), dtype)), a @ w2)
    wide = np.zeros((M, N + 3), dtype)                       # out may be a block of columns
    MKL.matmul_packed(a, buf, wide[:, 1:N + 1])
    close(wide[:, 1:N + 1], a @ w2)
    assert not wide[:, 0].any() and not wide[:, N + 1:].any()
    with pytest.raises(ValueError, match="row-major"):
        MKL.matmul_packed(a.astype(np.float16), buf, np.empty((M, N), dtype))
