"""Linear, Embedding, Dropout and SoftmaxCrossEntropy: gradients, PyTorch parity, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.gradcheck import gradcheck_layer, relative_error
from rnnkit.nn import Dropout, Embedding, Linear, SoftmaxCrossEntropy


def test_linear_gradcheck_any_leading_dims():
    rng = np.random.default_rng(0)
    lin = Linear(4, 3, rng=rng, dtype=np.float64)
    for shape in [(4,), (5, 4), (2, 3, 4)]:
        report = gradcheck_layer(lin, rng.standard_normal(shape), rng=rng)
        assert report.ok, str(report)
        assert lin(rng.standard_normal(shape)).shape == shape[:-1] + (3,)


def test_linear_backward_consumes_what_forward_kept():
    """The input kept for the weight gradient is let go by backward (a language model's decoder
    keeps a whole sequence of states); a second backward is an error, not stale numbers."""
    lin = Linear(4, 3, rng=np.random.default_rng(0), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((5, 4))
    lin(x)
    assert lin._x2 is not None
    dx = lin.backward(np.ones((5, 3)))
    assert lin._x2 is None
    np.testing.assert_allclose(dx, np.ones((5, 3)) @ lin.weight)
    with pytest.raises(RuntimeError, match="before forward"):
        lin.backward(np.ones((5, 3)))


def test_linear_backward_into_a_callers_buffer():
    """``backward(dy, out=buf)`` writes dx into ``buf`` (even the input forward was given: dW
    has read it by then) with the same numbers; a buffer of the wrong shape, dtype or layout is
    refused before anything is computed."""
    rng = np.random.default_rng(2)
    lin = Linear(4, 3, rng=rng, dtype=np.float64)
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    lin(x)
    want = lin.backward(dy)
    dW = lin.grads[0].copy()
    buf = x.copy()
    lin(buf)
    got = lin.backward(dy, out=buf)
    assert got.base is buf or got is buf
    np.testing.assert_allclose(buf, want, rtol=1e-12)
    np.testing.assert_allclose(lin.grads[0], dW, rtol=1e-12)
    for bad, why in ((np.empty((2, 5, 3)), "shape"), (np.empty((2, 5, 4), np.float32), "dtype"),
                     (np.empty((4, 5, 2)).transpose(2, 1, 0), "C-contiguous")):
        lin(x)
        with pytest.raises(ValueError, match=why):
            lin.backward(dy, out=bad)
        assert lin._x2 is not None                     # refused before anything was consumed


class _FlagsWithoutWriteable:
    """CuPy's ``ndarray.flags``: c_contiguous, f_contiguous and owndata, no writeable."""
    c_contiguous, f_contiguous, owndata = True, False, True


class _CupyLikeFlags(np.ndarray):
    @property
    def flags(self):
        return _FlagsWithoutWriteable()


def test_an_out_buffer_needs_no_writeable_flag():
    """A GPU array's flags have no ``writeable`` (CuPy's never did): the language model's
    buffers (``out=`` of the recurrent layers and of the decoder's backward) must not ask."""
    rng = np.random.default_rng(3)
    lin = Linear(4, 3, rng=rng, dtype=np.float64)
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    lin(x)
    want = lin.backward(dy)
    lin(x)
    buf = np.empty((2, 5, 4)).view(_CupyLikeFlags)
    lin.backward(dy, out=buf)
    np.testing.assert_allclose(np.asarray(buf), want, rtol=1e-12)


def test_linear_without_bias_and_init_bounds():
    rng = np.random.default_rng(1)
    lin = Linear(16, 8, bias=False, rng=rng)
    assert list(lin.state_dict()) == ["weight"]
    assert np.abs(lin.weight).max() <= 0.25 and lin.weight.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\).*\(2, 15\)"):
        lin(np.zeros((2, 15), np.float32))


