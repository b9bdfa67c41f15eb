"""Gradient checks, cell-by-hand equality, stateful runs and bad input for RNN/LSTM/GRU."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from rnnkit.gradcheck import gradcheck_layer, relative_error
from rnnkit.nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, fused

LAYERS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}), "lstm": (LSTM, {}),
          "gru": (GRU, {})}
CELLS = {"rnn_tanh": (RNNCell, {}), "rnn_relu": (RNNCell, {"nonlinearity": "relu"}),
         "lstm": (LSTMCell, {}), "gru": (GRUCell, {})}


def make(kind, D, H, rng, **kw):
    cls, extra = LAYERS[kind]
    return cls(D, H, rng=rng, dtype=np.float64, **extra, **kw)


def state(kind, LD, N, H, rng):
    h = rng.standard_normal((LD, N, H))
    return (h, rng.standard_normal((LD, N, H))) if kind == "lstm" else h


OPTIONS = list(itertools.product(LAYERS, (1, 2), (False, True), (False, True)))


@pytest.mark.parametrize("kind,layers,bidir,lengths", OPTIONS)
def test_gradcheck_sequence_layers(kind, layers, bidir, lengths):
    """Inputs, nonzero h0 (and c0) and every parameter, with nonzero dh_n (gradcheck draws it)."""
    rng = np.random.default_rng(hash((kind, layers, bidir, lengths)) % 2**32)
    N, T, D, H = 3, 5, 3, 4
    layer = make(kind, D, H, rng, num_layers=layers, bidirectional=bidir)
    x = rng.standard_normal((N, T, D))
    h0 = state(kind, layers * (2 if bidir else 1), N, H, rng)
    kw = {"lengths": np.array([5, 2, 4])} if lengths else {}
    report = gradcheck_layer(layer, x, h0, rng=rng, forward_kwargs=kw)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_dropout_fixed_mask(kind):
    rng = np.random.default_rng(7)
    layer = make(kind, 3, 4, rng, num_layers=3, dropout=0.4, bidirectional=True)

    def reseed():
        layer.rng = np.random.default_rng(123)       # the same mask at every evaluation

    report = gradcheck_layer(layer, rng.standard_normal((2, 4, 3)), rng=rng, before_forward=reseed)
    assert report.ok, str(report)
    # the mask does act: training differs from eval
    layer.rng = np.random.default_rng(123)
    x = rng.standard_normal((2, 4, 3))
    y_train, _ = layer(x)
    y_eval, _ = layer.eval()(x)
    assert not np.allclose(y_train, y_eval)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_no_bias_time_major(kind):
    rng = np.random.default_rng(8)
    layer = make(kind, 2, 3, rng, num_layers=2, bias=False, batch_first=False)
    report = gradcheck_layer(layer, rng.standard_normal((4, 2, 2)), rng=rng,
                             forward_kwargs={"lengths": np.array([4, 3])})
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", list(CELLS))
def test_gradcheck_cells(kind):
    rng = np.random.default_rng(9)
    cls, extra = CELLS[kind]
    cell = cls(3, 4, rng=rng, dtype=np.float64, **extra)
    x = rng.standard_normal((2, 3))
    h = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4))) if kind == "lstm" else rng.standard_normal((2, 4))
    report = gradcheck_layer(cell, x, h, rng=rng)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind,bidir", list(itertools.product(LAYERS, (False, True))))
def test_sequence_equals_stepping_the_cell(kind, bidir):
    """The fast sequence layer gives the numbers of its cell stepped by hand, gradients too."""
    rng = np.random.default_rng(10)
    N, T, D, H = 3, 6, 4, 5
    layer = make(kind, D, H, rng, bidirectional=bidir)
    x = rng.standard_normal((N, T, D))
    dy = rng.standard_normal((N, T, (2 if bidir else 1) * H))
    y, _ = layer(x)
    dx, _ = layer.backward(dy)
    cls, extra = CELLS[kind]
    ys, dxs = [], np.zeros_like(x)
    for d, sfx in enumerate(["_l0", "_l0_reverse"][: 2 if bidir else 1]):
        cell = cls(D, H, rng=rng, dtype=np.float64, **extra)
        cell.load_state_dict({k: layer.state_dict()[k + sfx] for k in cell.state_dict()})
        times = range(T - 1, -1, -1) if d else range(T)
        st, outs, caches = None, {}, []
        for t in times:
            st = cell(x[:, t], st)
            outs[t] = st[0] if kind == "lstm" else st
            caches.append(cell._step_cache)
        ys.append(np.stack([outs[t] for t in range(T)], axis=1))
        grads = {k: np.zeros_like(v) for k, v in cell.grad_dict().items()}
        dst = None
        for t, cache in zip(reversed(list(times)), reversed(caches)):
            cell._step_cache = cache
            dh = dy[:, t, d * H:(d + 1) * H] + (0 if dst is None else (dst[0] if kind == "lstm" else dst))
            if kind == "lstm":
                dxt, dst = cell.backward(dh, None if dst is None else dst[1])
            else:
                dxt, dst = cell.backward(dh)
            dxs[:, t] += dxt
            for k, g in cell.grad_dict().items():
                grads[k] += g
        for k, g in grads.items():
            np.testing.assert_allclose(layer.grad_dict()[k + sfx], g, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, np.concatenate(ys, axis=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dxs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_stateful_carries_state_and_equals_one_long_run(kind):
    rng = np.random.default_rng(11)
    N, T, D, H = 2, 8, 3, 4
    layer = make(kind, D, H, rng, num_layers=2, stateful=True)
    x = rng.standard_normal((N, T, D))
    y1, _ = layer(x[:, :5])
    y2, _ = layer(x[:, 5:])
    layer.reset_state()
    y_full, _ = layer(x)
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), y_full, rtol=1e-12)
    layer.reset_state()
    y_again, _ = layer(x[:, :5])
    np.testing.assert_allclose(y_again, y1, rtol=1e-12)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_stateful_second_chunk(kind):
    """Truncated BPTT: the second chunk's gradients stop at the carried state."""
    rng = np.random.default_rng(12)
    layer = make(kind, 3, 4, rng, stateful=True)
    layer(rng.standard_normal((2, 3, 3)))
    carried = [s.copy() for s in layer._state]

    def restore():
        layer._state = [s.copy() for s in carried]

    report = gradcheck_layer(layer, rng.standard_normal((2, 4, 3)), rng=rng, before_forward=restore)
    assert report.ok, str(report)


