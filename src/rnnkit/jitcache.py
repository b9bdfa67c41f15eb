"""numba's on-disk cache, kept honest about the functions compiled into other files' functions.

numba caches each compiled function (``cache=True``) and throws the copy away when that
function's own source file changes, not when a function it calls, and compiled into itself,
changes in another file: after an edit of a kernel in ``nn/fused.py``, the loop over time in
``nn/timeloop.py`` would go on running the old kernel from its cache, silently. So a module
whose compiled functions call another file's calls ``forget_if_changed``: its cached functions
are dropped whenever any of the files it names differs from when they were cached (a marker
file next to the cache holds a hash of them).
"""
from __future__ import annotations

import glob
import hashlib
import os


def forget_if_changed(dispatcher, module_file: str, sources) -> None:
    """Drop the cached functions of ``module_file`` (the file of numba ``dispatcher``, one of
    its functions) unless ``sources`` (paths) are as they were when they were cached. Does
    nothing where the cache cannot be found or written."""
    try:
        path = dispatcher._cache._cache_path          # numba's (private) cache directory
        digest = hashlib.sha256()
        for src in sorted(sources):
            with open(src, "rb") as f:
                digest.update(f.read())
        stem = os.path.splitext(os.path.basename(module_file))[0]
        marker = os.path.join(path, f"{stem}.sources-{digest.hexdigest()[:16]}")
        if os.path.exists(marker):
            return
        for old in glob.glob(os.path.join(glob.escape(path), f"{glob.escape(stem)}.*")):
            if old.endswith((".nbi", ".nbc")) or ".sources-" in old:
                os.remove(old)
        os.makedirs(path, exist_ok=True)
        with open(marker, "w"):
            pass
    except (AttributeError, OSError):        # no cache, another numba, a read-only install
        return
