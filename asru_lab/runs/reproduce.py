"""`reproduce`: every unlearning method at every forget ratio, evaluated, tabulated and plotted.

`reproduce(out_dir, ReproduceConfig())` writes:

    out_dir/main_table.csv, main_table.md   one row per (method, forget ratio): the evaluation
                                            JSON flattened with dots (with
                                            `forget.forget_quality` against the oracle's
                                            row), then `ue` and `gq`
    out_dir/summary.md                      the columns a reader looks at first, and the
                                            headline ratios of ASRU over each baseline
    out_dir/headline.json                   those ratios
    out_dir/manifest.json                   commit, model and data fingerprints, configs,
                                            seeds, timings, whether each cell came from cache
    out_dir/*.html, *.png                   trade-off scatter, answer categories, layer sweep,
                                            stage 2 reward curves
    out_dir/cache/                          one JSON per (method, ratio) and the located probes
    out_dir/paper/                          under a protocol that scores by MLLMU-Bench's rules
                                            (`tables.PAPER_PROTOCOLS`): the same rows in the
                                            paper's layout (`paper_table.csv`, `.md`) and a
                                            trade-off figure per forget ratio

The headline metrics (UE, GQ and ASRU's ratios over the baselines) are defined in
`asru_lab.evaluation.headline`.

Everything a run can be refused for is checked before any model is loaded or any folder is
written: unknown methods, no forget ratio, an unknown protocol, more few-shot examples than the
protocol's pool at some ratio, and (with the oracle row, on the synthetic benchmark) a forget
ratio whose retrain oracle is not built.

A cell is cached under a key of (method and its config, model weights, data fingerprint, forget
ratio, seed, evaluation config, asru_lab version); a re-run recomputes only cells whose key
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import torch

from asru_lab.artifacts import claim_output, is_complete, write_json_atomic
from asru_lab.auditing import AUDIT_PROTOCOL, AuditConfig, AuditError, audit, load_oracle
from asru_lab.baselines import METHODS, get_method, unlearn
from asru_lab.baselines.registry import Unlearned, UnlearnError
from asru_lab.data import benchmark_kind, load_benchmark
from asru_lab.data.schema import Benchmark
from asru_lab.evaluation.harness import EvalConfig, evaluate, sample_items
from asru_lab.evaluation.headline import (
    DEFINITIONS,
    HeadlineError,
    generation_quality,
    headline,
    unlearning_effectiveness,
)
from asru_lab.evaluation.probability import forget_quality
from asru_lab.evaluation.protocols import PROTOCOLS, get_protocol
from asru_lab.generation import generate_batch
from asru_lab.models.embedded import oracle_dir
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.probe import SteeringProbe
from asru_lab.progress import tqdm
from asru_lab.runs.tables import (
    PAPER_PROTOCOLS,
    PaperContext,
    flatten,
    summary_markdown,
    write_paper_table,
    write_tables,
)
from asru_lab.runs.tuning import (
    RULE,
    TuningConfig,
    attacked_leak,
    choose,
    knob_of,
    point,
    retain_accuracy,
    set_knob,
    validation_benchmark,
)
from asru_lab.stages.locate import LocateConfig, locate
from asru_lab.validation import check_fields, nonfinite_entry
from asru_lab.version import __version__

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
FORGET_RATIOS = (0.05, 0.1, 0.15)
VANILLA = "vanilla"
ORACLE = "oracle"  # the retrain oracle's row: the model that never saw the forget people
CACHE_DIR = "cache"
PAPER_DIR = "paper"  # the paper's layout of the rows, beside the main table they come from
# config fields that change how a run is shown, stored or fitted in memory, not what it computes
# (activation checkpointing recomputes the same activations: the same gradients, tested)
NOT_IN_KEY = {
    "progress",
    "training_dir",
    "checkpoint_dir",
    "resume",
    "activation_checkpointing",
    "relearn_checkpointing",
}


@dataclass
class ReproduceConfig:
    """Which methods at which forget ratios, and how each is run and evaluated."""

    methods: tuple[str, ...] = field(
        default=PAPER_METHODS,
        metadata={"help": "registered method names; a vanilla row is always added"},
    )
    forget_ratios: tuple[float, ...] = field(
        default=FORGET_RATIOS,
        metadata={
            "help": "fractions of the known people to forget (synthetic, MLLMU-Bench); a user "
            "dataset's own split wins"
        },
    )
    seed: int = field(
        default=0, metadata={"help": "chooses the forgotten people and seeds every method"}
    )
    evaluate: EvalConfig = field(
        default_factory=EvalConfig,
        metadata={"help": "the evaluation (per split, 64 items per task)"},
    )
    locate: LocateConfig = field(
        default_factory=LocateConfig, metadata={"help": "locates the probe the ASRU rows use"}
    )
    configs: dict[str, object] = field(
        default_factory=dict, metadata={"help": "method name -> its config, overriding the default"}
    )
    paper: bool = field(
        default=False,
        metadata={"help": "the public code's settings for every method that has them"},
    )
    cache: bool = field(default=True, metadata={"help": "reuse cells whose key is unchanged"})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "where cells are cached (None: out_dir/cache); their keys make one cache "
            "safe to share between output folders"
        },
    )
    figures: bool = field(default=True, metadata={"help": "write the HTML figures"})
    png: bool = field(
        default=True, metadata={"help": "and each as PNG (kaleido with the system Chromium)"}
    )
    samples: int = field(
        default=3,
        metadata={"help": "sample answers kept per cell (forget and retain questions each)"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    oracle: bool = field(
        default=True,
        metadata={
            "help": "add the retrain oracle as a row (synthetic benchmark: each forget ratio's "
            "oracle must be built, `asru-lab build-embedded --oracle`) and every row's forget "
            "quality against it"
        },
    )
    tuning: TuningConfig | None = field(
        default_factory=TuningConfig,
        metadata={
            "help": "tune each method's strength knob on validation forget people before it is "
            "reported (runs.tuning: the rule); None, or paper=True: the methods' own settings"
        },
    )
    audit: AuditConfig | None = field(
        default=None,
        metadata={
            "help": "also audit every method (asru_lab.auditing: `audit.*` columns) and add "
            "the retrain oracle as a row; None: no audit"
        },
    )

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
        return seeded_config(config, self.seed, self.progress)


def seeded_config(config, seed: int, progress: bool):
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
            changes[name] = seeded_config(value, seed, progress)
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


def _headline(compute, *splits: dict) -> float | None:
    """A headline number, or None (empty in the tables, null in the JSON) with a warning saying
    why when this evaluation cannot give it (a protocol without leak_rate or without the judge,
    a vanilla model at chance)."""
    try:
        return compute(*splits)
    except HeadlineError as exc:
        warnings.warn(str(exc), stacklevel=2)
        return None


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


@dataclass
class ReproduceResult:
    """The table rows (flattened evaluations + ue, gq), the headline ratios, the manifest."""

    rows: list[dict]
    headline: list[dict]
    manifest: dict
    out_dir: Path

    def summary(self) -> str:
        return summary_markdown(self.rows, self.headline)


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
    items = bench.questions("forget", "qa", image_only=True)[:n]
    items += bench.questions("retain", "qa", image_only=True)[:n]
    if not items:
        return []
    answers = generate_batch(
        lm, bench.images(items), [i.question for i in items], max_new_tokens=40
    )
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
    started = time.time()
    kind, ratios = _checked_request(config, data)
    out = claim_output(out_dir, overwrite=overwrite)
    cache = claim_output(Path(config.cache_dir) if config.cache_dir else out / CACHE_DIR)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    model_fp = {**lm.fingerprint(), "weights_sha256": weights_fingerprint(lm)}
    methods = (VANILLA, *[m for m in config.methods if m != VANILLA])
    got = _Collected()
    bar = tqdm(total=len(methods) * len(ratios), desc="reproduce", disable=not config.progress)
    try:
        for asked in ratios:
            bench = _benchmark(data, kind, asked, config.seed)
            ratio = bench.meta["forget_ratio"] if asked is None else asked
            base = {
                "model": model_fp,
                "data": bench.fingerprint(),
                "forget_ratio": ratio,
                "seed": config.seed,
                "evaluate": _keyable(config.evaluate),
                "version": __version__,
            }
            located: dict = {}
            if config.oracle or config.audit is not None:
                located["oracle"] = _oracle(ratio, config.seed) if kind == "synthetic" else None
            if config.tuning is not None and not config.paper:
                located["tuned"] = _tune(lm, bench, ratio, base, config, cache, got)
            vanilla_splits = None
            for method in methods:
                bar.set_postfix(method=method, ratio=ratio)
                run = _CellRun(lm, bench, method, ratio, base, config, cache, out, located)
                splits = _run_cell(run, vanilla_splits, got)
                if method == VANILLA:
                    vanilla_splits = splits
                bar.update(1)
            if located.get("oracle") is not None:
                run = _CellRun(lm, bench, ORACLE, ratio, base, config, cache, out, located)
                run.oracle = located["oracle"]
                _run_cell(run, vanilla_splits, got)
                if config.evaluate.probabilities:  # off: no truth ratio was asked for
                    _forget_quality(got, ratio)
    finally:
        bar.close()
    head = headline(got.rows)
    write_tables(got.rows, head, out)
    manifest = _manifest(config, model, data, model_fp, methods, got, head, started)
    if config.evaluate.protocol in PAPER_PROTOCOLS:
        context = _paper_context(config, lm, model_fp, data)
        manifest["paper"] = [
            f"{PAPER_DIR}/{name}"
            for name in _write_paper(got.rows, head, context, out / PAPER_DIR, config)
        ]
    if config.figures:
        from asru_lab import viz

        manifest["figures"] = viz.write_reproduce_figures(
            got.rows, got.probes, got.curves, out, rewards=_rewards(config), png=config.png
        )
        if got.audits:
            from asru_lab.viz.audit import write_audit_figures

            manifest["figures"] += write_audit_figures(got.audits, out, png=config.png)
    write_json_atomic(out / "manifest.json", manifest)
    return ReproduceResult(got.rows, head, manifest, out)


def _checked_request(config: ReproduceConfig, data: str | None) -> tuple[str, tuple]:
    """The benchmark's kind and the forget ratios to run (a user dataset's own split: one,
    None), after refusing what would fail later: an unknown method, source or protocol, no
    ratio, more few-shot examples than a ratio's pool or items the protocol cannot evaluate
    (it selects them and draws its examples in `evaluation.harness.sample_items`), or a
    synthetic ratio without its retrain oracle while the oracle row is asked for."""
    for name in config.methods:
        get_method(name)
    if not config.forget_ratios:
        raise UnlearnError("ReproduceConfig.forget_ratios is empty: give at least one ratio")
    get_protocol(config.evaluate.protocol)  # a config changed after it was made
    kind = benchmark_kind(data)
    if kind == "synthetic" and config.oracle:
        missing = [r for r in config.forget_ratios if not _oracle_built(r, config.seed)]
        if missing:
            commands = "; ".join(
                f"`asru-lab build-embedded --oracle --forget-ratio {r:g} --split-seed "
                f"{config.seed}`"
                for r in missing
            )
            raise AuditError(
                f"no retrain oracle for forget ratio {', '.join(f'{r:g}' for r in missing)} "
                f"(split seed {config.seed}) in {oracle_dir(missing[0], config.seed).parent}: "
                f"its row and every row's forget quality need it. Build it once with {commands} "
                "(about 40 minutes each on 2 CPU cores), or run without the oracle row: "
                "--no-oracle (ReproduceConfig(oracle=False))"
            )
    # a user dataset fixes its forget set: one pass, labelled with that set's ratio
    ratios = (None,) if kind == "user" else tuple(config.forget_ratios)
    for ratio in ratios:  # loaded again when run: one benchmark's images in memory at a time
        sample_items(_benchmark(data, kind, ratio, config.seed), config.evaluate)
    return kind, ratios


def _benchmark(data: str | None, kind: str, ratio: float | None, seed: int) -> Benchmark:
    """The benchmark at `ratio`; the seed draws the forget set of the synthetic one only
    (MLLMU-Bench's and a user dataset's sets are fixed)."""
    return load_benchmark(data, forget_ratio=ratio, seed=seed if kind == "synthetic" else None)


def _oracle_built(ratio: float, seed: int) -> bool:
    return (oracle_dir(ratio, seed) / "config.json").is_file()


def _paper_context(config: ReproduceConfig, lm: LoadedModel, model_fp: dict, data) -> PaperContext:
    """What the paper table's numbers were measured under (`tables.PaperContext`)."""
    protocol = PROTOCOLS[config.evaluate.protocol]
    about = " ".join(sys.modules[protocol.__module__].__doc__.split())
    judge = (
        "asru_lab's closed-world judge (rules over the benchmark's facts, evaluation.judge), "
        "not the paper's GPT judge"
        if protocol.uses_judge
        else "none, this protocol does not judge generation answers"
    )
    return PaperContext(
        protocol=protocol.name,
        about=about.split(". ")[0].rstrip(".") + ".",
        model=lm.name,
        weights_sha256=model_fp["weights_sha256"],
        data=data or "the embedded synthetic benchmark",
        seed=config.seed,
        eval_seed=config.evaluate.seed,
        max_items=config.evaluate.max_items,
        shots=config.evaluate.shots,
        judge=judge,
    )


