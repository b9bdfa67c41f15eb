"""Optimisers, gradient clipping and learning-rate schedules, with PyTorch's update rules.

An optimiser holds a model's ``params`` and ``grads`` (the arrays themselves, NumPy or CuPy) and
updates the parameters in place, through one scratch array per parameter (two with L2 weight
decay): a step allocates nothing. ``state_dict()`` holds JSON values and NumPy arrays; loaded into
a fresh optimiser over the same parameters, it continues the run bit for bit.

    opt = Adam(model.params, model.grads, lr=2e-3)
    model.backward(); clip_grad_norm(model.grads, 5.0); opt.step()
"""
from __future__ import annotations

import math

import numpy as np

from .backend import array_module, asarray, to_numpy
from .nn import fused


def _nonneg(owner: str, **values) -> None:
    for k, v in values.items():
        if not v >= 0:                                 # NaN fails too
            raise ValueError(f"{owner}: {k} must be >= 0, got {v!r}")


def _expect(obj, d, keys) -> None:
    """Refuse a state dict that is not ``obj``'s kind or lacks ``keys``."""
    name = type(obj).__name__
    got = d.get("type") if isinstance(d, dict) else type(d).__name__
    if got != name:
        raise ValueError(f"this state is for {got}, not {name}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{name} state lacks {', '.join(missing)}")


