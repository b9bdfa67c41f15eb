"""Optimisers, clipping and schedules: PyTorch's numbers, exact resume, argument checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnkit import optim

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


def problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    return rng, params, [np.zeros_like(p) for p in params]


def drive(opt, grads, rng, steps):
    for _ in range(steps):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        opt.step()


@pytest.mark.parametrize("name,kw", CASES)
def test_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    rng, params, grads = problem()
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = getattr(optim, name)(params, grads, **kw)
    theirs = getattr(torch.optim, name)(tparams, **kw)
    for _ in range(6):
        for g, t in zip(grads, tparams):
            g[...] = rng.standard_normal(g.shape)
            t.grad = torch.tensor(g.copy())
        ours.step()
        theirs.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_formulas_without_torch():
    """One Adam and one momentum-SGD step written out by hand."""
    p, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    opt = optim.Adam([p], [g], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    opt.step()
    m, v = 0.1 * g, 0.01 * g * g
    want = np.array([1.0, -2.0]) - 0.1 / 0.1 * m / (np.sqrt(v / 0.01) + 1e-8)
    np.testing.assert_allclose(p, want, rtol=1e-14)
    p, g = np.array([1.0]), np.array([2.0])
    opt = optim.SGD([p], [g], lr=0.5, momentum=0.9)
    opt.step()                    # buffer = g
    opt.step()                    # buffer = 0.9 g + g
    np.testing.assert_allclose(p, [1.0 - 0.5 * 2.0 - 0.5 * 3.8])


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resume_continues_exactly(name, kw, dtype):
    rng, params, grads = problem(1, dtype)
    opt = getattr(optim, name)(params, grads, **kw)
    drive(opt, grads, rng, 3)
    saved_state, saved_params = opt.state_dict(), [p.copy() for p in params]
    rng_state = rng.bit_generator.state
    drive(opt, grads, rng, 4)
    rng.bit_generator.state = rng_state
    params2 = [p.copy() for p in saved_params]
    grads2 = [np.zeros_like(p) for p in params2]
    opt2 = getattr(optim, name)(params2, grads2, **kw)
    opt2.load_state_dict(saved_state)
    drive(opt2, grads2, rng, 4)
    for a, b in zip(params, params2):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_state_dict_mismatch_and_argument_errors():
    _, params, grads = problem()
    opt = optim.Adam(params, grads)
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="holds 2 parameters"):
        optim.Adam(params[:1], grads[:1]).load_state_dict(state)
    with pytest.raises(ValueError, match="for Adam, not SGD"):
        optim.SGD(params, grads, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam([params[0], np.zeros(6)], [grads[0], np.zeros(6)]).load_state_dict(state)
    with pytest.raises(ValueError, match="grad"):
        optim.SGD(params, grads[:1], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(params, grads, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, grads, lr=0.1, nesterov=True)


def test_clip_grad_norm_and_value():
    grads = [np.array([3.0, 0.0]), np.array([[4.0]])]
    total = optim.clip_grad_norm(grads, 1.0)
    assert total == 5.0
    np.testing.assert_allclose(np.sqrt(sum((g ** 2).sum() for g in grads)), 1.0, rtol=1e-6)
    grads = [np.array([0.3, 0.4])]
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(grads[0], [0.3, 0.4])          # under the limit: untouched
    grads = [np.array([np.nan, 1.0])]
    assert math.isnan(optim.clip_grad_norm(grads, 1.0))
    grads = [np.array([-3.0, 0.5, 2.0])]
    optim.clip_grad_value(grads, 1.0)
    np.testing.assert_array_equal(grads[0], [-1.0, 0.5, 1.0])


def test_clip_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((4, 3)) * 10, rng.standard_normal(7)]
    ts = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(ts, grads):
        t.grad = torch.tensor(g.copy())
    total = optim.clip_grad_norm(grads, 2.0)
    ttotal = torch.nn.utils.clip_grad_norm_(ts, 2.0)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def _lrs(schedule, opt, n, metrics=None):
    out = []
    for i in range(n):
        schedule.step(*([metrics[i]] if metrics else []))
        out.append(opt.lr)
    return out


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    _, params, grads = problem()
    pairs = [(lambda o: optim.StepLR(o, 3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (lambda o: optim.ExponentialLR(o, 0.7), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.7))]
    for ours_f, theirs_f in pairs:
        opt = optim.SGD(params, grads, lr=1.0)
        t = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        ours, theirs = ours_f(opt), theirs_f(t)
        want = []
        for _ in range(8):
            t.step()
            theirs.step()
            want.append(t.param_groups[0]["lr"])
        assert _lrs(ours, opt, 8) == pytest.approx(want, rel=1e-12)
    metrics = [5, 4, 4, 4, 4, 3.9999, 4, 4, 4, 4, 2, 2, 2, 2]
    opt = optim.SGD(params, grads, lr=1.0)
    t = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ours = optim.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(t, factor=0.5, patience=2, cooldown=1, min_lr=0.1)
    want = []
    for m in metrics:
        theirs.step(m)
        want.append(t.param_groups[0]["lr"])
    assert _lrs(ours, opt, len(metrics), metrics) == pytest.approx(want)


def test_zaremba_schedule_and_schedule_resume():
    _, params, grads = problem()
    opt = optim.SGD(params, grads, lr=1.0)
    sched = optim.ExponentialLR(opt, 0.5, start=3)
    lrs = [opt.lr] + _lrs(sched, opt, 6)                 # lr of epochs 1..7
    assert lrs == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    opt2 = optim.SGD(params, grads, lr=99.0)
    plateau = optim.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    _lrs(plateau, opt, 3, [3, 2, 2])
    p2 = optim.ReduceLROnPlateau(opt2, factor=0.5, patience=1)
    p2.load_state_dict(plateau.state_dict())
    opt2.lr = opt.lr
    assert _lrs(plateau, opt, 3, [2, 2, 2]) == _lrs(p2, opt2, 3, [2, 2, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_one_pass_kernel_equals_the_ufuncs_to_the_bit(name, dtype, monkeypatch):
    """With numba, Adam updates each parameter in one compiled pass; without, with ufuncs."""
    from rnnkit.nn import fused
    if not fused.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    start = [rng.standard_normal((30, 7)).astype(dtype), rng.standard_normal(11).astype(dtype)]
    runs = []
    for use_numba in (True, False):
        monkeypatch.setattr(fused, "available", lambda u=use_numba: u)
        params = [p.copy() for p in start]
        grads = [np.zeros_like(p) for p in params]
        opt = getattr(optim, name)(params, grads, lr=1e-2, weight_decay=0.1)
        drive(opt, grads, np.random.default_rng(4), 25)
        runs.append(params + [a for s in opt.state for a in s.values()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