def _write_paper(rows, head, context: PaperContext, out: Path, config) -> list[str]:
    """`out/` (`PAPER_DIR`): the paper table and, with `config.figures`, the trade-off figure
    per forget ratio; returns the file names."""
    written = write_paper_table(rows, head, context, out)
    if config.figures:
        from asru_lab.viz.reproduce import write_paper_figures

        written += write_paper_figures(rows, out, context.protocol, png=config.png)
    return written


@dataclass
class _Collected:
    """What the cells of a run add up to: table rows, manifest entries and figure inputs."""

    rows: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    probes: dict = field(default_factory=dict)  # forget ratio -> the located probe's evidence
    curves: dict = field(default_factory=dict)  # forget ratio -> ASRU's stage 2 metrics
    probe_dirs: list[str] = field(default_factory=list)
    truth_ratios: dict = field(default_factory=dict)  # (method, ratio) -> forget truth ratios
    tuning: dict = field(default_factory=dict)  # "0.1" -> validation set, method sweeps
    audit_cached: dict = field(default_factory=dict)  # (method, ratio) -> audit from cache
    audits: dict = field(default_factory=dict)  # forget ratio -> method -> audit summary, results


@dataclass
class _CellRun:
    """One method at one forget ratio, and what it needs (`located`: probes found so far at
    this ratio, shared by the methods that use one)."""

    lm: LoadedModel
    bench: Benchmark
    method: str
    ratio: float
    base: dict
    config: ReproduceConfig
    cache: Path
    out: Path
    located: dict
    oracle: LoadedModel | None = None  # the oracle row's model; with `audit`, every row's floor


