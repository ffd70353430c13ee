"""Shared fixtures: the embedded model and benchmark, loaded once per test session (a module
may override `bench` with its own data)."""

from __future__ import annotations

import os
import tempfile

import pytest

import asru_lab as al


def pytest_configure(config) -> None:
    """The audits' oracle cache (`asru_lab.auditing.oracle_cache`) in a folder of this test
    session's own: no test reads an entry of an earlier session or of the user's; the CLI and
    notebook subprocesses inherit it."""
    os.environ["ASRU_LAB_CACHE"] = tempfile.mkdtemp(prefix="asru_lab-test-cache-")


@pytest.fixture(scope="session")
def lm() -> al.LoadedModel:
    """The shipped tiny Qwen3-VL. Tests may steer it with hooks but must remove them."""
    return al.load_model()


@pytest.fixture(scope="session")
def bench() -> al.Benchmark:
    """The synthetic benchmark with the default forget ratio and seed."""
    return al.load_benchmark()
