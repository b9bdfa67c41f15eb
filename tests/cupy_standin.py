"""A stand-in for CuPy on the CPU, so that the GPU path's tests run where there is no GPU.

Its arrays hold NumPy arrays and compute with NumPy, but behave as CuPy's do where that has
bitten code written for NumPy:

- an array is not a ``numpy.ndarray``, and NumPy will not convert one implicitly
  (``np.asarray(a)`` raises ``TypeError``, as CuPy's does); ``.get()`` copies it to the host;
- NumPy arrays (0-d ones too) do not mix with it in arithmetic, ufuncs or ``out=`` (CuPy raises
  ``TypeError``), nor fill a basic selection of it (``a[1:3] = host`` is CuPy's ``fill``);
- reductions, elements and iteration give 0-d arrays, not scalars;
- its ``flags`` have ``c_contiguous``, ``f_contiguous`` and ``owndata`` only;
- ``take`` has no ``mode``, and wraps an index out of range round (CuPy does not check);
- NumPy functions called on it dispatch to the stand-in, as CuPy's arrays make them do.

``ElementwiseKernel`` takes the kernels that ``cuda_on_cpu`` compiles from ``fused_cuda``'s
CUDA sources. What this cannot tell is whether CuPy supports a call it lets
through (the stand-in is permissive where unsure) or how fast anything is: a real GPU still has
the last word (``tests/test_gpu.py`` runs on one when there is one).
"""
from __future__ import annotations

import operator
import types

import numpy as np

_MIX = "Unsupported type <class 'numpy.ndarray'>"          # CuPy's words for a host array
# copies to the host so far: each waits for the device to finish what it was given (on a GPU,
# microseconds and an idle device between the copy and the next launch), counted by
# ``syncs()`` for the tests that bound how many a step makes
_SYNCS = [0]


def syncs() -> int:
    """How many times a stand-in array has been copied to the host (``get``, ``int``,
    ``float``, ``bool``, ``item``, ``tolist``, formatting) since the process started."""
    return _SYNCS[0]


def _synced(value):
    _SYNCS[0] += 1
    return value


class _Flags:
    def __init__(self, a):
        self.c_contiguous, self.f_contiguous = a.flags.c_contiguous, a.flags.f_contiguous
        self.owndata = a.flags.owndata


def _unwrap(x, host_ok=True):
    """The NumPy array inside a stand-in array (in lists, tuples and dicts too); with
    ``host_ok`` False, a NumPy array (0-d ones too) is refused as CuPy refuses it."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, host_ok) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, host_ok) for k, v in x.items()}
    if not host_ok and isinstance(x, np.ndarray):        # 0-d ones too
        raise TypeError(_MIX)
    return x


def _wrap(x):
    """Arrays and NumPy scalars as stand-in arrays (CuPy gives a 0-d array where NumPy gives a
    scalar: a reduction, an element, an item of an iteration)."""
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class ndarray:                                            # noqa: N801 - CuPy's name
    """A device array of the stand-in: a NumPy array that will not pass for one."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    # -- what NumPy sees --------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ufunc_method(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        mine = globals().get(name)
        if mine is not None and callable(mine) and mine is not func:
            return mine(*args, **kwargs)
        return _wrap(func(*_unwrap(args, False), **_unwrap(kwargs, False)))

    # -- attributes ---------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray(self._a.T))
    base = property(lambda self: None if self._a.base is None else ndarray(self._a.base))

    def get(self):
        """A NumPy copy, on the host."""
        return _synced(self._a.copy())

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return f"stand-in cupy array({self._a!r})"

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return _synced(format(self._a.item() if self._a.ndim == 0 else self._a, spec))

    def __float__(self):
        return _synced(float(self._a))

    def __int__(self):
        return _synced(int(self._a))

    def __index__(self):
        return _synced(operator.index(self._a))

    def __bool__(self):
        return _synced(bool(self._a))

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        parts = key if isinstance(key, tuple) else (key,)
        basic = all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice))
                    for k in parts)
        if basic and isinstance(value, (np.ndarray, list)) and np.ndim(value) > 0:
            # CuPy fills a basic selection from a scalar only
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[_unwrap(key)] = _unwrap(value)

    def __getattr__(self, name):                  # methods: sum, reshape, astype, max, ...
        if name not in _METHODS:
            raise AttributeError(f"the stand-in's arrays have no {name!r} (CuPy's may: add it "
                                 f"to _METHODS if so)")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            refused = _NOT_CUPY.intersection(kwargs)
            if refused:
                raise TypeError(f"{name}() got an unexpected keyword argument {refused.pop()!r}")
            out = kwargs.get("out")
            result = attr(*_unwrap(args, False), **_unwrap(kwargs, False))
            if name in ("item", "tolist"):                        # to the host
                return _synced(result)
            return out if out is not None else _wrap(result)
        return method