def _oracle(ratio: float, seed: int) -> LoadedModel | None:
    """The retrain oracle of the synthetic forget set (`ratio`, `seed`), or None with a warning
    saying how to build it."""
    try:
        return load_oracle(ratio, seed)
    except AuditError as exc:
        warnings.warn(
            f"no oracle row and no oracle floor at forget ratio {ratio:g}: {exc}", stacklevel=3
        )
        return None


def _run_cell(run: _CellRun, vanilla_splits: dict | None, got: _Collected) -> dict:
    """Load the cell from the cache or compute it, add its row and manifest entry to `got`;
    returns its evaluation splits (the vanilla cell's are every UE's reference)."""
    method, ratio, config = run.method, run.ratio, run.config
    method_config = None
    if method not in (VANILLA, ORACLE):
        method_config = run.located.get("tuned", {}).get(method) or config.method_config(method)
    fields = {**run.base, "method": method, "config": _keyable(method_config)}
    if method == ORACLE:
        fields["oracle_weights"] = weights_fingerprint(run.oracle)
    needs_probe = method not in (VANILLA, ORACLE) and METHODS[method].needs_probe
    if needs_probe:
        fields["locate"] = _keyable(config.locate)
    cell = _Cell(method, ratio, fields, run.cache)
    data = cell.load() if config.cache else None
    cached = data is not None
    result = None

    def unlearned() -> Unlearned:
        if method == ORACLE:
            return Unlearned(ORACLE, run.oracle)
        if method == VANILLA:
            return Unlearned(VANILLA, run.lm)
        probe = None
        if needs_probe:
            probe = _probe(run.lm, run.bench, config, run.base, run.cache, run.located)
        return unlearn(run.lm, run.bench, method, method_config, probe=probe)

    if not cached:
        started = time.time()
        result = unlearned()
        data = _compute(result, run.bench, config, cell, time.time() - started)
        write_json_atomic(cell.path, data)
    if needs_probe and ratio not in got.probes:
        probe_dir = _probe_dir(run.cache, run.base, config)
        got.probes[ratio] = _probe_evidence(probe_dir)
        got.probe_dirs.append(os.path.relpath(probe_dir, run.out))
    if method == "asru":
        got.curves[ratio] = data["record"].get("reinforce", {}).get("metrics", [])
    splits = data["evaluation"]["splits"]
    row = {"method": method, "forget_ratio": ratio}
    row.update(flatten(splits))
    row["ue"] = _headline(
        unlearning_effectiveness, splits, splits if method == VANILLA else vanilla_splits
    )
    row["gq"] = _headline(generation_quality, splits)
    probability = data["evaluation"].get("meta", {}).get("probability") or {}
    got.truth_ratios[(method, ratio)] = probability.get("truth_ratios", {}).get("forget", [])
    if config.audit is not None:
        audited, audit_cached = _audit_cell(run, cell, result, unlearned)
        row.update({f"audit.{k}": v for k, v in audited["summary"].items()})
        got.audit_cached[(method, ratio)] = audit_cached
        got.audits.setdefault(ratio, {})[method] = audited
    got.rows.append(row)
    got.cells.append(
        {
            "method": method,
            "forget_ratio": ratio,
            "key": cell.key,
            "cache_file": os.path.relpath(cell.path, run.out),
            "cached": cached,
            "config": _keyable(method_config),
            **({"audit_cached": got.audit_cached[(method, ratio)]} if config.audit else {}),
            "seconds": data["seconds"],
            "samples": data.get("samples", []),
        }
    )
    return splits


