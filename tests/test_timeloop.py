"""The compiled loop over time (nn/timeloop.py) against the loop written in Python.

Every output, final state and gradient must equal the Python loop's, for every cell and option.
(The gradient checks and PyTorch parity tests elsewhere run through the compiled loop too,
wherever numba is installed.)
"""
from __future__ import annotations

import glob
import itertools
import os

import numpy as np
import pytest

from rnnkit import blas
from rnnkit.nn import GRU, LSTM, RNN, fused
from rnnkit.nn.timeloop import TimeLoop

pytestmark = pytest.mark.skipif(not fused.available(), reason="needs numba (rnnkit[fast])")

LAYERS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}), "lstm": (LSTM, {}),
          "gru": (GRU, {})}
BACKENDS = ["numpy"] + (["mkl"] if blas.load_mkl() is not None else [])


def run(layer, x, state, lengths, dout, dstate):
    """Forward and backward once; every array that comes out, and every gradient."""
    y, s_n = layer(x, state, lengths=lengths)
    dx, ds0 = layer.backward(dout, dstate)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]           # noqa: E731
    return [y, *flat(s_n), dx, *flat(ds0), *[g.copy() for g in layer.grads]]


def both_loops(monkeypatch, build, inputs):
    """The results of the compiled loop, then of the Python loop, on the same layer."""
    layer = build()
    compiled = run(layer, *inputs)
    with monkeypatch.context() as m:
        m.setattr(TimeLoop, "for_cell", classmethod(lambda cls, cell: None))
        python = run(layer, *inputs)
    return compiled, python


CASES = list(itertools.product(LAYERS, (False, True), (False, True)))


@pytest.mark.parametrize("kind,bidir,lengths", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_loop_equals_python_loop(monkeypatch, kind, bidir, lengths, dtype):
    rng = np.random.default_rng(CASES.index((kind, bidir, lengths)))
    N, T, D, H, L = 5, 7, 6, 37, 2
    cls, extra = LAYERS[kind]
    LD = L * (2 if bidir else 1)
    r = lambda *s: rng.standard_normal(s).astype(dtype)                  # noqa: E731
    state = (r(LD, N, H), r(LD, N, H)) if kind == "lstm" else r(LD, N, H)
    dstate = (r(LD, N, H), r(LD, N, H)) if kind == "lstm" else r(LD, N, H)
    lens = np.array([7, 3, 7, 1, 5]) if lengths else None
    inputs = (r(N, T, D), state, lens, r(N, T, (2 if bidir else 1) * H), dstate)
    seed = int(rng.integers(2**32))
    compiled, python = both_loops(monkeypatch, lambda: cls(
        D, H, num_layers=L, bidirectional=bidir, dtype=dtype, rng=np.random.default_rng(seed),
        **extra), inputs)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(compiled, python):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind,bidir,lengths", CASES)
@pytest.mark.parametrize("parts", [1, 2])
def test_packed_loop_equals_python_loop(monkeypatch, kind, bidir, lengths, parts):
    """blas="packed": W_hh packed once, and with two parts each thread owns half of the hidden
    units (forced here on a small layer); every output and gradient as the Python loop's."""
    from rnnkit import packed
    from rnnkit.nn import timeloop
    if not packed.available():
        pytest.skip("needs numba")
    monkeypatch.setattr(timeloop, "THREADED", 0 if parts == 2 else 1 << 62)
    monkeypatch.setattr(timeloop, "MIN_UNITS", 4)
    monkeypatch.setattr(timeloop, "_cores", lambda: 2)
    rng = np.random.default_rng(CASES.index((kind, bidir, lengths)) + 100)
    # H=37: parts of 18 and 19 units, every panel ragged; H=160 (LSTM, tanh RNN): parts of 64
    # and 96 units, whole panels into the strided halves of dh
    N, T, D, H, L = 11, 7, 6, 160 if kind in ("lstm", "rnn_tanh") else 37, 2
    cls, extra = LAYERS[kind]
    LD = L * (2 if bidir else 1)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)             # noqa: E731
    state = (r(LD, N, H), r(LD, N, H)) if kind == "lstm" else r(LD, N, H)
    dstate = (r(LD, N, H), r(LD, N, H)) if kind == "lstm" else r(LD, N, H)
    lens = np.array([7, 3, 7, 1, 5, 2, 6, 7, 4, 1, 3]) if lengths else None
    inputs = (r(N, T, D), state, lens, r(N, T, (2 if bidir else 1) * H), dstate)
    layer = cls(D, H, num_layers=L, bidirectional=bidir, rng=np.random.default_rng(5),
                blas="packed", **extra)
    loop = TimeLoop.for_cell(layer.cells[0][0])
    assert loop.packed and len(loop.cuts(N, layer.cells[0][0].gates * H)) == parts + 1
    compiled, python = both_loops(monkeypatch, lambda: layer, inputs)
    for a, b in zip(compiled, python):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,H", [("lstm", 160), ("gru", 37), ("rnn_tanh", 100)])