# the methods of CuPy's ndarray that the stand-in passes on to NumPy's, and keywords NumPy's
# methods take that CuPy's do not
_METHODS = frozenset("""all any argmax argmin argsort astype clip copy cumsum dot fill flatten
    item max mean min nonzero prod ravel repeat reshape round sort squeeze std sum swapaxes take
    tolist transpose var view""".split())
_NOT_CUPY = frozenset({"where", "initial", "mode"})


def _binary(op, reflected=False, inplace=False):
    def f(self, other):
        o = _unwrap(other, False)
        if inplace:
            op(self._a, o)
            return self
        return _wrap(op(o, self._a) if reflected else op(self._a, o))
    return f


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv),
                   ("mod", operator.mod), ("pow", operator.pow), ("matmul", operator.matmul),
                   ("and", operator.and_), ("or", operator.or_), ("xor", operator.xor)):
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(getattr(operator, f"i{_name}"), inplace=True))
for _name, _op in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt),
                   ("ge", operator.ge), ("eq", operator.eq), ("ne", operator.ne)):
    setattr(ndarray, f"__{_name}__", _binary(_op))
ndarray.__module__ = "cupy"                 # backend.array_module looks at the type's module
ndarray.__neg__ = lambda self: ndarray(-self._a)
ndarray.__pos__ = lambda self: ndarray(+self._a)
ndarray.__abs__ = lambda self: ndarray(abs(self._a))
ndarray.__invert__ = lambda self: ndarray(~self._a)
ndarray.__hash__ = None


def _ufunc_method(uf, method, inputs, kwargs):
    out = kwargs.get("out")
    if out is not None:
        outs = out if isinstance(out, tuple) else (out,)
        kwargs["out"] = tuple(_unwrap(o, False) for o in outs)
    result = getattr(uf, method)(*_unwrap(inputs, False), **kwargs)
    if out is not None:
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    return _wrap(result)


class _Ufunc:
    """A ufunc of the stand-in: called, or ``at``, ``reduce``, ``reduceat``, ``accumulate``."""

    def __init__(self, uf):
        self._uf, self.__name__ = uf, uf.__name__

    def __call__(self, *inputs, **kwargs):
        return _ufunc_method(self._uf, "__call__", inputs, kwargs)

    def __getattr__(self, method):
        return lambda *inputs, **kwargs: _ufunc_method(self._uf, method, inputs, kwargs)


def _device(x, dtype=None, copy=False, order=None):
    """A stand-in array of ``x`` (a host array, a list, a scalar or a stand-in array)."""
    if isinstance(x, ndarray) and not copy:
        return x if dtype is None or x.dtype == dtype else ndarray(x._a.astype(dtype))
    return ndarray(np.array(_unwrap(x), dtype=dtype, copy=True, order=order or "K"))