def _tune(lm, bench, ratio, base, config: ReproduceConfig, cache: Path, got: _Collected) -> dict:
    """Each method's config with its knob set by the tuning rule (`runs.tuning`), swept on a
    validation forget set at this ratio; the sweeps go to `got.tuning[ratio]`. Methods given a
    config in `ReproduceConfig.configs` keep it untuned. Every sweep point is cached."""
    tuning = config.tuning
    names = [m for m in config.methods if m not in config.configs and knob_of(m, tuning)]
    if not names:
        return {}
    val = validation_benchmark(bench, tuning.validation_people, tuning.seed)
    keyed = _keyable(tuning)
    if tuning.criterion == "leak":  # the plain rule's cells keep the keys they had
        del keyed["criterion"]
    val_base = {**base, "data": val.fingerprint(), "tuning": keyed}
    evaluation = replace(tuning.evaluate, progress=config.progress, seed=config.seed)
    located: dict = {}

    def splits(method: str, method_config) -> tuple[dict, float | None]:
        """The validation evaluation of `method` at `method_config` and, with criterion
        "attacked", its union leak under the cheap attacks (cached)."""
        fields = {**val_base, "method": method, "config": _keyable(method_config)}
        if method != VANILLA and METHODS[method].needs_probe:
            fields["locate"] = _keyable(config.locate)
        cell = _Cell(f"tune-{method}", ratio, fields, cache)
        data = cell.load() if config.cache else None
        if data is None:
            result = Unlearned(VANILLA, lm)
            if method != VANILLA:
                probe = None
                if METHODS[method].needs_probe:
                    probe = _probe(lm, val, config, val_base, cache, located)
                result = unlearn(lm, val, method, method_config, probe=probe)
            with result.applied():
                report = evaluate(result.model, val, evaluation, method=method)
            data = {"key": cell.key, "evaluation": report.to_dict()}
            if tuning.criterion == "attacked" and method != VANILLA:  # only the swept read it
                data["attacked_leak"] = attacked_leak(
                    result, val, lm, tuning.evaluate.max_items, config.seed
                )
            write_json_atomic(cell.path, data)
        return data["evaluation"]["splits"], data.get("attacked_leak")

    reference = retain_accuracy(splits(VANILLA, None)[0])
    tuned, sweeps = {}, {}
    for method in tqdm(names, desc=f"tuning at {ratio:g}", disable=not config.progress):
        knob = knob_of(method, tuning)
        default = config.method_config(method)
        points = [point(v, *splits(method, set_knob(default, knob.field, v))) for v in knob.values]
        chosen = choose(points, reference, tuning.max_retain_drop, tuning.criterion)
        tuned[method] = set_knob(default, knob.field, chosen["value"])
        sweeps[method] = {"knob": knob.field, "points": points, "chosen": chosen}
    forget = sorted(p.id for p in val.people_in("forget"))
    got.tuning[f"{ratio:g}"] = {  # a JSON key, as manifest.json holds it
        "validation_forget": forget,
        "retain_accuracy_untouched": reference,
        "methods": sweeps,
    }
    return tuned


