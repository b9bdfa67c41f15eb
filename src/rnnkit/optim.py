"""Optimisers, gradient clipping and learning-rate schedules, with PyTorch's update rules.

An optimiser holds the model's ``params`` and ``grads`` lists (the arrays themselves) and updates
the parameters in place; backward writes the gradients in place, so the references stay valid.
Every optimiser and schedule has ``state_dict()`` / ``load_state_dict()`` (JSON values and NumPy
arrays) so that a resumed run continues exactly.

    opt = Adam(model.params, model.grads, lr=2e-3)
    model.backward(); clip_grad_norm(model.grads, 5.0); opt.step()
"""
from __future__ import annotations

import math

import numpy as np

from .backend import array_module, asarray, to_numpy


class Optimizer:
    """Shared bookkeeping: parameters, per-parameter state arrays, step count, state_dict."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params, grads, lr: float, weight_decay: float = 0.0):
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} params but {len(grads)} grads")
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.shape != g.shape:
                raise ValueError(f"param {i} has shape {p.shape} but its grad {g.shape}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params, self.grads = params, grads
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.steps = 0
        self.state = [{} for _ in params]
        self._tmp = [array_module(p).empty_like(p) for p in params]   # scratch, reused

    def zero_grad(self) -> None:
        for g in self.grads:
            g[...] = 0

    def step(self) -> None:
        self.steps += 1
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            if self.weight_decay and self._l2:
                g = g + self.weight_decay * p          # L2 penalty as part of the gradient
            self._update(i, p, g, self.state[i], self._tmp[i])

    _l2 = True

    def _update(self, i, p, g, s, tmp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _buffer(self, s, name, p, fill=0.0):
        if name not in s:
            s[name] = array_module(p).full_like(p, fill)
        return s[name]

    # -- saving and loading ------------------------------------------------------------------
    def hyper(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "hyper": self.hyper(), "steps": self.steps,
                "state": [{k: np.array(to_numpy(v)) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, d: dict) -> None:
        if d.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {d.get('type')}, not {type(self).__name__}")
        states = d["state"]
        if len(states) != len(self.params):
            raise ValueError(f"optimizer state holds {len(states)} parameters, this model "
                             f"{len(self.params)}")
        for i, (s, p) in enumerate(zip(states, self.params)):
            for k, v in s.items():
                if tuple(np.shape(v)) != tuple(p.shape):
                    raise ValueError(f"optimizer state {k} of parameter {i} has shape "
                                     f"{tuple(np.shape(v))}, the parameter {tuple(p.shape)}")
        for k, v in d["hyper"].items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.steps = int(d["steps"])
        self.state = [{k: asarray(array_module(p), v, p.dtype) for k, v in s.items()}
                      for s, p in zip(states, self.params)]


class SGD(Optimizer):
    """``b = momentum * b + (1 - dampening) * g`` (``b = g`` at the first step);
    ``g = g + momentum * b`` with Nesterov, else ``g = b``; ``p -= lr * g``."""

    def __init__(self, params, grads, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, grads, lr, weight_decay)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0")
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov

    def hyper(self):
        return {**super().hyper(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def _update(self, i, p, g, s, tmp):
        if self.momentum:
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = g.copy()
            else:
                b = s["momentum_buffer"]
                b *= self.momentum
                b += (1 - self.dampening) * g
            b = s["momentum_buffer"]
            if self.nesterov:
                g = g + self.momentum * b
            else:
                g = b
        array_module(p).multiply(g, self.lr, out=tmp)
        p -= tmp


class Adagrad(Optimizer):
    """``sum += g^2``; ``p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``."""

    def __init__(self, params, grads, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        super().__init__(params, grads, lr, weight_decay)
        self.lr_decay, self.eps = lr_decay, eps
        self.initial_accumulator_value = initial_accumulator_value

    def hyper(self):
        return {**super().hyper(), "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}

    def _update(self, i, p, g, s, tmp):
        xp = array_module(p)
        acc = self._buffer(s, "sum", p, self.initial_accumulator_value)
        acc += g * g
        clr = self.lr / (1 + (self.steps - 1) * self.lr_decay)
        xp.sqrt(acc, out=tmp)
        tmp += self.eps
        xp.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp


class RMSprop(Optimizer):
    """``v = alpha v + (1 - alpha) g^2``; centered: ``a = alpha a + (1 - alpha) g``, ``v -> v - a^2``;
    ``d = sqrt(v) + eps``; with momentum ``b = momentum b + g / d``, ``p -= lr b``, else
    ``p -= lr g / d``."""

    def __init__(self, params, grads, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, grads, lr, weight_decay)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.eps, self.momentum, self.centered = alpha, eps, momentum, centered

    def hyper(self):
        return {**super().hyper(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "centered": self.centered}

    def _update(self, i, p, g, s, tmp):
        xp, a = array_module(p), self.alpha
        v = self._buffer(s, "square_avg", p)
        v *= a
        v += (1 - a) * g * g
        if self.centered:
            m = self._buffer(s, "grad_avg", p)
            m *= a
            m += (1 - a) * g
            xp.multiply(m, m, out=tmp)
            xp.subtract(v, tmp, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:
            xp.sqrt(v, out=tmp)
        tmp += self.eps
        xp.divide(g, tmp, out=tmp)
        if self.momentum > 0:
            b = self._buffer(s, "momentum_buffer", p)
            b *= self.momentum
            b += tmp
            xp.multiply(b, self.lr, out=tmp)
        else:
            tmp *= self.lr
        p -= tmp


class Adam(Optimizer):
    """``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``
    (weight decay added to ``g`` as an L2 penalty, as torch.optim.Adam)."""

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, grads, lr, weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)

    def hyper(self):
        return {**super().hyper(), "betas": list(self.betas), "eps": self.eps}

    def _update(self, i, p, g, s, tmp):
        xp = array_module(p)
        b1, b2 = self.betas
        t = self.steps
        m = self._buffer(s, "exp_avg", p)
        v = self._buffer(s, "exp_avg_sq", p)
        xp.subtract(g, m, out=tmp)                     # m += (1 - b1) (g - m), torch's lerp
        tmp *= 1 - b1
        m += tmp
        xp.multiply(g, g, out=tmp)                     # v = b2 v + (1 - b2) g^2
        tmp *= 1 - b2
        v *= b2
        v += tmp
        xp.sqrt(v, out=tmp)                            # sqrt(v / (1 - b2^t)) + eps
        tmp *= 1 / math.sqrt(1 - b2 ** t)
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - b1 ** t)
        p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * weight_decay`` before the Adam step."""

    _l2 = False

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, grads, lr, betas, eps, weight_decay)

    def _update(self, i, p, g, s, tmp):
        if self.weight_decay:
            p *= 1 - self.lr * self.weight_decay
        super()._update(i, p, g, s, tmp)


