"""Finite-difference gradient checking, for rnnkit's layers and for yours.

The check: draw a random upstream gradient ``dY`` for every output of a layer, so that the scalar
``L = sum(Y * dY)`` has ``dL/dY = dY``; run ``backward(dY)`` for the analytic gradients; then perturb
each checked element of each input and parameter by ``+-eps`` and compare with the central
difference ``(L(w + eps) - L(w - eps)) / (2 eps)``. The error of an array is
``max |numeric - analytic| / max(max |numeric|, max |analytic|)`` (a norm-wise relative error,
immune to individual elements that happen to be near zero).

Work in float64: float32 central differences are only good to about 1e-3.

    >>> import numpy as np
    >>> from rnnkit.nn import LSTM
    >>> from rnnkit.gradcheck import gradcheck_layer
    >>> rng = np.random.default_rng(0)
    >>> lstm = LSTM(3, 4, dtype=np.float64, rng=rng)
    >>> report = gradcheck_layer(lstm, rng.standard_normal((2, 5, 3)), rng=rng)
    >>> report.ok
    True

A layer is anything with ``forward(*inputs)`` returning an array or nested tuples of arrays,
``backward(*output_grads)`` returning the input gradients in the same nesting as the inputs
(``None`` for inputs without one, e.g. integer ids), and optionally ``named_parameters()`` as
``rnnkit.nn.Module`` has. For a layer that draws random numbers (dropout), pass
``before_forward`` to reseed it so every evaluation uses the same mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def numerical_gradient(loss: Callable[[], float], x: np.ndarray, eps: float = 1e-6,
                       index=None) -> np.ndarray:
    """Central differences of ``loss()`` with respect to ``x``, perturbed in place.

    ``index``: flat indices to check (default: all); other entries of the result are NaN.
    """
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)                        # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient needs a contiguous array")
    for i in (range(flat.size) if index is None else index):
        old = flat[i]
        flat[i] = old + eps
        plus = loss()
        flat[i] = old - eps
        minus = loss()
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """``max |a - b| / max(max |a|, max |b|)`` over the entries both hold (0 when both are 0)."""
    ok = ~np.isnan(numeric)
    a, b = numeric[ok], np.asarray(analytic)[ok]
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max())
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


@dataclass
class GradcheckReport:
    """Errors by name (``input[0]``, ``input[1][0]``, ``weight_ih_l0``, ...) and the verdict."""
    errors: dict = field(default_factory=dict)
    tol: float = 1e-6

    @property
    def ok(self) -> bool:
        return all(e <= self.tol for e in self.errors.values())

    def __str__(self) -> str:
        rows = [f"  {'ok ' if e <= self.tol else 'BAD'} {name:<24} {e:.2e}"
                for name, e in self.errors.items()]
        return f"gradient check (tol {self.tol:.0e}):\n" + "\n".join(rows)


def _leaves(tree, prefix):
    """Flatten nested tuples/lists into ``(name, leaf)`` pairs, keeping ``None`` leaves."""
    if isinstance(tree, (tuple, list)):
        for i, t in enumerate(tree):
            yield from _leaves(t, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def _like(tree, rng):
    """A random tree of the same nesting as ``tree`` (floats get N(0,1) arrays; others None)."""
    if isinstance(tree, (tuple, list)):
        return tuple(_like(t, rng) for t in tree)
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        return rng.standard_normal(tree.shape)
    if isinstance(tree, float):
        return 1.0
    return None


def _dot(out, dout) -> float:
    return float(sum(np.sum(o * d) for (_, o), (_, d) in zip(_leaves(out, ""), _leaves(dout, ""))
                     if d is not None))


def gradcheck_layer(layer, *inputs, rng=None, eps: float = 1e-6, tol: float = 1e-6,
                    max_checks: int | None = 200, check_params: bool = True,
                    before_forward: Callable[[], None] | None = None,
                    forward_kwargs: dict | None = None, raise_on_failure: bool = False
                    ) -> GradcheckReport:
    """Check ``layer.backward`` against central differences of ``layer.forward``.

    ``inputs`` are the positional arguments of ``forward`` (nested tuples allowed, ``None`` kept);
    every float64 array among them is checked, and with ``check_params`` every parameter.
    ``max_checks`` caps the elements perturbed per array (a random subset); ``None`` checks all.
    ``forward_kwargs`` are passed to every forward call (e.g. ``lengths``).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    kwargs = forward_kwargs or {}
    named_inputs = [(n, x) for n, x in _leaves(tuple(inputs), "input")
                    if isinstance(x, np.ndarray) and x.dtype.kind == "f"]
    for name, x in named_inputs:
        if x.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 arrays; {name} is {x.dtype}")

    def run():
        if before_forward is not None:
            before_forward()
        return layer.forward(*inputs, **kwargs)

    out = run()
    dout = _like(out, rng)
    in_grads = layer.backward(*dout) if isinstance(out, tuple) else layer.backward(dout)
    if not isinstance(in_grads, tuple):          # one gradient: that of the first input
        in_grads = (in_grads,)
    analytic = dict(_leaves(in_grads[:len(inputs)], "input"))
    params = list(layer.named_parameters()) if check_params and hasattr(layer, "named_parameters") else []
    analytic.update({name: g.copy() for name, _, g in params})

    def loss():
        return _dot(run(), dout)

    report = GradcheckReport(tol=tol)
    targets = named_inputs + [(name, p) for name, p, _ in params]
    for name, x in targets:
        if analytic.get(name) is None:
            raise ValueError(f"backward returned no gradient for {name}")
        index = None
        if max_checks is not None and x.size > max_checks:
            index = rng.choice(x.size, size=max_checks, replace=False)
        numeric = numerical_gradient(loss, x, eps, index)
        report.errors[name] = relative_error(numeric, analytic[name])
    if raise_on_failure and not report.ok:
        raise AssertionError(str(report))
    return report