def _forget_quality(got: _Collected, ratio: float) -> None:
    """Each row's `forget.forget_quality` at `ratio`: its forget truth ratios against the
    oracle's on the same items (`evaluation.probability.forget_quality`); left empty, with a
    warning, when the evaluation kept no truth ratios though they were asked for (a steering
    probe at inference, or a benchmark without perturbed answers). Not called when
    `EvalConfig.probabilities` is off (the demo): nothing was asked, nothing to warn about."""
    reference = got.truth_ratios.get((ORACLE, ratio), [])
    for row in got.rows:
        if row["forget_ratio"] != ratio:
            continue
        ratios = got.truth_ratios.get((row["method"], ratio), [])
        if not ratios or not reference:
            warnings.warn(
                f"no forget quality for {row['method']} at forget ratio {ratio:g}: its "
                "evaluation or the oracle's has no forget truth ratios (EvalConfig.probabilities "
                "off, a steering probe applied at inference, or forget items without paraphrased "
                "and perturbed answers)",
                stacklevel=2,
            )
            continue
        row["forget.forget_quality"] = forget_quality(ratios, reference)


def _manifest(config, model, data, model_fp, methods, got: _Collected, head, started) -> dict:
    """manifest.json: provenance (commit, model, data, seed, configs), definitions, cells."""
    return {
        "asru_lab_version": __version__,
        **_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"source": None if isinstance(model, LoadedModel) else model, **model_fp},
        "data": {"source": data or "synthetic"},
        "seed": config.seed,
        "forget_ratios": list(dict.fromkeys(r["forget_ratio"] for r in got.rows)),
        "methods": list(methods),
        "paper_settings": config.paper,
        "configs": {m: _keyable(config.method_config(m)) for m in config.methods},
        "evaluate": _keyable(config.evaluate),
        "locate": _keyable(config.locate),
        **({"audit": _keyable(config.audit)} if config.audit else {}),
        "tuning": {"rule": RULE, "config": _keyable(config.tuning), "sweeps": got.tuning}
        if config.tuning is not None and not config.paper
        else None,
        "definitions": dict(DEFINITIONS),
        "headline": head,
        "cells": got.cells,
        "probes": got.probe_dirs,
        "wall_seconds": round(time.time() - started, 1),
    }