def test_lengths_semantics():
    rng = np.random.default_rng(13)
    layer = make("gru", 2, 3, rng, bidirectional=True)
    x = rng.standard_normal((3, 5, 2))
    lengths = np.array([2, 5, 3])
    y, h_n = layer(x, lengths=lengths)
    for i, L in enumerate(lengths):
        yi, hi = layer(x[i:i + 1, :L])                 # the sequence alone, unpadded
        np.testing.assert_allclose(y[i, :L], yi[0], rtol=1e-12)
        assert np.all(y[i, L:] == 0)
        np.testing.assert_allclose(h_n[:, i], hi[:, 0], rtol=1e-12)
    layer(x, lengths=lengths)                          # backward follows the last forward
    dx, _ = layer.backward(np.ones_like(y))
    for i, L in enumerate(lengths):
        assert np.all(dx[i, L:] == 0)


def test_float32_default_and_dtypes_kept():
    rng = np.random.default_rng(14)
    layer = LSTM(3, 4, rng=rng)
    assert all(p.dtype == np.float32 for p in layer.params)
    y, (h, c) = layer(rng.standard_normal((2, 3, 3)).astype(np.float32))
    assert y.dtype == h.dtype == c.dtype == np.float32
    dx, (dh, dc) = layer.backward(np.ones_like(y))
    assert dx.dtype == dh.dtype == np.float32


