"""`reproduce`: every unlearning method at every forget ratio, evaluated, tabulated and plotted.

`reproduce(out_dir, ReproduceConfig())` writes:

    out_dir/main_table.csv, main_table.md   one row per (method, forget ratio): the evaluation
                                            JSON flattened with dots, then `ue` and `gq`
    out_dir/summary.md                      the columns a reader looks at first, and the
                                            headline ratios of ASRU over each baseline
    out_dir/headline.json                   those ratios
    out_dir/manifest.json                   commit, model and data fingerprints, configs,
                                            seeds, timings, whether each cell came from cache
    out_dir/*.html, *.png                   trade-off scatter, answer categories, layer sweep,
                                            stage 2 reward curves
    out_dir/cache/                          one JSON per (method, ratio) and the located probes

Headline metrics (the paper's two numbers):

- **UE**, unlearning effectiveness: the mean over the forget and test splits of
  `1 - leak / leak_vanilla` and `1 - (mcq - 0.25) / (mcq_vanilla - 0.25)`, each clipped to
  [0, 1] (1: nothing of the forget people is left; 0: as much as before; 0.25 is MCQ chance).
- **GQ**, generation quality: the forget split's contextual-refusal score (0-5).
- ASRU over a baseline: UE as a relative gain in % (`100 * (UE_asru / UE_base - 1)`), GQ as a
  factor `GQ_asru / max(GQ_base, 0.1)`.

A cell is cached under a key of (method and its config, model weights, data fingerprint, forget
ratio, seed, evaluation config, asru_lab version); a re-run recomputes only cells whose key
changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from asru_lab.artifacts import claim_output, write_json_atomic, write_text_atomic
from asru_lab.baselines import METHODS, get_method, unlearn
from asru_lab.baselines.registry import Unlearned, UnlearnError
from asru_lab.data import benchmark_kind, load_benchmark
from asru_lab.data.schema import EVAL_SPLITS, Benchmark
from asru_lab.evaluation.harness import EvalConfig, evaluate
from asru_lab.generation import generate_batch
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import LocateConfig, locate
from asru_lab.validation import check_fields, nonfinite_entry

PAPER_METHODS = (
    "ga",
    "grad_diff",
    "kl_min",
    "npo",
    "refusal_sft",
    "steer_only",
    "asru_stage1",
    "asru",
)
HEADLINE_BASELINES = ("ga", "grad_diff", "kl_min", "npo")  # the paper's comparison
FORGET_RATIOS = (0.05, 0.1, 0.15)
VANILLA = "vanilla"
MCQ_CHANCE = 0.25
GQ_FLOOR = 0.1
CACHE_DIR = "cache"
# config fields that change how a run is shown or stored, not what it computes
NOT_IN_KEY = {"progress", "training_dir", "checkpoint_dir", "resume"}


@dataclass
class ReproduceConfig:
    """Which methods at which forget ratios, and how each is run and evaluated."""

    methods: tuple[str, ...] = PAPER_METHODS  # registered names; a vanilla row is always added
    # fractions of the known people to forget (synthetic, MLLMU); a user dataset's own split wins
    forget_ratios: tuple[float, ...] = FORGET_RATIOS
    seed: int = 0  # chooses the forgotten people and seeds every method
    evaluate: EvalConfig = field(default_factory=EvalConfig)  # per split, 64 items per task
    locate: LocateConfig = field(default_factory=LocateConfig)  # the probe the ASRU rows use
    configs: dict[str, object] = field(default_factory=dict)  # method -> config override
    paper: bool = False  # the public code's settings for every method that has them
    cache: bool = True  # reuse cells whose key is unchanged
    cache_dir: str | None = None  # where cells are cached (default: out_dir/cache); the keys
    # make one cache safe to share between output folders
    figures: bool = True  # write the HTML figures
    png: bool = True  # and each as PNG (kaleido with the system Chromium)
    samples: int = 3  # sample answers kept per cell (forget and retain questions each)
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError, forget_ratios="(0, 1)", samples=">= 0")

    def method_config(self, name: str) -> object:
        """The config `name` runs with: an override, else the paper's or the default one."""
        if name in self.configs:
            config = self.configs[name]
        else:
            method = get_method(name)
            make = method.paper_config if self.paper and method.paper_config else None
            config = (make or method.default_config)()
        return _seeded(config, self.seed, self.progress)