def _rewards(config: ReproduceConfig) -> list[str]:
    asru = config.method_config("asru") if "asru" in config.methods else None
    return list(asru.reinforce.rewards) if asru is not None else []


def _probe_dir(cache: Path, base: dict, config: ReproduceConfig) -> Path:
    key = cache_key({**base, "locate": _keyable(config.locate)})
    return cache / f"ratio-{base['forget_ratio']:g}" / f"probe-{key[:16]}"


def _probe(lm, bench, config, base, cache, located) -> SteeringProbe:
    """The stage 1.1 probe for this ratio: in memory, from the cache, or located now."""
    if "probe" in located:
        return located["probe"]
    path = _probe_dir(cache, base, config)
    if config.cache and (path / "probe.json").is_file() and is_complete(path):
        probe = SteeringProbe.load(path)
    else:
        probe = locate(lm, bench, seeded_config(config.locate, config.seed, config.progress))
        probe.save(path)
    located["probe"] = probe
    return probe


def _probe_evidence(path: Path) -> dict:
    return SteeringProbe.load(path).evidence if (path / "probe.json").is_file() else {}


def _compute(result: Unlearned, bench, config, cell, trained: float) -> dict:
    """Evaluate a method's result (the model it left, and its probe's hooks for an inference-time
    method) and collect what the cache keeps."""
    method = result.method
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


def _audit_cell(run: _CellRun, cell: _Cell, result: Unlearned | None, unlearned) -> tuple:
    """The cell's audit summary: from its own cache file (keyed by the cell, the audit config,
    `AUDIT_PROTOCOL` and the oracle), or audited now (the method is run again when its
    evaluation came from the cache: every method is deterministic for its seed)."""
    config = run.config
    oracle = run.located.get("oracle")
    fields = {
        "cell": cell.key,
        "audit": _keyable(seeded_config(config.audit, config.seed, False)),
        "protocol": AUDIT_PROTOCOL,
        "oracle": None if oracle is None else weights_fingerprint(oracle),
    }
    key = cache_key(fields)
    path = cell.path.with_name(f"{cell.path.stem}.audit-{key[:16]}.json")
    if config.cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return data, True
        except (json.JSONDecodeError, AttributeError):
            warnings.warn(f"damaged audit cache file {path}; auditing again", stacklevel=2)
    result = result or unlearned()
    report = audit(
        result.model,
        run.bench,
        reference=run.lm,
        oracle=oracle,
        probe=result.probe,
        config=seeded_config(config.audit, config.seed, config.progress),
    )
    data = {
        "key": key,
        "key_fields": fields,
        "summary": report.summary,
        "results": report.results,
        "timing": report.timing,
    }
    write_json_atomic(path, data)
    return data, False
