"""rnnkit.jitcache: numba's cached functions of a module are dropped when a file they compile in
changes."""
from __future__ import annotations

import types

from rnnkit import jitcache


def test_cached_functions_are_forgotten_when_a_source_they_compile_in_changes(tmp_path):
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    dep = tmp_path / "kernels.py"
    dep.write_text("def k(): return 1\n")
    fn = types.SimpleNamespace(_cache=types.SimpleNamespace(_cache_path=str(cache)))
    cached = ["loop.f-10.py311.nbi", "loop.f-10.py311.1.nbc"]
    others = ["kernels.k-1.py311.nbi", "looped.g-3.py311.nbi"]
    for name in cached + others:
        (cache / name).write_bytes(b"x")

    def forget():
        jitcache.forget_if_changed(fn, str(tmp_path / "loop.py"), [str(dep)])
        return sorted(p.name for p in cache.iterdir() if ".sources-" not in p.name)

    assert forget() == sorted(others)                 # no marker yet: dropped
    (cache / cached[0]).write_bytes(b"x")             # cached again from these sources
    assert forget() == sorted(others + cached[:1])    # unchanged: kept
    dep.write_text("def k(): return 2\n")
    assert forget() == sorted(others)                 # changed: dropped
    assert len([p for p in cache.iterdir() if ".sources-" in p.name]) == 1


def test_a_cache_that_cannot_be_found_is_left_alone(tmp_path):
    jitcache.forget_if_changed(object(), str(tmp_path / "loop.py"), [str(tmp_path / "none.py")])
