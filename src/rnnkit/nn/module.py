"""The one contract every layer and every model keeps.

A ``Module`` owns parameters and, for each, a gradient array of the same shape:

    module.params      list of parameter arrays, in a fixed order
    module.grads       list of gradient arrays, same order and shapes as ``params``
    module.forward(...)      (also ``module(...)``) computes outputs and caches what backward needs
    module.backward(...)     takes the gradient of the outputs, returns the gradient of the
                             inputs, and *writes* parameter gradients in place into ``grads``
                             (``grad[...] = ...``) so that an optimiser's references stay valid
    module.train() / .eval() switch dropout and friends
    module.state_dict()      {name: parameter}, names as PyTorch's (``weight_ih_l0``, ``decoder.weight``)
    module.load_state_dict(d) copies values in place, refusing missing, extra or misshapen entries
    module.grad_dict()       {name: gradient}, the same names

A model made of layers registers them with ``add_module`` and then keeps the same contract over all
of its parameters: names are joined with dots, as in PyTorch. A parameter shared by two layers
(tied weights) is listed once, under its first name.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import backend


class Module:
    """Base class: parameters, gradients, children, train/eval, state_dict."""

    def __init__(self, dtype=np.float32, device: str = "cpu"):
        self.dtype = backend.check_dtype(dtype)
        self.device = device
        self.xp = backend.get_xp(device)
        self.training = True
        self._params: dict[str, object] = {}
        self._grads: dict[str, object] = {}
        self._children: dict[str, Module] = {}
        self._buffers: dict[str, object] = {}      # reused work arrays, by name (``_buffer``)

    # -- registration ------------------------------------------------------------------------
    def add_param(self, name: str, value):
        """Register ``value`` (any array-like) as parameter ``name``; returns the stored array."""
        arr = self.xp.asarray(value, dtype=self.dtype)
        if not arr.flags.c_contiguous:
            arr = self.xp.ascontiguousarray(arr)
        self._params[name] = arr
        self._grads[name] = self.xp.zeros_like(arr)
        return arr

    def share_param(self, name: str, param, grad):
        """Register an existing parameter/gradient pair under ``name`` (used for tied weights)."""
        self._params[name] = param
        self._grads[name] = grad

    def add_module(self, name: str, module: "Module") -> "Module":
        self._children[name] = module
        return module

    # -- the contract ------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, object, object]]:
        """Yield ``(name, param, grad)`` for every parameter, shared ones once."""
        seen: set[int] = set()
        for name, p, g in self._all_parameters(prefix):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield name, p, g

    def _all_parameters(self, prefix: str):
        for name, p in self._params.items():
            yield prefix + name, p, self._grads[name]
        for cname, child in self._children.items():
            yield from child._all_parameters(prefix + cname + ".")

    @property
    def params(self) -> list:
        return [p for _, p, _ in self.named_parameters()]

    @property
    def grads(self) -> list:
        return [g for _, _, g in self.named_parameters()]

    def state_dict(self) -> dict:
        """``{name: array}`` of every parameter (the arrays themselves, not copies)."""
        return {name: p for name, p, _ in self._all_parameters("")}

    def grad_dict(self) -> dict:
        return {name: g for name, _, g in self._all_parameters("")}

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params))

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy ``state`` into the parameters in place (arrays may be NumPy, CuPy or torch CPU
        tensors converted with ``.numpy()``). With ``strict``, missing or extra names are an
        error; a shape mismatch always is. Nothing is written unless everything matches."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(np.shape(state[k]))}"
                 for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)]
        problems = []
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and extra:
            problems.append("unexpected: " + ", ".join(extra))
        if wrong:
            problems.append("wrong shape: " + "; ".join(wrong))
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + " | ".join(problems))
        for k, p in own.items():
            if k in state:
                p[...] = backend.asarray(self.xp, state[k], self.dtype)

    def zero_grad(self) -> None:
        for g in self.grads:
            g[...] = 0

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- calling -----------------------------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- small helpers for subclasses ---------------------------------------------------------
    def _check_float_input(self, x, name: str = "x"):
        """Refuse inputs of the wrong array type or dtype, naming both."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{type(self).__name__}: {name} must be an array, got {type(x).__name__}")
        if backend.array_module(x) is not self.xp:
            raise ValueError(f"{type(self).__name__}: {name} is on {backend.device_of(x)} but the "
                             f"layer is on {self.device}")
        if x.dtype != self.dtype:
            raise ValueError(f"{type(self).__name__}: {name} has dtype {x.dtype}, expected "
                             f"{self.dtype} (use x.astype(np.{self.dtype}))")

    def _buffer(self, name: str, shape):
        """A work array this module keeps and reuses from call to call (made again when the
        shape changes): a fresh array at every call costs its page faults every time."""
        b = self._buffers.get(name)
        if b is None or b.shape != tuple(shape):
            b = self._buffers[name] = self.xp.empty(shape, dtype=self.dtype)
        return b

    def _check_out(self, out, shape, name: str = "out"):
        """Refuse an output buffer that results could not be written into as they are: it must
        be a writeable, C-contiguous array of the layer's device and dtype, of ``shape``."""
        self._check_float_input(out, name)
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}: {name} has shape {tuple(out.shape)}, "
                             f"expected {tuple(shape)}")
        # CuPy's flags have no ``writeable`` (its arrays always are)
        if not (out.flags.c_contiguous and getattr(out.flags, "writeable", True)):
            raise ValueError(f"{type(self).__name__}: {name} must be a writeable C-contiguous "
                             f"array")
