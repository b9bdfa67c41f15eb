"""Peak memory of a training step, rnnkit vs PyTorch (CPU), each in a fresh process.

What is measured: the peak resident memory while running training steps, minus the resident
memory just before the first step (after the model, optimiser and batch exist). That is the
memory the step itself needs: activations kept for backward, gradients, optimiser state and
workspace, without the interpreter's or the libraries' own footprint.

    python benchmarks/bench_memory.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import finish, parser

CHILD = r"""
import json, resource
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
side, cell, H, B, T = {side!r}, {cell!r}, {H}, {B}, {T}
if side == "rnnkit":
    from bench_train import rnnkit_step
    step, _ = rnnkit_step(cell, 65, 64, H, 2, B, T)
else:
    import torch
    torch.set_num_threads(2)
    from bench_train import torch_step
    step = torch_step(cell, 65, 64, H, 2, B, T)
before = rss_mb()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _ in range(3):
    step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"before_mb": before, "peak_mb": peak, "step_mb": peak - before,
                  "setup_peak_mb": peak_before}}))
"""


def measure(side, cell, H, B, T) -> dict:
    code = CHILD.format(side=side, cell=cell, H=H, B=B, T=T)
    here = Path(__file__).resolve().parent             # `python -c` imports from its cwd
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=here)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = parser(__doc__)
    args = ap.parse_args(argv)
    rows = []
    for cell, H, B, T in (("lstm", 256, 32, 64), ("gru", 256, 32, 64), ("rnn", 256, 32, 64),
                          ("lstm", 512, 64, 100)):
        ours, theirs = measure("rnnkit", cell, H, B, T), measure("torch", cell, H, B, T)
        rows.append({"cell": cell, "H": H, "B": B, "T": T, "rnnkit_step_mb": ours["step_mb"],
                     "torch_step_mb": theirs["step_mb"],
                     "ratio": ours["step_mb"] / max(theirs["step_mb"], 1e-9)})
        print(f"{cell:4s} H={H} B={B} T={T}: rnnkit {ours['step_mb']:7.1f} MB | torch "
              f"{theirs['step_mb']:7.1f} MB | rnnkit/torch {rows[-1]['ratio']:.2f}")
    return finish(rows, args.json)


if __name__ == "__main__":
    main()
