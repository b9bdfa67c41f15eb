"""What every benchmark script shares: its command line and its JSON output."""
from __future__ import annotations

import argparse
import json
import statistics
import time


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser titled by the first line of ``doc``, with ``--json PATH``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write the rows here as JSON")
    return ap


def finish(rows, path):
    """Write ``rows`` to ``path`` when one was given; return them."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def side_by_side(fns: dict, rounds: int = 5, steps: int = 2, warmup: int = 1,
                 pause: float = 0.5) -> dict:
    """Median seconds per call of each function in ``fns`` (name -> callable), timed in turns
    (``timed_in_turns``)."""
    times = timed_in_turns(fns, rounds, steps, warmup, pause)
    return {name: statistics.median(t) for name, t in times.items()}


def timed_in_turns(fns: dict, rounds: int = 5, steps: int = 2, warmup: int = 1,
                   pause: float = 0.5) -> dict:
    """Seconds of every timed call of each function in ``fns`` (name -> list), timed in turns.

    Each round gives every function a block: a ``pause``, ``warmup`` untimed calls, then
    ``steps`` timed ones; the order of the functions flips from round to round, so slow drifts
    of the machine hit all of them alike. Blocks, not single calls taken in turn: a library's
    idle threads (OpenBLAS's, MKL's, PyTorch's OpenMP pool) keep spinning on the cores for a
    while after its last call and slow down whatever runs next. Measured here, alternating
    single calls made PyTorch's H=256 LSTM step nearly 3x slower than it runs on its own, and
    MKL's threads, which spin for 200 ms (``KMP_BLOCKTIME``), made NumPy's products slower and
    NumPy's made MKL's slower. The pause lets the last block's threads go to sleep; the untimed
    calls wake the block's own, as a training loop that calls one library all along has them."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            if pause > 0 and len(fns) > 1:
                time.sleep(pause)
            for _ in range(warmup):
                fn()
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times
