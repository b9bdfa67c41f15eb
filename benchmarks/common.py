"""What every benchmark script shares: its command line and its JSON output."""
from __future__ import annotations

import argparse
import json


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