def asarray(a, dtype=None, order=None):
    return _device(a, dtype, order=order)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    out = _device(a, dtype, copy=copy, order=order)
    return out if ndmin <= out.ndim else ndarray(np.array(out._a, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    return ndarray(np.ascontiguousarray(_unwrap(a, False), dtype=dtype))


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def take(a, indices, axis=None, out=None, mode=None):
    """CuPy's ``take``: no ``mode``, and an index out of range wraps round."""
    if mode is not None:
        raise TypeError("take() got an unexpected keyword argument 'mode'")   # CuPy has none
    res = np.take(_unwrap(a, False), _unwrap(indices), axis=axis, mode="wrap",
                  out=None if out is None else _unwrap(out, False))
    return out if out is not None else _wrap(res)


def _creation(fn):
    def f(*args, **kwargs):
        return _wrap(fn(*_unwrap(args, False), **_unwrap(kwargs, False)))
    f.__name__ = fn.__name__
    return f


def _module(kernels=None):
    """The stand-in module, to put in ``sys.modules["cupy"]``; ``kernels`` (name -> callable
    on NumPy arrays, as ``cuda_on_cpu.compile_kernels`` makes) backs ``ElementwiseKernel``."""
    m = types.ModuleType("cupy")
    m.__doc__ = __doc__
    m.ndarray, m.asarray, m.array, m.asnumpy, m.take = ndarray, asarray, array, asnumpy, take
    m.ascontiguousarray = ascontiguousarray
    for name in ("empty", "zeros", "ones", "full", "arange", "empty_like", "zeros_like",
                 "ones_like", "full_like", "concatenate", "stack", "where", "flatnonzero",
                 "argsort", "argmax", "sum", "mean", "vdot", "dot", "clip", "sort", "cumsum",
                 "any", "all", "broadcast_to", "linspace", "expand_dims", "squeeze",
                 "transpose", "count_nonzero", "unique"):
        setattr(m, name, _creation(getattr(np, name)))
    for name in ("multiply", "subtract", "add", "divide", "true_divide", "maximum", "minimum",
                 "tanh", "exp", "log", "greater", "less", "negative", "square", "power",
                 "sqrt", "abs", "equal", "not_equal", "logical_not", "logical_and", "isfinite",
                 "isnan"):
        setattr(m, name, _Ufunc(getattr(np, name)))
    m.matmul = _Ufunc(np.matmul)
    for name in ("float16", "float32", "float64", "int32", "int64", "bool_", "uint8", "dtype",
                 "newaxis", "inf", "nan", "pi", "integer", "floating"):
        setattr(m, name, getattr(np, name))
    m.get_array_module = lambda *arrays: m if any(isinstance(a, ndarray) for a in arrays) else np
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    m.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda *a: types.SimpleNamespace(
        synchronize=lambda: None), Stream=types.SimpleNamespace(null=types.SimpleNamespace(
            synchronize=lambda: None)))

    class ElementwiseKernel:
        def __init__(self, params_in, params_out, body, name):
            if kernels is None:
                raise RuntimeError("the stand-in has no compiled kernels")
            self._k = kernels[name.removeprefix("rnnkit_")]

        def __call__(self, *args, size):
            host = [a._a if isinstance(a, ndarray) else a for a in args]
            for a in args:
                if isinstance(a, np.ndarray):
                    raise TypeError(_MIX)
            self._k(*host, size=size)
    m.ElementwiseKernel = ElementwiseKernel
    return m


def install(monkeypatch, kernels=None):
    """Make ``import cupy`` give the stand-in for this test, with ``fused_cuda``'s kernels
    made from it in a cache of the test's own (a GPU's compiled kernels are not mixed in)."""
    import functools  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from rnnkit.nn import fused_cuda  # noqa: PLC0415
    module = _module(kernels)
    for name in [n for n in sys.modules if n.startswith("cupy.") or n.startswith("cupyx")]:
        monkeypatch.delitem(sys.modules, name)          # no part of a real CuPy mixed in
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(fused_cuda, "_kernels",
                        functools.lru_cache(maxsize=None)(fused_cuda._kernels.__wrapped__))
    return module