def _seeded(config, seed: int, progress: bool):
    """A copy of `config` (and of its nested configs) with `seed` and `progress` set."""
    if not is_dataclass(config):
        return config
    changes = {}
    for name in config.__dataclass_fields__:
        value = getattr(config, name)
        if name == "seed":
            changes[name] = seed
        elif name == "progress":
            changes[name] = progress
        elif is_dataclass(value):
            changes[name] = _seeded(value, seed, progress)
    return replace(config, **changes)


def _keyable(value):
    """A config as JSON-ready data without the fields that do not change results."""
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _keyable(v) for k, v in sorted(value.items()) if k not in NOT_IN_KEY}
    if isinstance(value, list | tuple):
        return [_keyable(v) for v in value]
    return value


def weights_fingerprint(lm: LoadedModel) -> str:
    """sha256 (16 hex digits) of every parameter and buffer: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(lm.model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unlearning_effectiveness(splits: dict, vanilla: dict) -> float:
    """UE in [0, 1] (module docstring): 1 - leak/leak_vanilla and the chance-corrected MCQ
    drop, each clipped to [0, 1], averaged over the forget and test splits present."""
    terms = []
    for split in ("forget", "test"):
        now, before = splits.get(split), vanilla.get(split)
        if not now or not before:
            continue
        if before.get("leak_rate") and "leak_rate" in now:
            terms.append(_clip(1 - now["leak_rate"] / before["leak_rate"]))
        if "mcq_acc" in now and before.get("mcq_acc", 0) > MCQ_CHANCE:
            drop = (now["mcq_acc"] - MCQ_CHANCE) / (before["mcq_acc"] - MCQ_CHANCE)
            terms.append(_clip(1 - drop))
    if not terms:
        raise UnlearnError(
            "cannot compute UE: the vanilla model leaks nothing and is at chance on the forget "
            "and test splits, so there is nothing to unlearn"
        )
    return sum(terms) / len(terms)


def generation_quality(splits: dict) -> float:
    """GQ: the forget split's contextual-refusal score (0-5)."""
    return float(splits["forget"]["quality"]["contextual_refusal"])


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def headline(rows: list[dict]) -> list[dict]:
    """Per forget ratio and baseline: UE and GQ of both, ASRU's UE gain (%) and GQ factor."""
    out = []
    for ratio in sorted({r["forget_ratio"] for r in rows}):
        at = {r["method"]: r for r in rows if r["forget_ratio"] == ratio}
        if "asru" not in at:
            continue
        asru = at["asru"]
        for base in HEADLINE_BASELINES:
            if base not in at:
                continue
            b = at[base]
            gain = 100 * (asru["ue"] / b["ue"] - 1) if b["ue"] > 0 else math.inf
            out.append(
                {
                    "forget_ratio": ratio,
                    "baseline": base,
                    "ue_baseline": b["ue"],
                    "ue_asru": asru["ue"],
                    "ue_gain_pct": gain,
                    "gq_baseline": b["gq"],
                    "gq_asru": asru["gq"],
                    "gq_factor": asru["gq"] / max(b["gq"], GQ_FLOOR),
                }
            )
    return out


@dataclass
class ReproduceResult:
    """The table rows (flattened evaluations + ue, gq), the headline ratios, the manifest."""

    rows: list[dict]
    headline: list[dict]
    manifest: dict
    out_dir: Path

    def summary(self) -> str:
        return summary_markdown(self.rows, self.headline)


SUMMARY_COLUMNS = (
    ("forget.leak_rate", "forget leak ↓"),
    ("forget.mcq_acc", "forget MCQ ↓"),
    ("test.leak_rate", "test leak ↓"),
    ("forget.quality.contextual_refusal", "GQ: ctx refusal 0-5 ↑"),
    ("retain.leak_rate", "retain recall ↑"),
    ("retain.mcq_acc", "retain MCQ ↑"),
    ("general.leak_rate", "general ↑"),
    ("ue", "UE ↑"),
)


