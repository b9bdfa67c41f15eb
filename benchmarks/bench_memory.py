"""Peak memory of a training step, rnnkit vs PyTorch (CPU), each in a fresh process.

What is measured: the peak resident memory (VmHWM) while building the model and optimiser and
running three training steps, minus the resident memory just before the model is built. Both
sides first run one step of a tiny model, so that what is paid once per process (numba's
compiled kernels, PyTorch's thread pools and allocator) is in the baseline, not in the figure.
Linux resets the peak on request (``/proc/self/clear_refs``), so the import's own peak does not
count either. What remains is what training this model needs: parameters, gradients, optimiser
state, activations kept for backward and workspace. When rnnkit's products go to MKL or to its
packed kernel (what ``blas="auto"`` takes for a large model here), rnnkit is measured twice: so, and with NumPy's own
BLAS (``RNNKIT_BLAS=numpy``). MKL allocates its GEMM workspace at the first large product
(about 1 MB here), where OpenBLAS has allocated its own when NumPy loaded it, before the
baseline; the packed kernel keeps each layer's packed ``W_hh`` (forward and backward) between
calls.

    python benchmarks/bench_memory.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import finish, parser

CHILD = r"""
import json
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024   # MB
side, cell, H, B, T = {side!r}, {cell!r}, {H}, {B}, {T}
if side == "rnnkit":
    from bench_train import rnnkit_step as make
else:
    import torch
    torch.set_num_threads(2)
    from bench_train import torch_step as make
def build(*a):
    out = make(*a)
    return out[0] if isinstance(out, tuple) else out
build(cell, 65, 8, 8, 2, 2, 3)()                      # warm-up: kernels compiled, pools made
if side == "rnnkit":                                  # and one product big enough for MKL to
    import numpy as np                                # load and start its threads (a (64, 64)
    from rnnkit import blas                           # square: 256 KB of workspace at most)
    sq = np.ones((64, 64), np.float32)
    blas.get_blas().matmul(sq, sq)
    del sq
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                      # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
step = build(cell, 65, 64, H, 2, B, T)
for _ in range(3):
    step()
peak = status("VmHWM")
print(json.dumps({{"before_mb": before, "peak_mb": peak, "step_mb": peak - before}}))
"""


def measure(side, cell, H, B, T, blas="auto") -> dict:
    code = CHILD.format(side=side, cell=cell, H=H, B=B, T=T)
    here = Path(__file__).resolve().parent             # `python -c` imports from its cwd
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=here, env=dict(os.environ, RNNKIT_BLAS=blas))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = parser(__doc__)
    args = ap.parse_args(argv)
    from rnnkit import blas
    mkl = blas.get_blas().name != "numpy"
    rows = []
    for cell, H, B, T in (("lstm", 256, 32, 64), ("gru", 256, 32, 64), ("rnn", 256, 32, 64),
                          ("lstm", 512, 64, 100)):
        ours, theirs = measure("rnnkit", cell, H, B, T), measure("torch", cell, H, B, T)
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        other = mkl or blas.for_model("auto", H, gates) == "packed"   # then NumPy's BLAS too
        plain = measure("rnnkit", cell, H, B, T, blas="numpy") if other else ours
        t = max(theirs["step_mb"], 1e-9)
        rows.append({"cell": cell, "H": H, "B": B, "T": T, "rnnkit_step_mb": ours["step_mb"],
                     "numpy_blas_step_mb": plain["step_mb"], "torch_step_mb": theirs["step_mb"],
                     "ratio": ours["step_mb"] / t, "numpy_blas_ratio": plain["step_mb"] / t})
        print(f"{cell:4s} H={H} B={B} T={T}: rnnkit {ours['step_mb']:7.1f} MB | torch "
              f"{theirs['step_mb']:7.1f} MB | rnnkit/torch {rows[-1]['ratio']:.2f}"
              + (f" | on NumPy's BLAS {plain['step_mb']:7.1f} MB, "
                 f"{rows[-1]['numpy_blas_ratio']:.2f}" if other else ""))
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