def test_embedding_gradients_and_padding_idx():
    rng = np.random.default_rng(2)
    emb = Embedding(6, 3, padding_idx=1, rng=rng, dtype=np.float64)
    assert np.all(emb.weight[1] == 0)
    ids = np.array([[0, 1, 2], [2, 5, 1]])
    y = emb(ids)
    np.testing.assert_array_equal(y, emb.weight[ids])
    dy = rng.standard_normal(y.shape)
    emb.backward(dy)
    want = np.zeros((6, 3))
    for (i, j), k in np.ndenumerate(ids):
        want[k] += dy[i, j]
    want[1] = 0
    np.testing.assert_allclose(emb.grads[0], want)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 6\)"):
        emb(np.array([6]))
    with pytest.raises(ValueError, match="integer"):
        emb(np.array([0.5]))


def test_dropout_inverted_and_reproducible():
    x = np.ones((1000, 50), np.float32)
    d = Dropout(0.3, rng=np.random.default_rng(3))
    y = d(x)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.7)}
    assert abs(y.mean() - 1.0) < 0.02
    np.testing.assert_array_equal(d.backward(x), y)
    y2 = Dropout(0.3, rng=np.random.default_rng(3))(x)
    np.testing.assert_array_equal(y, y2)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_cross_entropy_gradcheck_and_ignore_index():
    rng = np.random.default_rng(4)
    ce = SoftmaxCrossEntropy(ignore_index=-1, dtype=np.float64)
    logits = rng.standard_normal((2, 3, 5))
    targets = np.array([[0, 4, -1], [2, -1, 1]])
    report = gradcheck_layer(ce, logits, targets, rng=rng)
    assert report.ok, str(report)
    ce(logits, targets)
    assert ce.count == 4
    g = ce.backward()
    assert np.all(g[0, 2] == 0) and np.all(g[1, 1] == 0)


def test_cross_entropy_stable_for_huge_logits():
    ce = SoftmaxCrossEntropy()
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32)
    loss = ce(logits, np.array([0, 1]))
    assert np.isfinite(loss) and abs(loss - np.log(2) / 2) < 1e-6
    assert np.all(np.isfinite(ce.backward()))


def test_cross_entropy_all_ignored_is_zero_and_errors():
    ce = SoftmaxCrossEntropy()
    assert ce(np.zeros((2, 3), np.float32), np.array([-100, -100])) == 0.0
    assert np.all(ce.backward() == 0)
    with pytest.raises(ValueError, match="does not match"):
        ce(np.zeros((2, 3), np.float32), np.array([0, 1, 2]))
    for bad in ([0, 3], [-5, 1], [7, -2]):            # checked after the forward's work
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            ce(np.zeros((2, 3), np.float32), np.array(bad))
    assert ce(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == 0.0 and ce.count == 0


def test_cross_entropy_backward_needs_a_forward():
    ce = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="before forward"):
        ce.backward()
    ce(np.zeros((2, 3), np.float32), np.array([0, 1]))
    ce.backward()
    with pytest.raises(RuntimeError, match="twice"):
        ce.backward()


def test_parity_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    lin = Linear(4, 7, rng=rng, dtype=np.float64)
    emb = Embedding(9, 4, padding_idx=0, rng=rng, dtype=np.float64)
    ce = SoftmaxCrossEntropy(dtype=np.float64)
    tl, te = torch.nn.Linear(4, 7).double(), torch.nn.Embedding(9, 4, padding_idx=0).double()
    tl.load_state_dict({k: torch.tensor(v) for k, v in lin.state_dict().items()})
    te.load_state_dict({k: torch.tensor(v) for k, v in emb.state_dict().items()})
    ids = rng.integers(0, 9, (3, 5))
    targets = rng.integers(0, 7, (3, 5))
    targets[0, 0] = -100
    loss = ce(lin(emb(ids)), targets)
    emb.backward(lin.backward(ce.backward()))
    tloss = torch.nn.functional.cross_entropy(tl(te(torch.tensor(ids))).reshape(-1, 7),
                                              torch.tensor(targets).reshape(-1))
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-12
    for ours, theirs in [(lin.grads[0], tl.weight.grad), (lin.grads[1], tl.bias.grad),
                         (emb.grads[0], te.weight.grad)]:
        assert relative_error(theirs.numpy(), ours) < 1e-12