class Optimizer:
    """The shared part: argument checks, per-parameter state arrays, step count, state_dict.

    A subclass names its hyperparameters (``hyper_names``) and per-parameter state arrays
    (``state_names``) and writes ``_update(p, g, state, tmp)`` for one parameter, with ``tmp``
    a scratch array of ``p``'s shape."""

    hyper_names: tuple[str, ...] = ("lr", "weight_decay")
    state_names: tuple[str, ...] = ()
    decoupled = False            # weight decay is an L2 term added to the gradient, or not

    def __init__(self, params, grads, lr: float, weight_decay: float = 0.0):
        name, params, grads = type(self).__name__, list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"{name}: {len(params)} params but {len(grads)} grads")
        for i, (p, g) in enumerate(zip(params, grads)):
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(f"{name}: param {i} has shape {tuple(p.shape)} but grad {i} "
                                 f"has shape {tuple(g.shape)}")
            if p.dtype not in (np.float32, np.float64):
                raise ValueError(f"{name}: param {i} is {p.dtype}, expected float32 or float64")
        _nonneg(name, lr=lr, weight_decay=weight_decay)
        self.params, self.grads = params, grads
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.steps = 0
        self.state: list[dict] = [{} for _ in params]
        self._tmp = [array_module(p).empty_like(p) for p in params]
        self._decayed: list = [None] * len(params)    # scratch for g + weight_decay * p

    def zero_grad(self) -> None:
        for g in self.grads:
            g.fill(0)

    def step(self) -> None:
        """Update every parameter once from its gradient."""
        self.steps += 1
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            if self.weight_decay and not self.decoupled:
                # g + weight_decay * p, in a scratch array: the model's gradient stays as it is
                d = self._decayed[i]
                if d is None:
                    d = self._decayed[i] = array_module(p).empty_like(p)
                array_module(p).multiply(p, self.weight_decay, out=d)
                d += g
                g = d
            self._update(p, g, self.state[i], self._tmp[i])

    def _update(self, p, g, state: dict, tmp) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _buffer(state: dict, name: str, p, fill: float = 0.0):
        if name not in state:
            state[name] = array_module(p).full_like(p, fill)
        return state[name]

    # -- saving and loading ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"type", "hyper", "steps", "state"}``: JSON values and NumPy copies of the buffers."""
        hyper = {k: getattr(self, k) for k in self.hyper_names}
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()}
        return {"type": type(self).__name__, "hyper": hyper, "steps": self.steps,
                "state": [{k: np.array(to_numpy(v)) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, d: dict) -> None:
        """Restore hyperparameters (the learning rate included, as torch does), the step count
        and private copies of the buffers. Everything is checked before anything changes."""
        _expect(self, d, ("hyper", "steps", "state"))
        name, hyper, states = type(self).__name__, d["hyper"], d["state"]
        if set(hyper) != set(self.hyper_names):
            raise ValueError(f"{name} state has hyperparameters {sorted(hyper)}, expected "
                             f"{sorted(self.hyper_names)}")
        if len(states) != len(self.params):
            raise ValueError(f"{name} state holds {len(states)} parameters, this optimizer "
                             f"{len(self.params)}")
        for i, (s, p) in enumerate(zip(states, self.params)):
            for k, v in s.items():
                if k not in self.state_names or tuple(np.shape(v)) != tuple(p.shape):
                    raise ValueError(f"{name} state of param {i}: {k} has shape "
                                     f"{tuple(np.shape(v))}, the param {tuple(p.shape)}")
        for k, v in hyper.items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.steps = int(d["steps"])
        self.state = [{k: array_module(p).empty_like(p) for k in s}
                      for s, p in zip(states, self.params)]
        for s, mine, p in zip(states, self.state, self.params):
            for k, v in s.items():                     # copy, cast to p's dtype, move to p's device
                mine[k][...] = asarray(array_module(p), v)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD::

        g <- g + weight_decay * p
        b <- g  (first step),  b <- momentum * b + (1 - dampening) * g  (later steps)
        g <- g + momentum * b  (nesterov),  g <- b  (otherwise)
        p <- p - lr * g
    """

    hyper_names = ("lr", "weight_decay", "momentum", "dampening", "nesterov")
    state_names = ("momentum_buffer",)

    def __init__(self, params, grads, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, grads, lr, weight_decay)
        _nonneg("SGD", momentum=momentum)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), nesterov

    def _update(self, p, g, s, tmp):
        xp = array_module(p)
        if self.momentum:
            b = s.get("momentum_buffer")
            if b is None:
                b = s["momentum_buffer"] = g.copy()
            else:
                b *= self.momentum
                if self.dampening:
                    xp.multiply(g, 1 - self.dampening, out=tmp)
                    b += tmp
                else:
                    b += g
            if self.nesterov:
                xp.multiply(b, self.momentum, out=tmp)
                tmp += g
                g = tmp
            else:
                g = b
        xp.multiply(g, self.lr, out=tmp)
        p -= tmp


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad (``t`` counts steps from 1)::

        g <- g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        sum <- sum + g^2                        (sum starts at initial_accumulator_value)
        p <- p - clr * g / (sqrt(sum) + eps)
    """

    hyper_names = ("lr", "weight_decay", "lr_decay", "initial_accumulator_value", "eps")
    state_names = ("sum",)

    def __init__(self, params, grads, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        super().__init__(params, grads, lr, weight_decay)
        _nonneg("Adagrad", lr_decay=lr_decay, eps=eps,
                initial_accumulator_value=initial_accumulator_value)
        self.lr_decay, self.eps = float(lr_decay), float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def _update(self, p, g, s, tmp):
        xp = array_module(p)
        acc = self._buffer(s, "sum", p, self.initial_accumulator_value)
        xp.multiply(g, g, out=tmp)
        acc += tmp
        xp.sqrt(acc, out=tmp)
        tmp += self.eps
        xp.divide(g, tmp, out=tmp)
        tmp *= self.lr / (1 + (self.steps - 1) * self.lr_decay)
        p -= tmp


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop::

        g <- g + weight_decay * p
        v <- alpha * v + (1 - alpha) * g^2
        centered:  m <- alpha * m + (1 - alpha) * g,  d = sqrt(v - m^2) + eps
        otherwise: d = sqrt(v) + eps
        momentum > 0:  b <- momentum * b + g / d,  p <- p - lr * b
        otherwise:     p <- p - lr * g / d
    """

    hyper_names = ("lr", "weight_decay", "alpha", "eps", "momentum", "centered")
    state_names = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, grads, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, grads, lr, weight_decay)
        _nonneg("RMSprop", alpha=alpha, eps=eps, momentum=momentum)
        self.alpha, self.eps, self.momentum = float(alpha), float(eps), float(momentum)
        self.centered = bool(centered)

    def _update(self, p, g, s, tmp):
        xp, a = array_module(p), self.alpha
        v = self._buffer(s, "square_avg", p)
        v *= a
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - a
        v += tmp
        if self.centered:
            m = self._buffer(s, "grad_avg", p)
            xp.subtract(g, m, out=tmp)                 # torch's lerp: m + (1 - alpha) (g - m)
            tmp *= 1 - a
            m += tmp
            xp.multiply(m, m, out=tmp)
            xp.subtract(v, tmp, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:
            xp.sqrt(v, out=tmp)
        tmp += self.eps
        xp.divide(g, tmp, out=tmp)                     # g / d
        if self.momentum > 0:
            b = self._buffer(s, "momentum_buffer", p)
            b *= self.momentum
            b += tmp
            xp.multiply(b, self.lr, out=tmp)
        else:
            tmp *= self.lr
        p -= tmp


class Adam(Optimizer):
    """Adam, as torch.optim.Adam (weight decay is an L2 term added to the gradient)::

        g <- g + weight_decay * p
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    hyper_names = ("lr", "weight_decay", "betas", "eps")
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, grads, lr, weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas!r}")
        _nonneg(type(self).__name__, eps=eps)
        self.betas, self.eps = (float(b1), float(b2)), float(eps)

    def _update(self, p, g, s, tmp):
        xp, t = array_module(p), self.steps
        b1, b2 = self.betas
        m = self._buffer(s, "exp_avg", p)
        v = self._buffer(s, "exp_avg_sq", p)
        if xp is np and fused.available() and all(a.flags.c_contiguous for a in (p, g, m, v)):
            c = p.dtype.type                                # the ufuncs' scalars are cast so too
            fused.adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                              c(1 - b1), c(b2), c(1 - b2), c((1 - b2 ** t) ** 0.5), c(self.eps),
                              c(self.lr / (1 - b1 ** t)))
            return
        xp.subtract(g, m, out=tmp)                     # torch's lerp: m + (1 - beta1) (g - m)
        tmp *= 1 - b1
        m += tmp
        v *= b2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp /= (1 - b2 ** t) ** 0.5
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - b1 ** t)
        p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW::

        p <- p * (1 - lr * weight_decay), then Adam's step with the gradient as it is
    """

    decoupled = True

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, grads, lr, betas, eps, weight_decay)

    def _update(self, p, g, s, tmp):
        if self.weight_decay:
            p *= 1 - self.lr * self.weight_decay
        super()._update(p, g, s, tmp)


# -- clipping ---------------------------------------------------------------------------------
def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale all gradients by ``max_norm / (total + 1e-6)`` when that is below 1, ``total`` being
    their global L2 norm, and return ``total`` (before clipping), as torch's clip_grad_norm_.
    A non-finite ``total`` is returned with the gradients untouched: the caller decides."""
    _nonneg("clip_grad_norm", max_norm=max_norm)
    squares = [fused.sum_squares(g.reshape(-1)) if _fast_host(g) else
               array_module(g).vdot(g.ravel(), g.ravel()) for g in grads]
    total = math.sqrt(float(sum(squares)))             # one device sync, not one per array
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for g in grads:
            g *= coef
    return total