def summary_markdown(rows: list[dict], head: list[dict]) -> str:
    """The main columns per (forget ratio, method) and the headline ratios, as markdown."""
    lines = ["| forget ratio | method | " + " | ".join(t for _, t in SUMMARY_COLUMNS) + " |"]
    lines.append("|---|---|" + "---|" * len(SUMMARY_COLUMNS))
    for r in rows:
        cells = [_fmt(r.get(k)) for k, _ in SUMMARY_COLUMNS]
        lines.append(f"| {r['forget_ratio']:g} | {r['method']} | " + " | ".join(cells) + " |")
    if head:
        lines += [
            "",
            "| forget ratio | ASRU vs | UE base → ASRU | UE gain | GQ base → ASRU | GQ ×|",
        ]
        lines.append("|---|---|---|---|---|---|")
        for h in head:
            gain = "∞" if math.isinf(h["ue_gain_pct"]) else f"{h['ue_gain_pct']:+.1f} %"
            lines.append(
                f"| {h['forget_ratio']:g} | {h['baseline']} | {h['ue_baseline']:.3f} → "
                f"{h['ue_asru']:.3f} | {gain} | {h['gq_baseline']:.2f} → {h['gq_asru']:.2f} | "
                f"{h['gq_factor']:.1f}× |"
            )
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None or x == "":
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def table_columns(rows: list[dict]) -> list[str]:
    """method, forget_ratio, the flattened evaluation keys in split order, then ue and gq."""
    order = {s: k for k, s in enumerate(EVAL_SPLITS)}
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("method", "forget_ratio", "ue", "gq")]
    keys.sort(key=lambda k: order.get(k.split(".")[0], len(order)))  # stable within a split
    return ["method", "forget_ratio", *keys, "ue", "gq"]


def write_tables(rows: list[dict], head: list[dict], out: Path) -> None:
    columns = table_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "main_table.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    write_text_atomic(out / "main_table.md", "\n".join(md) + "\n")
    write_text_atomic(out / "summary.md", summary_markdown(rows, head))
    write_json_atomic(out / "headline.json", head)


