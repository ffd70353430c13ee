"""Shared fixtures: the embedded model and benchmark, loaded once per test session (a module
may override `bench` with its own data)."""

from __future__ import annotations

import pytest

import asru_lab as al


@pytest.fixture(scope="session")
def lm() -> al.LoadedModel:
    """The shipped tiny Qwen3-VL. Tests may steer it with hooks but must remove them."""
    return al.load_model()


@pytest.fixture(scope="session")
def bench() -> al.Benchmark:
    """The synthetic benchmark with the default forget ratio and seed."""
    return al.load_benchmark()
