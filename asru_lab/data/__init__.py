"""Benchmarks: the schema, the synthetic benchmark and loaders for user, MLLMU-Bench and CLEAR
data."""

from __future__ import annotations

import os
from pathlib import Path

from asru_lab.data.clear import load_clear
from asru_lab.data.mllmu import load_mllmu
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem
from asru_lab.data.synthetic import load_synthetic
from asru_lab.data.user_format import export_benchmark, fixed_split_error, load_user_dataset

MLLMU_PREFIX = "mllmu:"
CLEAR_PREFIX = "clear:"
# Parquet benchmarks whose forget sets are fixed configs: kind -> (prefix, loader, name, the
# forget configs, the forget_ratio choosing each).
FIXED_SPLIT_SOURCES = {
    "mllmu": (MLLMU_PREFIX, load_mllmu, "MLLMU-Bench", "forget_5/10/15", "0.05/0.1/0.15"),
    "clear": (CLEAR_PREFIX, load_clear, "CLEAR", "forget01/05/10", "0.01/0.05/0.1"),
}

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Person",
    "QAItem",
    "benchmark_kind",
    "export_benchmark",
    "load_benchmark",
    "load_clear",
    "load_mllmu",
    "load_synthetic",
    "load_user_dataset",
]


def benchmark_kind(source: str | os.PathLike | None) -> str:
    """Which loader `source` names: "synthetic", "mllmu", "clear" or "user" (a dataset
    directory)."""
    if source is None or source == "synthetic":
        return "synthetic"
    text = os.fspath(source)
    for kind, (prefix, *_) in FIXED_SPLIT_SOURCES.items():
        if text.startswith(prefix):
            return kind
    if Path(text).expanduser().is_dir():
        return "user"
    raise BenchmarkError(
        f"unknown benchmark source {text!r}: give None or 'synthetic' (the embedded benchmark), "
        "'mllmu:<dir>' (MLLMU-Bench parquet), 'clear:<dir>' (CLEAR parquet) or an existing "
        "directory holding profiles.jsonl and qa.jsonl"
    )


def load_benchmark(
    source: str | os.PathLike | None = None,
    *,
    forget_ratio: float | None = None,
    seed: int | None = None,
) -> Benchmark:
    """The benchmark named by `source`.

    None or "synthetic": the embedded synthetic benchmark, `forget_ratio` of its people
    forgotten (default 0.1), chosen by `seed` (default 0); "mllmu:<dir>": a local MLLMU-Bench
    copy, `forget_ratio` 0.05 / 0.1 (default) / 0.15 picking its fixed forget_5/10/15 set
    (`seed` is refused); "clear:<dir>": a local CLEAR copy, `forget_ratio` 0.01 / 0.05 / 0.1
    (default) picking forget01/05/10 (`seed` is refused); a directory: a user dataset, whose
    profiles.jsonl decides the split (`forget_ratio` and `seed` are refused).
    """
    kind = benchmark_kind(source)
    # None leaves the loader's own default
    ratio = {} if forget_ratio is None else {"forget_ratio": forget_ratio}
    if kind == "synthetic":
        return load_synthetic(**ratio, **({} if seed is None else {"split_seed": seed}))
    text = os.fspath(source)
    if kind in FIXED_SPLIT_SOURCES:
        prefix, loader, name, configs, ratios = FIXED_SPLIT_SOURCES[kind]
        if seed is not None:
            raise BenchmarkError(
                f"seed={seed!r} only applies to the synthetic benchmark: {name}'s forget sets "
                f"are fixed ({configs}, chosen with forget_ratio {ratios}); leave seed out (CLI: "
                "drop --seed)"
            )
        return loader(text.removeprefix(prefix), **ratio)
    root = Path(text).expanduser()
    given = {k: v for k, v in (("forget_ratio", forget_ratio), ("seed", seed)) if v is not None}
    if given:
        raise fixed_split_error(root, given)
    return load_user_dataset(root)
