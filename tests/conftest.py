"""Fixtures shared by several test files."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from rnnkit import blas


@pytest.fixture
def fresh_mkl():
    """MKL not yet looked for, as in a new process; looked for again, as usual, after the test."""
    blas._load.cache_clear()
    yield
    blas._load.cache_clear()


@pytest.fixture(scope="session")
def import_benchmark():
    """``import_benchmark("bench_train")``: a module of ``benchmarks/`` (which is no package),
    imported with that folder on ``sys.path`` for the import only."""
    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")

    def load(name):
        sys.path.insert(0, folder)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(folder)
    return load
