"""Write tests/fixtures/golden_recurrent.npz: PyTorch's outputs and gradients for every case in
``torch_reference.golden_cases()``, so the parity tests run without torch.

    python tests/make_golden.py          # needs torch (pip install torch==2.13.0)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from torch_reference import build, golden_cases, make_inputs, reference

OUT = Path(__file__).resolve().parent / "fixtures" / "golden_recurrent.npz"


def main():
    arrays, meta = {}, []
    for i, case in enumerate(golden_cases()):
        rng = np.random.default_rng(case["seed"])
        weights = {k: v.copy() for k, v in build(case, rng).state_dict().items()}
        a = make_inputs(case, rng)
        ref = reference(case, weights, a)
        for group in (weights, a, ref):
            for k, v in group.items():
                arrays[f"{i}/{k}"] = v
        meta.append(case)
    arrays["meta"] = np.frombuffer(json.dumps({"torch": torch.__version__, "cases": meta})
                                   .encode(), dtype=np.uint8)
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {len(meta)} cases to {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
