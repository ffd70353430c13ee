"""Benchmarks: the schema, the synthetic benchmark and loaders for user and MLLMU-Bench data."""

from __future__ import annotations

import os
from pathlib import Path

from asru_lab.data.mllmu import load_mllmu
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem
from asru_lab.data.synthetic import load_synthetic
from asru_lab.data.user_format import export_benchmark, load_user_dataset

MLLMU_PREFIX = "mllmu:"

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Person",
    "QAItem",
    "export_benchmark",
    "load_benchmark",
    "load_mllmu",
    "load_synthetic",
    "load_user_dataset",
]


def load_benchmark(
    source: str | os.PathLike | None = None, *, forget_ratio: float = 0.1, seed: int = 0
) -> Benchmark:
    """The benchmark named by `source`.

    None or "synthetic": the embedded synthetic benchmark (`seed` chooses the forgotten
    people); "mllmu:<dir>": a local MLLMU-Bench copy (`forget_ratio` 0.05 / 0.1 / 0.15); a
    directory: a user dataset, whose profiles.jsonl decides the split (`forget_ratio` and
    `seed` are ignored).
    """
    if source is None or source == "synthetic":
        return load_synthetic(forget_ratio, split_seed=seed)
    text = os.fspath(source)
    if text.startswith(MLLMU_PREFIX):
        return load_mllmu(text.removeprefix(MLLMU_PREFIX), forget_ratio=forget_ratio)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_user_dataset(path, forget_ratio=forget_ratio)
    raise BenchmarkError(
        f"unknown benchmark source {text!r}: give None or 'synthetic' (the embedded benchmark), "
        "'mllmu:<dir>' (MLLMU-Bench parquet) or an existing directory holding profiles.jsonl "
        "and qa.jsonl"
    )