# -- clipping ---------------------------------------------------------------------------------
def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``;
    return the norm before clipping (as torch.nn.utils.clip_grad_norm_). A non-finite norm is
    returned without touching the gradients."""
    total = math.sqrt(sum(float(array_module(g).vdot(g.reshape(-1), g.reshape(-1)))
                          for g in grads))
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


def clip_grad_value(grads, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``."""
    for g in grads:
        array_module(g).clip(g, -clip_value, clip_value, out=g)


# -- schedules --------------------------------------------------------------------------------
class _Schedule:
    """Sets ``opt.lr`` from the initial rate and the number of ``step()`` calls (epochs)."""

    def __init__(self, opt: Optimizer):
        self.opt, self.base_lr, self.last_epoch = opt, opt.lr, 0

    def step(self) -> None:
        self.last_epoch += 1
        self.opt.lr = self.lr_at(self.last_epoch)

    def lr_at(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, d: dict) -> None:
        if d.get("type") != type(self).__name__:
            raise ValueError(f"schedule state is for {d.get('type')}, not {type(self).__name__}")
        self.base_lr, self.last_epoch = float(d["base_lr"]), int(d["last_epoch"])


class StepLR(_Schedule):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, opt, step_size: int, gamma: float = 0.1):
        super().__init__(opt)
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """``lr = base_lr * gamma ** max(0, epoch - start)`` (epochs counted from 0).

    ``start=0`` is torch's ExponentialLR: the rate decays from the second epoch on. The first
    ``start + 1`` epochs run at the full rate; Zaremba et al.'s "lr 1, halved each epoch after
    the 4th" is ``gamma=0.5, start=3``."""

    def __init__(self, opt, gamma: float, start: int = 0):
        super().__init__(opt)
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.gamma, self.start = gamma, start

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** max(0, epoch - self.start)


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` when the metric has not improved (by more than
    ``threshold``, relative) for more than ``patience`` calls of ``step(metric)``; wait
    ``cooldown`` calls after a reduction; never below ``min_lr`` (torch's semantics, mode 'min')."""

    def __init__(self, opt: Optimizer, factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.opt, self.factor, self.patience, self.threshold = opt, factor, patience, threshold
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best, self.num_bad, self.cooldown_counter, self.last_epoch = math.inf, 0, 0, 0

    def step(self, metric: float) -> None:
        metric = float(metric)
        self.last_epoch += 1
        if metric < self.best * (1 - self.threshold):
            self.best, self.num_bad = metric, 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            new = max(self.opt.lr * self.factor, self.min_lr)
            if self.opt.lr - new > self.eps:
                self.opt.lr = new
            self.cooldown_counter, self.num_bad = self.cooldown, 0

    def state_dict(self) -> dict:
        return {"type": "ReduceLROnPlateau", "best": None if math.isinf(self.best) else self.best,
                "num_bad": self.num_bad, "cooldown_counter": self.cooldown_counter,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, d: dict) -> None:
        if d.get("type") != "ReduceLROnPlateau":
            raise ValueError(f"schedule state is for {d.get('type')}, not ReduceLROnPlateau")
        self.best = math.inf if d["best"] is None else float(d["best"])
        self.num_bad, self.cooldown_counter = int(d["num_bad"]), int(d["cooldown_counter"])
        self.last_epoch = int(d["last_epoch"])