def test_two_parts_own_a_block_of_A_each(monkeypatch, kind, H):
    """With two parts, each thread's units take a block of A's memory of their own, one after
    the other, (T, N, gates W); the columns the blocks hold cover the fused gates once, each
    block's in gate order (what the weight gradients and dX read, ``dz_parts``)."""
    from rnnkit import packed
    from rnnkit.nn import timeloop
    if not packed.available():
        pytest.skip("needs numba")
    monkeypatch.setattr(timeloop, "THREADED", 0)
    monkeypatch.setattr(timeloop, "MIN_UNITS", 4)
    monkeypatch.setattr(timeloop, "_cores", lambda: 2)
    cls, extra = LAYERS[kind]
    cell = cls(3, H, blas="packed", **extra).cells[0][0]
    loop = TimeLoop.for_cell(cell)
    T, N, G = 5, 4, cell.gates * H
    A = np.arange(T * N * G, dtype=np.float32).reshape(T, N, G)
    cuts = loop.cuts(N, G)
    blocks = loop.blocks(A, cuts)
    assert len(cuts) == 3 and len(blocks) == 2
    start = 0
    for blk, j0, j1 in zip(blocks, cuts, cuts[1:]):
        assert blk.shape == (T, N, cell.gates * (j1 - j0))
        assert np.shares_memory(blk, A) and blk.flags.c_contiguous and blk.flat[0] == start
        start += blk.size
    parts = loop.dz_parts(A, cuts)
    cols = np.concatenate([c for _, c, _, _ in parts])
    assert sorted(cols) == list(range(G))
    for (d, c, j0, j1), blk in zip(parts, blocks):
        assert d.shape == (T * N, len(c)) and np.shares_memory(d, blk)
        assert list(c[:j1 - j0]) == list(range(j0, j1))         # the first gate's units first
    with pytest.raises(ValueError, match="C-contiguous"):
        loop.blocks(np.asfortranarray(A), cuts)
    monkeypatch.setattr(timeloop, "THREADED", 1 << 62)
    one = loop.cuts(N, G)
    assert loop.blocks(A, one) == [A] and loop.dz_parts(A, one) is None   # one part: A itself