def _fast_host(g) -> bool:
    """A contiguous NumPy array that the numba kernels can take."""
    return fused.available() and isinstance(g, np.ndarray) and g.flags.c_contiguous


def clip_grad_value(grads, clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``, in place."""
    _nonneg("clip_grad_value", clip_value=clip_value)
    for g in grads:
        array_module(g).clip(g, -clip_value, clip_value, out=g)


# -- schedules --------------------------------------------------------------------------------
class _Schedule:
    """At each ``step()`` (once per epoch) multiply ``opt.lr`` by ``gamma`` when ``_decays``
    says so, as torch's chainable schedules do: the rates are torch's to the last bit."""

    hyper_names: tuple[str, ...] = ()

    def __init__(self, opt: Optimizer, gamma: float):
        self.opt, self.gamma, self.last_epoch = opt, float(gamma), 0

    def step(self) -> None:
        self.last_epoch += 1
        if self._decays(self.last_epoch):
            self.opt.lr = self.opt.lr * self.gamma

    def _decays(self, epoch: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        names = ("last_epoch", "gamma") + self.hyper_names
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in names}}

    def load_state_dict(self, d: dict) -> None:
        names = ("last_epoch", "gamma") + self.hyper_names
        _expect(self, d, names)
        for k in names:
            setattr(self, k, d[k])


def _count(owner: str, name: str, value, least: int) -> int:
    if not (isinstance(value, (int, np.integer)) and value >= least):
        raise ValueError(f"{owner}: {name} must be an integer >= {least}, got {value!r}")
    return int(value)


class StepLR(_Schedule):
    """``lr <- lr * gamma`` every ``step_size`` steps: ``lr_k = lr_0 * gamma ** (k // step_size)``."""

    hyper_names = ("step_size",)

    def __init__(self, opt: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(opt, gamma)
        self.step_size = _count("StepLR", "step_size", step_size, 1)

    def _decays(self, epoch):
        return epoch % self.step_size == 0


class ExponentialLR(_Schedule):
    """``lr <- lr * gamma`` at each step after the first ``start``:
    ``lr_k = lr_0 * gamma ** max(0, k - start)``; ``start=0`` is torch's ExponentialLR.

    Zaremba et al.'s "lr 1, halved each epoch after the 4th" (epoch ``e`` runs at ``lr_{e-1}``)
    is ``ExponentialLR(SGD(..., lr=1), gamma=0.5, start=3)``: 1, 1, 1, 1, 0.5, 0.25, ..."""

    hyper_names = ("start",)

    def __init__(self, opt: Optimizer, gamma: float, start: int = 0):
        super().__init__(opt, gamma)
        self.start = _count("ExponentialLR", "start", start, 0)

    def _decays(self, epoch):
        return epoch > self.start


class ReduceLROnPlateau:
    """``lr <- max(lr * factor, min_lr)`` once the metric given to ``step(metric)`` has not
    improved for more than ``patience`` calls; then ``cooldown`` calls pass before counting
    again, and a reduction smaller than ``eps`` is skipped (torch's rules). Improved means

        metric < best * (1 - threshold)   (mode 'min', threshold_mode 'rel')
        metric < best - threshold         ('min', 'abs')
        metric > best * (1 + threshold)   ('max', 'rel')
        metric > best + threshold         ('max', 'abs')
    """

    fields = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr",
              "eps", "best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def __init__(self, opt: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8):
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max' and threshold_mode "
                             f"'rel' or 'abs', got {mode!r} and {threshold_mode!r}")
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor!r}")
        _nonneg("ReduceLROnPlateau", threshold=threshold, min_lr=min_lr, eps=eps)
        self.opt, self.mode, self.threshold_mode = opt, mode, threshold_mode
        self.factor, self.threshold, self.min_lr, self.eps = factor, threshold, min_lr, eps
        self.patience = _count("ReduceLROnPlateau", "patience", patience, 0)
        self.cooldown = _count("ReduceLROnPlateau", "cooldown", cooldown, 0)
        self.best = self._worst()
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def _is_better(self, a: float) -> bool:
        t, best = self.threshold, self.best
        if self.mode == "min":
            return a < (best * (1 - t) if self.threshold_mode == "rel" else best - t)
        return a > (best * (1 + t) if self.threshold_mode == "rel" else best + t)

    def step(self, metric: float) -> None:
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0                    # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            new = max(self.opt.lr * self.factor, self.min_lr)
            if self.opt.lr - new > self.eps:
                self.opt.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict:
        d = {"type": "ReduceLROnPlateau", **{k: getattr(self, k) for k in self.fields}}
        if self.best == self._worst():                 # JSON has no infinity: None, "none yet"
            d["best"] = None
        return d

    def load_state_dict(self, d: dict) -> None:
        _expect(self, d, self.fields)
        if d["mode"] not in ("min", "max") or d["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau state has mode {d['mode']!r} and threshold_mode "
                             f"{d['threshold_mode']!r}")
        for k in self.fields:
            setattr(self, k, d[k])
        if self.best is None:
            self.best = self._worst()