def test_contract_names_and_order_match_torch():
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, rng=np.random.default_rng(0))
    names = list(layer.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse"]
    assert layer.state_dict()["weight_ih_l1"].shape == (16, 8)
    assert [g.shape for g in layer.grads] == [p.shape for p in layer.params]
    assert list(layer.grad_dict()) == names


# -- bad input ------------------------------------------------------------------------------
def test_wrong_input_width_names_shapes():
    layer = RNN(3, 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, T, 3\).*\(2, 5, 4\)"):
        layer(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="dtype float64, expected float32"):
        layer(np.zeros((2, 5, 3)))


def test_misshapen_h0_and_lengths():
    layer = LSTM(3, 4, num_layers=2, rng=np.random.default_rng(0))
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"h0 of shape \(2, 2, 4\), got \(1, 2, 4\)"):
        layer(x, (np.zeros((1, 2, 4), np.float32), None))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        layer(x, lengths=np.array([6, 2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        layer(x, lengths=np.array([0, 2]))
    with pytest.raises(ValueError, match="lengths must be 2 integers"):
        layer(x, lengths=np.array([1, 2, 3]))


def test_state_dict_errors_list_every_problem():
    layer = GRU(3, 4, rng=np.random.default_rng(0))
    sd = {k: v.copy() for k, v in layer.state_dict().items()}
    before = {k: v.copy() for k, v in sd.items()}
    del sd["bias_hh_l0"]
    sd["weight_ih_l0"] = np.zeros((12, 5))
    sd["weight_ih_l1"] = np.zeros((12, 4))
    with pytest.raises(ValueError) as e:
        layer.load_state_dict(sd)
    msg = str(e.value)
    assert "missing: bias_hh_l0" in msg and "unexpected: weight_ih_l1" in msg
    assert "weight_ih_l0: expected (12, 3), got (12, 5)" in msg
    for k, v in layer.state_dict().items():          # nothing was written
        np.testing.assert_array_equal(v, before[k])


def test_backward_shape_errors():
    layer = RNN(3, 4, rng=np.random.default_rng(0))
    y, _ = layer(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"dout of shape \(2, 5, 4\)"):
        layer.backward(np.zeros((2, 4, 4), np.float32))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError):
        LSTM(3, 4, dropout=1.0)
    with pytest.raises(ValueError):
        GRU(3, 4, num_layers=0)
    with pytest.raises(ValueError):
        LSTM(3, 4, dtype=np.float16)


@pytest.mark.skipif(not fused.available(), reason="numba is not installed")
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_numba_kernels_equal_numpy_kernels(kind, dtype, tol):
    """Training-sized random data, two layers, both directions, nonzero h0 and dh_n, variable
    lengths that all end before T (the last steps have no active sequence)."""
    rng = np.random.default_rng(15)
    cls, extra = LAYERS[kind]
    layers = [cls(6, 9, num_layers=2, bidirectional=True, rng=np.random.default_rng(1),
                  dtype=dtype, kernels=k, **extra) for k in ("numpy", "numba")]
    x = rng.standard_normal((5, 9, 6)).astype(dtype)
    lengths = np.array([7, 3, 5, 1, 6])
    dy = rng.standard_normal((5, 9, 18)).astype(dtype)
    h0 = state(kind, 4, 5, 9, rng)
    h0 = tuple(a.astype(dtype) for a in h0) if kind == "lstm" else h0.astype(dtype)
    dhn = state(kind, 4, 5, 9, rng)
    dhn = tuple(a.astype(dtype) for a in dhn) if kind == "lstm" else dhn.astype(dtype)
    outs = []
    for layer in layers:
        y, h = layer(x, h0, lengths=lengths)
        dx, dh0 = layer.backward(dy, dhn)
        flat = (lambda s: list(s)) if kind == "lstm" else (lambda s: [s])
        outs.append([y, dx] + flat(h) + flat(dh0) + list(layer.grads))
    for a, b in zip(*outs):
        assert relative_error(np.asarray(a, np.float64), np.asarray(b, np.float64)) < tol


def test_kernels_argument():
    with pytest.raises(ValueError, match="kernels must be"):
        LSTM(3, 4, kernels="cuda")
    assert not LSTM(3, 4, kernels="numpy").cells[0][0].fused_kernels


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_lengths_all_shorter_than_T(kind):
    """Steps past every sequence's end: no active rows, zero outputs, no gradient."""
    rng = np.random.default_rng(21)
    layer = make(kind, 2, 3, rng, num_layers=2, bidirectional=True)
    x = rng.standard_normal((2, 6, 2))
    h0 = state(kind, 4, 2, 3, rng)
    report = gradcheck_layer(layer, x, h0, rng=rng, forward_kwargs={"lengths": np.array([3, 2])})
    assert report.ok, str(report)
    y, _ = layer(x, h0, lengths=np.array([3, 2]))
    assert np.all(y[:, 3:] == 0) and np.all(y[1, 2:] == 0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_backward_takes_dout_of_another_dtype_and_any_layout(batch_first):
    """dout may be a non-contiguous view or of another float dtype; the layer reads it in place
    (no time-major copy) or converts it, with the same gradients as from a contiguous array of
    its own dtype."""
    rng = np.random.default_rng(3)
    N, T, D, H = 3, 5, 4, 6
    layer = LSTM(D, H, num_layers=2, batch_first=batch_first, rng=np.random.default_rng(0))
    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(np.float32)
    dout = rng.standard_normal((N, T, H) if batch_first else (T, N, H))
    results = []
    for d in (dout.astype(np.float32), dout, np.asfortranarray(dout.astype(np.float32))):
        layer(x)
        dx, _ = layer.backward(d)
        results.append((dx, [g.copy() for g in layer.grads]))
    for dx, grads in results[1:]:
        np.testing.assert_allclose(dx, results[0][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_forward_into_a_callers_buffer(batch_first, lengths):
    """``forward(x, out=buf)`` writes the output into ``buf`` and returns it, with the numbers
    (and the zeroed padding) of a fresh output; backward is unchanged. Bad buffers are refused."""
    rng = np.random.default_rng(4)
    N, T, D, H = 3, 5, 4, 6
    layer = GRU(D, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                rng=np.random.default_rng(0))
    shape = (N, T, 2 * H) if batch_first else (T, N, 2 * H)
    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(np.float32)
    lens = None if lengths is None else np.array(lengths)
    want, h_want = layer(x, lengths=lens)
    dout = rng.standard_normal(shape).astype(np.float32)
    dx_want, _ = layer.backward(dout)
    buf = np.full(shape, np.nan, np.float32)
    got, h_got = layer(x, lengths=lens, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    np.testing.assert_array_equal(h_got, h_want)
    dx, _ = layer.backward(dout)
    np.testing.assert_array_equal(dx, dx_want)
    for bad, why in ((np.empty((N, T, H), np.float32), "shape"),
                     (np.empty(shape, np.float64), "dtype"),
                     (np.empty(shape[::-1], np.float32).T, "C-contiguous")):
        with pytest.raises(ValueError, match=why):
            layer(x, out=bad)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_weights_are_the_parameters_reordered_and_scaled(kind, dtype):
    """``Fused``'s matrices, from their definition; they are written over buffers the cell
    keeps, so a second ``fused()`` after the parameters change gives the new ones."""
    cls, kw = CELLS[kind]
    cell = cls(6, 5, rng=np.random.default_rng(0), dtype=dtype, **kw)
    for step in range(2):
        f = cell.fused()
        order = np.arange(cell.gates * 5) if f.order is None else np.asarray(f.order)
        scale = np.asarray(f.scale)[:, None]
        Wx, Wh = cell.weight_ih[order], cell.weight_hh[order]
        np.testing.assert_array_equal(f.Wx, Wx)
        np.testing.assert_array_equal(f.Wh, Wh)
        np.testing.assert_array_equal(f.WxT, (Wx * scale).T)
        np.testing.assert_array_equal(f.WhT, (Wh * scale).T)
        assert f.WhT.flags.c_contiguous and f.WxT.dtype == f.WhT.dtype == dtype
        for p in cell.params:                       # as an optimizer's step would
            p -= 0.25 * np.random.default_rng(step).standard_normal(p.shape).astype(dtype)