def test_backward_keeps_the_layout_forward_chose(monkeypatch):
    """Whether the loop runs on two threads is decided once a call, from the cores the
    process may use: backward reads A in the layout forward wrote, even if that changes in
    between (as taskset can change it)."""
    from rnnkit import packed
    from rnnkit.nn import timeloop
    if not packed.available():
        pytest.skip("needs numba")
    monkeypatch.setattr(timeloop, "THREADED", 0)
    monkeypatch.setattr(timeloop, "MIN_UNITS", 4)
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 6, 5)).astype(np.float32), rng.standard_normal((4, 6, 160))
    want = []
    for cores in ((2, 2), (1, 1), (2, 1), (1, 2)):
        layer = LSTM(5, 160, rng=np.random.default_rng(0), blas="packed")
        monkeypatch.setattr(timeloop, "_cores", lambda: cores[0])
        layer(x)
        monkeypatch.setattr(timeloop, "_cores", lambda: cores[1])
        dx, _ = layer.backward(dy.astype(np.float32))
        got = [dx] + [g.copy() for g in layer.grads]
        want = want or got
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_packed_loop_reuses_its_buffers_across_calls(monkeypatch, kind):
    """The loop is kept on the cell, and its packed weights and scratch from call to call: after
    calls with other batch sizes (one part, two parts) and a change of the weights, a call gives
    what a new layer with those weights gives."""
    from rnnkit import packed
    from rnnkit.nn import timeloop
    if not packed.available():
        pytest.skip("needs numba")
    monkeypatch.setattr(timeloop, "MIN_UNITS", 4)
    monkeypatch.setattr(timeloop, "_cores", lambda: 2)
    cls, extra = LAYERS[kind]
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)             # noqa: E731
    layer = cls(6, 37, num_layers=2, rng=np.random.default_rng(1), blas="packed", **extra)
    cell = layer.cells[0][0]
    G = cell.gates * 37
    monkeypatch.setattr(timeloop, "THREADED", 5 * G * 37)              # 2 parts from N = 5 on
    loop = TimeLoop.for_cell(cell)
    assert loop is TimeLoop.for_cell(cell)
    assert [len(loop.cuts(N, G)) - 1 for N in (11, 3, 8)] == [2, 1, 2]
    for N in (11, 3, 8):
        run(layer, r(N, 5, 6), None, None, r(N, 5, 37), None)
    for p in layer.params:
        p += 0.01 * r(*p.shape)
    fresh = cls(6, 37, num_layers=2, rng=np.random.default_rng(1), blas="packed", **extra)
    for p, q in zip(fresh.params, layer.params):
        p[...] = q
    inputs = (r(8, 5, 6), None, None, r(8, 5, 37), None)
    for a, b in zip(run(layer, *inputs), run(fresh, *inputs)):
        np.testing.assert_array_equal(a, b)


def test_packed_loop_keeps_float64_on_numpys_blas():
    layer = LSTM(4, 8, dtype=np.float64, blas="packed")
    loop = TimeLoop.for_cell(layer.cells[0][0])
    assert loop is not None and not loop.packed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("lengths", [None, np.array([6, 2, 6, 5])])
def test_compiled_loop_on_each_blas(monkeypatch, kind, backend, dtype, tol, lengths):
    """MKL's GEMM is called by address too (32-bit integers, where NumPy's OpenBLAS has 64),
    and so is its product by a packed ``W_hh``, for the steps that have all rows (a step
    with fewer, where shorter sequences have ended, takes the plain GEMM)."""
    rng = np.random.default_rng(3)
    cls, extra = LAYERS[kind]
    inputs = (rng.standard_normal((4, 6, 5)).astype(dtype), None, lengths,
              rng.standard_normal((4, 6, 64)).astype(dtype), None)
    compiled, python = both_loops(monkeypatch, lambda: cls(
        5, 64, num_layers=2, dtype=dtype, rng=np.random.default_rng(1), blas=backend,
        **extra), inputs)
    for a, b in zip(compiled, python):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.skipif(blas.load_mkl() is None, reason="needs MKL (rnnkit[mkl])")
def test_mkl_loop_packs_w_hh_once_a_pass_into_one_buffer():
    """On MKL the loop multiplies by ``W_hh`` packed by MKL, into a buffer the loop keeps: the
    forward and the backward pass take turns with it, and it never moves (a fresh one every
    call would cost its page faults). What it computes there: the tests above."""
    layer = LSTM(5, 16, dtype=np.float32, blas="mkl", rng=np.random.default_rng(0))
    loop = TimeLoop.for_cell(layer.cells[0][0])
    assert loop.caddr != 0 and not loop.packed
    x, dout = np.ones((3, 4, 5), np.float32), np.ones((3, 4, 16), np.float32)
    layer(x)
    kept = loop._ws["mkl"]
    for _ in range(2):
        layer(x)
        layer.backward(dout)
        assert loop._ws["mkl"] is kept