def _commit() -> dict:
    """The git commit of the asru_lab checkout, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": bool(dirty)}


class _Cell:
    """One (method, forget ratio): its cache key, file, and the computation when missing."""

    def __init__(self, method: str, ratio: float, fields: dict, cache: Path):
        self.method, self.ratio, self.fields = method, ratio, fields
        self.key = cache_key(fields)
        self.path = cache / f"ratio-{ratio:g}" / f"{method}-{self.key[:16]}.json"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            warnings.warn(f"damaged cache file {self.path}; recomputing it", stacklevel=3)
            return None
        if not isinstance(data, dict) or data.get("key") != self.key:
            return None
        found = nonfinite_entry(data.get("evaluation"), "evaluation")
        if found:
            warnings.warn(
                f"damaged cache file {self.path}: it holds {found}; recomputing it", stacklevel=3
            )
            return None
        return data


def _samples(lm: LoadedModel, bench: Benchmark, n: int) -> list[dict]:
    """Greedy answers to the first `n` forget and `n` retain image questions."""
    items = [i for i in bench.split("forget", "qa") if i.image][:n]
    items += [i for i in bench.split("retain", "qa") if i.image][:n]
    if not items:
        return []
    images = [bench.load_image(i.image) for i in items]
    answers = generate_batch(lm, images, [i.question for i in items], max_new_tokens=40)
    return [
        {
            "split": i.split,
            "person": i.person_id,
            "question": i.question,
            "truth": i.value,
            "answer": a,
        }
        for i, a in zip(items, answers, strict=True)
    ]


def _slim(record: dict) -> dict:
    """The record without per-example arrays that only bloat the cache."""
    drop = {"projections", "per_example"}
    return {k: (_slim(v) if isinstance(v, dict) else v) for k, v in record.items() if k not in drop}


def reproduce(
    out_dir: str | Path,
    config: ReproduceConfig | None = None,
    *,
    model: str | LoadedModel | None = None,
    data: str | None = None,
    overwrite: bool = False,
) -> ReproduceResult:
    """Run, evaluate and tabulate every method of `config` at every forget ratio.

    `model`: a LoadedModel, an HF id / local dir, or None for the embedded model; `data`: a
    `load_benchmark` source (None: the embedded benchmark; "mllmu:<dir>"; a dataset dir, run
    once at its own split whatever `forget_ratios` says).
    Returns the rows, headline and manifest also written to `out_dir` (layout: module doc).
    An `out_dir` holding files asru_lab did not write needs `overwrite` (they are kept).
    """
    config = config or ReproduceConfig()
    for name in config.methods:
        get_method(name)  # unknown names fail before any work
    if not config.forget_ratios:
        raise UnlearnError("ReproduceConfig.forget_ratios is empty: give at least one ratio")
    kind = benchmark_kind(data)  # an unknown source fails before any work
    started = time.time()
    out = claim_output(out_dir, overwrite=overwrite)
    cache = claim_output(Path(config.cache_dir) if config.cache_dir else out / CACHE_DIR)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    model_fp = {**lm.fingerprint(), "weights_sha256": weights_fingerprint(lm)}
    methods = (VANILLA, *[m for m in config.methods if m != VANILLA])
    rows, cells_meta, probes, curves, probe_dirs = [], [], {}, {}, []
    # a user dataset fixes its forget set: one pass, labelled with that set's ratio
    ratios = (None,) if kind == "user" else config.forget_ratios
    bar = tqdm(total=len(methods) * len(ratios), desc="reproduce", disable=not config.progress)
    try:
        for asked in ratios:
            seed = config.seed if kind == "synthetic" else None  # MLLMU's sets are fixed too
            bench = load_benchmark(data, forget_ratio=asked, seed=seed)
            ratio = bench.meta["forget_ratio"] if asked is None else asked
            base = {
                "model": model_fp,
                "data": bench.fingerprint(),
                "forget_ratio": ratio,
                "seed": config.seed,
                "evaluate": _keyable(config.evaluate),
                "version": _version(),
            }
            located: dict = {}
            vanilla_splits = None
            for method in methods:
                bar.set_postfix(method=method, ratio=ratio)
                method_config = None if method == VANILLA else config.method_config(method)
                fields = {**base, "method": method, "config": _keyable(method_config)}
                needs_probe = method != VANILLA and METHODS[method].needs_probe
                if needs_probe:
                    fields["locate"] = _keyable(config.locate)
                cell = _Cell(method, ratio, fields, cache)
                data_ = cell.load() if config.cache else None
                cached = data_ is not None
                if not cached:
                    probe = None
                    if needs_probe:
                        probe = _probe(lm, bench, config, base, cache, located)
                    data_ = _compute(lm, bench, method, method_config, probe, config, cell)
                    write_json_atomic(cell.path, data_)
                if needs_probe and ratio not in probes:
                    probe_dir = _probe_dir(cache, base, config)
                    probes[ratio] = _probe_evidence(probe_dir)
                    probe_dirs.append(os.path.relpath(probe_dir, out))
                if method == "asru":
                    curves[ratio] = data_["record"].get("reinforce", {}).get("metrics", [])
                splits = data_["evaluation"]["splits"]
                if method == VANILLA:
                    vanilla_splits = splits
                row = {"method": method, "forget_ratio": ratio}
                row.update(flatten(splits))
                row["ue"] = unlearning_effectiveness(splits, vanilla_splits)
                row["gq"] = generation_quality(splits)
                rows.append(row)
                cells_meta.append(
                    {
                        "method": method,
                        "forget_ratio": ratio,
                        "key": cell.key,
                        "cache_file": os.path.relpath(cell.path, out),
                        "cached": cached,
                        "seconds": data_["seconds"],
                        "samples": data_.get("samples", []),
                    }
                )
                bar.update(1)
    finally:
        bar.close()
    head = headline(rows)
    write_tables(rows, head, out)
    manifest = {
        "asru_lab_version": _version(),
        **_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"source": None if isinstance(model, LoadedModel) else model, **model_fp},
        "data": {"source": data or "synthetic"},
        "seed": config.seed,
        "forget_ratios": list(dict.fromkeys(r["forget_ratio"] for r in rows)),
        "methods": list(methods),
        "paper_settings": config.paper,
        "configs": {m: _keyable(config.method_config(m)) for m in config.methods},
        "evaluate": _keyable(config.evaluate),
        "locate": _keyable(config.locate),
        "definitions": {
            "ue": "mean over forget and test of clip(1 - leak/leak_vanilla) and "
            "clip(1 - (mcq - 0.25)/(mcq_vanilla - 0.25))",
            "gq": "forget quality.contextual_refusal (0-5)",
            "ue_gain_pct": "100 * (UE_asru / UE_baseline - 1)",
            "gq_factor": f"GQ_asru / max(GQ_baseline, {GQ_FLOOR})",
        },
        "headline": head,
        "cells": cells_meta,
        "probes": probe_dirs,
        "wall_seconds": round(time.time() - started, 1),
    }
    if config.figures:
        from asru_lab import viz

        manifest["figures"] = viz.write_reproduce_figures(
            rows, probes, curves, out, rewards=_rewards(config), png=config.png
        )
    write_json_atomic(out / "manifest.json", manifest)
    return ReproduceResult(rows, head, manifest, out)


def _rewards(config: ReproduceConfig) -> list[str]:
    asru = config.method_config("asru") if "asru" in config.methods else None
    return list(asru.reinforce.rewards) if asru is not None else []


def _version() -> str:
    from asru_lab import __version__

    return __version__


def _probe_dir(cache: Path, base: dict, config: ReproduceConfig) -> Path:
    key = cache_key({**base, "locate": _keyable(config.locate)})
    return cache / f"ratio-{base['forget_ratio']:g}" / f"probe-{key[:16]}"


def _probe(lm, bench, config, base, cache, located) -> SteeringProbe:
    """The stage 1.1 probe for this ratio: in memory, from the cache, or located now."""
    if "probe" in located:
        return located["probe"]
    path = _probe_dir(cache, base, config)
    if config.cache and (path / "probe.json").is_file():
        probe = SteeringProbe.load(path)
    else:
        probe = locate(lm, bench, _seeded(config.locate, config.seed, config.progress))
        probe.save(path)
    located["probe"] = probe
    return probe


def _probe_evidence(path: Path) -> dict:
    return SteeringProbe.load(path).evidence if (path / "probe.json").is_file() else {}


def _compute(lm, bench, method, method_config, probe, config, cell) -> dict:
    """Run `method` (or nothing, for vanilla), evaluate it and collect what the cache keeps."""
    started = time.time()
    if method == VANILLA:
        result = Unlearned(VANILLA, lm)
    else:
        result = unlearn(lm, bench, method, method_config, probe=probe)
    trained = time.time() - started
    evaluation = replace(config.evaluate, progress=config.progress)
    with result.applied():
        report = evaluate(result.model, bench, evaluation, method=method)
        samples = _samples(result.model, bench, config.samples)
    return {
        "key": cell.key,
        "method": method,
        "forget_ratio": cell.ratio,
        "key_fields": cell.fields,
        "evaluation": report.to_dict(),
        "record": _slim(result.record),
        "samples": samples,
        "seconds": {"unlearn": round(trained, 1), "evaluate": report.meta["seconds"]},
    }


@dataclass
class ReproducedFigures:
    """What `load_results` reads back from a `reproduce` folder: the table rows (numbers as
    numbers), headline, manifest, and the data behind the layer-sweep and reward figures."""

    rows: list[dict]
    headline: list[dict]
    manifest: dict
    probes: dict[float, dict]  # forget ratio -> the probe's locate evidence
    curves: dict[float, list[dict]]  # forget ratio -> stage 2 metrics rows


def load_results(out_dir: str | Path) -> ReproducedFigures:
    """Read a `reproduce` folder (e.g. the committed `figures/`) without running anything."""
    out = Path(out_dir)
    missing = [n for n in ("manifest.json", "main_table.csv") if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{out} is not a reproduce folder: {', '.join(missing)} missing; run "
            f"`asru-lab reproduce --out {out}` first"
        )
    manifest = json.loads((out / "manifest.json").read_text())
    with open(out / "main_table.csv", newline="") as fh:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    probes, curves = {}, {}
    for cell in manifest["cells"]:
        path = out / cell["cache_file"]
        if cell["method"] == "asru" and path.is_file():
            record = json.loads(path.read_text())["record"]
            curves[cell["forget_ratio"]] = record.get("reinforce", {}).get("metrics", [])
    for name in manifest.get("probes", []):
        probe_dir = out / name
        ratio = float(probe_dir.parent.name.removeprefix("ratio-"))
        if (probe_dir / "probe.json").is_file():
            probes[ratio] = SteeringProbe.load(probe_dir).evidence
    return ReproducedFigures(rows, manifest["headline"], manifest, probes, curves)


def _number(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
