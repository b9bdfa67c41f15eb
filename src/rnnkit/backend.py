"""The array-module seam: the only place in rnnkit that knows about devices.

Every layer is built for one device ("cpu" -> NumPy, "cuda" -> CuPy) and one floating dtype
(float32 by default, or float64). A layer keeps the module it computes with as ``self.xp`` and
all of its arrays live there; nothing in rnnkit reads a global device flag.

    xp = get_xp("cpu")            # numpy
    xp = get_xp("cuda")           # cupy, or a clear error when CuPy / a GPU is absent
    xp = array_module(arr)        # the module an existing array belongs to
    to_numpy(arr)                 # host copy (no-op for NumPy arrays)
"""
from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "cuda")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def get_xp(device: str = "cpu"):
    """Return the array module for ``device`` ("cpu" or "cuda")."""
    if device == "cpu":
        return np
    if device == "cuda":
        try:
            import cupy  # noqa: PLC0415 - optional extra, imported only when asked for
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "device='cuda' needs CuPy: pip install 'rnnkit[gpu]' (cupy-cuda12x)") from e
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError
        except Exception as e:  # pragma: no cover - depends on the machine
            raise RuntimeError("device='cuda' but no NVIDIA GPU is visible to CuPy") from e
        return cupy
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        get_xp("cuda")
    except RuntimeError:
        return False
    return True


def array_module(arr):
    """NumPy or CuPy, whichever ``arr`` belongs to."""
    if isinstance(arr, np.ndarray) or np.isscalar(arr):
        return np
    mod = type(arr).__module__.split(".")[0]
    if mod == "cupy":
        import cupy  # noqa: PLC0415
        return cupy
    return np


def device_of(arr) -> str:
    return "cuda" if array_module(arr) is not np else "cpu"


def to_numpy(arr) -> np.ndarray:
    """A NumPy copy of ``arr`` wherever it lives (the same array when it is NumPy already)."""
    if isinstance(arr, np.ndarray):
        return arr
    if hasattr(arr, "get"):  # cupy.ndarray
        return arr.get()
    return np.asarray(arr)


def host_values(*values) -> tuple:
    """The numbers in 0-d arrays (reductions, say) as Python floats, wherever they live: on a
    GPU all of them in one copy to the host, where ``float()`` of each would wait for the
    device and copy once each. Exact for integers up to 2^53 and for float32 and float64."""
    if all(isinstance(v, (np.ndarray, np.generic, int, float)) for v in values):
        return tuple(float(v) for v in values)
    xp = array_module(next(v for v in values if not isinstance(v, (np.generic, int, float))))
    both = xp.stack([xp.asarray(v, dtype=xp.float64) for v in values])
    return tuple(to_numpy(both).tolist())


def asarray(xp, arr, dtype=None):
    """``arr`` as an array of module ``xp`` (copying across devices when it has to)."""
    if xp is np:
        arr = to_numpy(arr)
    return xp.asarray(arr, dtype=dtype)


def check_dtype(dtype) -> np.dtype:
    """Normalise ``dtype`` and refuse anything but float32 / float64."""
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