def test_compiled_loop_is_used_where_it_can_be():
    layer = LSTM(4, 8, blas="numpy")
    assert TimeLoop.for_cell(layer.cells[0][0]) is not None
    assert TimeLoop.for_cell(LSTM(4, 8, kernels="numpy").cells[0][0]) is None


def test_numpy_blas_found_where_numpy_bundles_openblas():
    """NumPy's wheels carry OpenBLAS beside the package; its GEMM must be found there."""
    root = os.path.dirname(np.__file__)
    bundled = glob.glob(root + ".libs/*openblas*") + glob.glob(root + "/.dylibs/*openblas*")
    if not bundled:
        pytest.skip("this NumPy does not bundle OpenBLAS")
    native = blas.get_blas("numpy").native()
    assert native is not None and native.sgemm and native.dgemm


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_compiled_loop_sums_the_bias_gradients(monkeypatch, kind):
    """The compiled backward loop, on either BLAS, sums each step's gate gradients as it goes,
    so the bias gradients take no product over all steps afterwards; they equal the sums taken
    apart (by the Python loop)."""
    from rnnkit import blas, packed
    if not packed.available():
        pytest.skip("needs numba")
    cls, extra = LAYERS[kind]
    rng = np.random.default_rng(7)
    N, T, D, H = 5, 9, 6, 37
    x, dy = (rng.standard_normal(s).astype(np.float32) for s in ((N, T, D), (N, T, H)))
    grads = {}
    for name in ("packed", "numpy"):
        layer = cls(D, H, num_layers=2, rng=np.random.default_rng(3), blas=name, **extra)
        rows = []
        matmul = type(layer.cells[0][0].blas).matmul
        monkeypatch.setattr(type(layer.cells[0][0].blas), "matmul",
                            lambda self, a, b, out=None: rows.append(a.shape[0])
                            or matmul(self, a, b, out=out))
        layer(x)
        layer.backward(dy)
        monkeypatch.undo()
        assert 1 not in rows                       # no ones (1, M) @ dZ (M, G)
        grads[name] = {k: g.copy() for k, _, g in layer.named_parameters()}
    with monkeypatch.context() as m:
        m.setattr(TimeLoop, "for_cell", classmethod(lambda cls, cell: None))
        layer = cls(D, H, num_layers=2, rng=np.random.default_rng(3), **extra)
        layer(x)
        layer.backward(dy)
        grads["python"] = {k: g.copy() for k, _, g in layer.named_parameters()}
    for name in ("packed", "numpy"):
        for k in grads["python"]:
            np.testing.assert_allclose(grads[name][k], grads["python"][k], rtol=1e-5,
                                       atol=1e-5, err_msg=f"{name} {k}")


@pytest.mark.skipif(blas.load_mkl() is None, reason="needs MKL (rnnkit[mkl])")
def test_an_mkl_that_cannot_pack_runs_the_loop_on_its_gemm(monkeypatch):
    """An MKL without ``cblas_?gemm_pack`` (older than 2017) still does the loop's products,
    by its GEMM."""
    monkeypatch.setattr(blas.load_mkl(), "_pack", {})
    rng = np.random.default_rng(5)
    inputs = (rng.standard_normal((4, 6, 5)), None, None, rng.standard_normal((4, 6, 32)), None)
    layer = LSTM(5, 32, num_layers=2, dtype=np.float64, blas="mkl", rng=np.random.default_rng(2))
    assert TimeLoop.for_cell(layer.cells[0][0]).caddr == 0
    compiled, python = both_loops(monkeypatch, lambda: layer, inputs)
    for a, b in zip(compiled, python):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert "mkl" not in TimeLoop.for_cell(layer.cells[0][0])._ws
