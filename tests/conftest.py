"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from rnnkit import blas


@pytest.fixture
def fresh_mkl():
    """MKL not yet looked for, as in a new process; looked for again, as usual, after the test."""
    blas._load.cache_clear()
    yield
    blas._load.cache_clear()
