"""Parity with PyTorch on the same weights: outputs, final states and every gradient.

Golden files (made by tests/make_golden.py with torch) run everywhere; the live tests run when
torch is importable, on random sizes. Tolerance: norm-wise relative error 1e-5 in float32,
1e-10 in float64 (``gradcheck.relative_error``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnkit import blas
from rnnkit.gradcheck import relative_error
from rnnkit.nn import fused
from torch_reference import KINDS, build, make_inputs, reference

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_recurrent.npz"
TOL = {"float32": 1e-5, "float64": 1e-10}
# both implementations of the cells' elementwise work: NumPy ufuncs, and numba when installed;
# both implementations of the matrix products: NumPy's matmul, and MKL when installed
KERNELS = ["numpy"] + (["numba"] if fused.available() else [])
BLAS = ["numpy"] + (["mkl"] if blas.load_mkl() else [])


def _load_golden():
    with np.load(GOLDEN, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data.pop("meta")).decode())
    cases = []
    for i, case in enumerate(meta["cases"]):
        arrays = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(f"{i}/")}
        cases.append((case, arrays))
    return cases


GOLDEN_CASES = _load_golden()


def _case_id(case):
    return (f"{case['kind']}-L{case['num_layers']}-{'bi' if case['bidirectional'] else 'uni'}"
            f"-{'bias' if case['bias'] else 'nobias'}-{'len' if case['lengths'] else 'full'}"
            f"-{'bf' if case['batch_first'] else 'tm'}-{case['dtype']}")


def run_ours(case, weights, a, kernels="auto", blas="auto"):
    """Our layer on ``weights`` and inputs ``a``: the same names as ``reference`` returns."""
    layer = build(case, np.random.default_rng(0), kernels, blas)
    layer.load_state_dict(weights)
    lstm = case["kind"] == "lstm"
    state = (a["h0"], a["c0"]) if lstm else a["h0"]
    y, hn = layer(a["x"], state, lengths=a.get("lengths"))
    dx, dh0 = layer.backward(a["dy"], (a["dh_n"], a["dc_n"]) if lstm else a["dh_n"])
    out = {"y": y, "dx": dx}
    if lstm:
        out.update(h_n=hn[0], c_n=hn[1], dh0=dh0[0], dc0=dh0[1])
    else:
        out.update(h_n=hn, dh0=dh0)
    out.update({"grad." + k: g for k, g in layer.grad_dict().items()})
    return out


def assert_parity(ours, ref, dtype):
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    errors = {k: relative_error(np.asarray(ref[k], np.float64), np.asarray(ours[k], np.float64))
              for k in ref}
    for k in ref:
        assert ours[k].dtype == np.dtype(dtype), (k, ours[k].dtype)
    bad = {k: e for k, e in errors.items() if e > TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]:.0e}: {bad}"


def test_golden_file_covers_every_combination():
    seen = {(c["kind"], c["num_layers"], c["bidirectional"], c["bias"], c["lengths"], c["dtype"])
            for c, _ in GOLDEN_CASES}
    assert len(seen) == len(KINDS) * 2 * 2 * 2 * 2 * 2
    assert any(not c["batch_first"] for c, _ in GOLDEN_CASES)


@pytest.mark.parametrize("blas_name", BLAS)
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case,arrays", GOLDEN_CASES, ids=[_case_id(c) for c, _ in GOLDEN_CASES])
def test_golden(case, arrays, kernels, blas_name, monkeypatch):
    if blas_name == "mkl":
        monkeypatch.setattr(blas, "SMALL", 0)        # these sizes are small: make MKL do them
    weights = {k: v for k, v in arrays.items() if k.startswith(("weight_", "bias_"))}
    inputs = {k: arrays[k] for k in ("x", "h0", "c0", "dy", "dh_n", "dc_n", "lengths") if k in arrays}
    ref = {k: v for k, v in arrays.items() if k not in weights and k not in inputs}
    assert_parity(run_ours(case, weights, inputs, kernels, blas_name), ref, case["dtype"])


LIVE = [(kind, dtype, seed, k, b) for kind in KINDS for dtype in ("float32", "float64")
        for seed in (1, 2, 3) for k in KERNELS for b in BLAS]


@pytest.mark.parametrize("kind,dtype,seed,kernels,blas_name", LIVE)
def test_live_parity_random_sizes(kind, dtype, seed, kernels, blas_name, monkeypatch):
    if blas_name == "mkl":
        monkeypatch.setattr(blas, "SMALL", 0)
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    case = dict(kind=kind, dtype=dtype, num_layers=int(rng.integers(1, 4)),
                bidirectional=bool(rng.integers(2)), bias=bool(rng.integers(2)),
                lengths=bool(rng.integers(2)), batch_first=bool(rng.integers(2)),
                N=int(rng.integers(1, 6)), T=int(rng.integers(1, 9)), D=int(rng.integers(1, 7)),
                H=int(rng.integers(1, 9)))
    weights = {k: v.copy() for k, v in build(case, rng).state_dict().items()}
    a = make_inputs(case, rng)
    assert_parity(run_ours(case, weights, a, kernels, blas_name), reference(case, weights, a),
                  dtype)


def test_our_weights_load_into_torch_and_back():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    case = dict(kind="lstm", num_layers=2, bidirectional=True, bias=True, batch_first=True,
                dtype="float32", D=3, H=4)
    ours = build(case, rng)
    t = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    back = build(case, np.random.default_rng(6))
    back.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
