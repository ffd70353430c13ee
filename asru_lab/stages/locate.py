"""`locate`: find where the model holds its knowledge of the forget set, and how to steer it.

1. Capture activations (nnsight, batched) of forget, retain and *target* prompts — target =
   never-seen faces the model actually refuses (judged) — at every layer and at several token
   positions; directions are fitted on one part of each set, separability (AUROC) measured on
   the held-out rest.
2. Directions per layer: the knowledge-absence direction v = mean(target) - mean(forget) and
   the memorisation direction mean(forget) - mean(retain); a logistic memorisation gate per
   candidate layer, its threshold chosen on held-out activations.
3. Sweep candidate layers x strengths x steered positions: refusal rate on forget prompts,
   answer accuracy (recall) on retain prompts and KL of retain next-token distributions,
   ungated and gated. A gated run steers exactly the rows the gate fires on, so its answers
   are the steered answers on those rows and the unsteered ones elsewhere (no extra pass).
4. Recommend the configuration with the highest forget refusal whose retain accuracy drops by
   at most `max_retain_drop`; return it as a `SteeringProbe` carrying the evidence.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from asru_lab.capture import (
    capture,
    capture_positions,
    check_layers,
    check_position,
    check_site,
)
from asru_lab.data.schema import (
    Benchmark,
    BenchmarkError,
    QAItem,
    stratified_sample,
)
from asru_lab.directions import (
    auroc,
    fit_gate,
    knowledge_absence_direction,
    layer_cosines,
    logit_lens,
    memorisation_direction,
    refused_items,
)
from asru_lab.evaluation.judge import ClosedWorldJudge, Judge
from asru_lab.hooks import deepstack_relation
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import STEER_POSITIONS, MemorisationGate, SteeringProbe
from asru_lab.progress import tqdm
from asru_lab.stages.locate_sweep import gate_positions, gate_tails, rank_key, sweep
from asru_lab.validation import ConfigError, check_fields

OTHER_TASKS = ("mcq", "cloze")  # the prompted task forms, besides open questions ("qa")


@dataclass
class LocateConfig:
    """How to find and choose the steering direction (defaults sized for the embedded model)."""

    layers: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "candidate layers to sweep; None: all (<= 8) or the n_candidates most "
            "separable ones"
        },
    )
    n_candidates: int = field(
        default=4, metadata={"help": "layers swept when chosen by separability"}
    )
    site: str = field(
        default="output", metadata={"help": 'the layer\'s "output" or "input" (asru_lab.hooks)'}
    )
    strengths: tuple[float, ...] = field(
        default=(0.5, 1.0, 1.5, 2.0, 3.0, 4.0), metadata={"help": "alphas in h + alpha * v"}
    )
    positions: tuple[str, ...] = field(
        default=("last", "all"),
        metadata={"help": "where the sweep steers (probe.STEER_POSITIONS)"},
    )
    heatmap_positions: tuple[str | int, ...] = field(
        default=("last", -2, -3, -4, -5, "prompt"),
        metadata={"help": "token positions whose separability is measured"},
    )
    max_examples: int = field(
        default=512, metadata={"help": "forget and target examples for directions and the gate"}
    )
    retain_examples: int = field(
        default=1536,
        metadata={"help": "retain examples (the gate's negatives: more of them helps)"},
    )
    gate_tokens: int = field(
        default=3, metadata={"help": "the gate reads this many last prompt tokens"}
    )
    gate_max_fpr: tuple[float, ...] = field(
        default=(0.01, 0.02, 0.05),
        metadata={
            "help": "held-out shares of retain prompts the gate may fire on; each level is a "
            "gated sweep variant"
        },
    )
    holdout: float = field(
        default=0.25,
        metadata={"help": "share of each set kept out of the fit, for AUROC and the threshold"},
    )
    sweep_forget: int = field(default=64, metadata={"help": "forget prompts per sweep point"})
    sweep_retain: int = field(default=128, metadata={"help": "retain prompts per sweep point"})
    max_new_tokens: int = field(default=24, metadata={"help": "answer length in the sweep"})
    max_retain_drop: float = field(
        default=0.02, metadata={"help": "allowed drop in retain accuracy (fraction, not points)"}
    )
    text_only: bool = field(
        default=True,
        metadata={"help": "include text-only questions (by name) in forget/retain sets"},
    )
    seed: int = field(default=0, metadata={"help": "seeds the samples and the held-out split"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            ConfigError,
            n_candidates=">= 1",
            strengths="> 0",
            max_examples=">= 1",
            retain_examples=">= 1",
            gate_tokens=">= 1",
            gate_max_fpr="[0, 1]",
            holdout="(0, 1)",
            sweep_forget=">= 1",
            sweep_retain=">= 1",
            max_new_tokens=">= 1",
            max_retain_drop="[0, 1]",
            batch_size=">= 1",
        )
        check_site(self.site)
        for p in self.heatmap_positions:
            check_position(p)
        for p in self.positions:
            if p not in STEER_POSITIONS:
                raise ConfigError(f"unknown steering position {p!r}; expected {STEER_POSITIONS}")
        if not self.strengths:
            raise ConfigError("strengths must hold at least one value")
        # with no drop allowed, accepting no retain change is what was asked
        if 0 < self.max_retain_drop and self.sweep_retain * self.max_retain_drop < 1:
            warnings.warn(
                f"sweep_retain={self.sweep_retain} with max_retain_drop={self.max_retain_drop}: "
                "a single retain miss already exceeds the allowed drop, so the sweep will only "
                f"accept configurations that change no retain answer (use sweep_retain >= "
                f"{math.ceil(1 / self.max_retain_drop)})",
                stacklevel=3,
            )


@dataclass
class LocateSets:
    """The example sets, each split into a fitting part and a held-out part."""

    fit: dict[str, list[QAItem]] = field(default_factory=dict)
    held: dict[str, list[QAItem]] = field(default_factory=dict)
    target_candidates: int = 0


def build_sets(lm: LoadedModel, bench: Benchmark, config: LocateConfig, judge: Judge) -> LocateSets:
    """Sample the sets and split each into fit and held-out parts: forget / retain / target
    generation questions (directions, separability) and the forget / retain prompts of the other
    tasks (`*_other`, used by the gate only)."""
    rng = random.Random(config.seed)
    image_only = not config.text_only
    forget = bench.questions("forget", "qa", image_only=image_only)
    if not forget:
        raise BenchmarkError(
            f"{bench.name} has no forget generation questions: nothing to locate "
            "(is the forget split empty, or text-only while text_only=False?)"
        )
    retain = bench.questions("retain", "qa", image_only=image_only)
    if not retain:
        raise BenchmarkError(f"{bench.name} has no retain generation questions")
    unseen = bench.questions("unseen", "qa", image_only=True)
    if not unseen:
        raise BenchmarkError(
            f"{bench.name} has no unseen image questions: the target set (faces the model "
            "has never seen and refuses) comes from the 'unseen' split"
        )
    candidates = stratified_sample(unseen, config.max_examples, rng)
    target, _ = refused_items(lm, bench, candidates, judge=judge, batch_size=config.batch_size)
    if len(target) < 4:
        raise BenchmarkError(
            f"the model refuses only {len(target)} of {len(candidates)} unseen questions: the "
            "knowledge-absence direction needs refused examples (is this model trained to "
            "refuse unknown faces?)"
        )
    sets = LocateSets(target_candidates=len(candidates))
    pools = {
        "forget": stratified_sample(forget, config.max_examples, rng),
        "retain": stratified_sample(retain, config.retain_examples, rng),
        "target": target,
        # multiple-choice and fill-in-the-blank prompts: the gate must not fire on a retain
        # person's prompt whatever its format, so it is fitted on these too
        "forget_other": stratified_sample(
            bench.questions("forget", OTHER_TASKS, image_only=image_only), config.max_examples, rng
        ),
        "retain_other": stratified_sample(
            bench.questions("retain", OTHER_TASKS, image_only=image_only),
            config.retain_examples,
            rng,
        ),
    }
    for name, items in pools.items():
        items = list(items)
        rng.shuffle(items)
        n_held = max(1, round(len(items) * config.holdout)) if len(items) > 1 else 0
        sets.fit[name] = items[n_held:]
        sets.held[name] = items[:n_held]
    return sets


@dataclass
class LocateResult:
    """Everything `locate` measured; `to_json()` is what `sweep.json` holds."""

    config: dict
    layers: list[int]
    separability: dict  # position -> {"forget_vs_retain": [per layer], "forget_vs_unseen": [...]}
    direction_norms: list[float]
    cosines: list[list[float]]
    logit_lens: dict  # layer -> [(token, logit)]
    gates: dict  # layer -> held-out gate stats
    sweep: list[dict]
    baseline: dict
    recommended: dict
    sizes: dict
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """The sweep as a fixed-width text table (best configuration first)."""
        rows = sorted(self.sweep, key=rank_key, reverse=True)
        head = (
            f"{'layer':>5} {'alpha':>5} {'positions':>9} {'gate':>5} {'forget_refusal':>14} "
            f"{'forget_leak':>11} {'retain_acc':>10} {'retain_kl':>9}"
        )
        lines = [head]
        for r in rows:
            lines.append(
                f"{r['layer']:>5} {r['alpha']:>5g} {r['positions']:>9} "
                f"{_gate_label(r):>5} {r['forget_refusal']:>14.3f} "
                f"{r['forget_leak']:>11.3f} {r['retain_acc']:>10.3f} {r['retain_kl']:>9.4f}"
            )
        return "\n".join(lines)


def _gate_label(row: dict) -> str:
    return f"{row['gate_max_fpr']:.0%}" if row["gated"] else "off"


def _pos_key(position: str | int) -> str | int:
    return -1 if position == "last" else position


def _pos_label(position: str | int) -> str:
    return "last" if position == -1 else str(position)


def _candidates(
    config: LocateConfig, layers: Sequence[int], separability: list[float]
) -> list[int]:
    """Layers to sweep: the configured ones, all of a small model, else the most separable."""
    if config.layers is not None:
        return sorted({layer % len(layers) for layer in config.layers})
    if len(layers) <= 8:
        return list(layers)
    ranked = sorted(layers, key=lambda k: separability[k], reverse=True)
    return sorted(ranked[: config.n_candidates])


@dataclass
class Measurements:
    """What `measure` found: per-position separability, the candidate layers, the captures at
    the last prompt token (`last[part][set]`, part "fit"/"held") and the gate's inputs
    (`gate_raw[part][side][position] = {layer: [n, hidden]}`, side "forget"/"retain")."""

    separability: dict
    candidates: list[int]
    last: dict
    gate_raw: dict


def measure(
    lm: LoadedModel,
    bench: Benchmark,
    sets: LocateSets,
    config: LocateConfig,
    all_layers: Sequence[int],
) -> Measurements:
    """Step 1: capture every set at every position and layer; directions fitted on the fit
    parts, separability (AUROC) on the held-out parts; candidate layers from the last token.

    Every position is read from **one forward pass per batch** (`capture_positions`): one pass
    over each fit set, one over each held-out set (projected on the fit part's directions of
    its position), then one over each of the gate's other-task sets at the candidate layers.
    The gate's tokens are kept raw at every layer until the candidates are known."""
    bar_kw = dict(progress=config.progress, batch_size=config.batch_size, site=config.site)
    tokens = gate_positions(config)
    # "last" first (it picks the candidate layers), then the heatmap's, then the gate's.
    heatmap = [_pos_key(p) for p in config.heatmap_positions]
    positions = list(dict.fromkeys([-1, *heatmap, *tokens]))
    main_sets = ("forget", "retain", "target")
    # before the candidates are known only a configured or small model's layers can be named
    preset = config.layers is not None or len(all_layers) <= 8
    raw_layers = _candidates(config, all_layers, []) if preset else list(all_layers)
    keep = {p: raw_layers for p in tokens}

    def read(part: str, name: str, directions: dict | None = None) -> dict:
        return capture_positions(
            lm,
            bench,
            getattr(sets, part)[name],
            positions=positions,
            layers=all_layers,
            keep_raw=keep,
            directions=directions,
            desc=f"{name}{' held out' if part == 'held' else ''} @ {len(positions)} positions",
            **bar_kw,
        )

    steps = tqdm(total=2 * len(main_sets) + 4, desc="locate: capture", disable=not config.progress)
    fit = {}
    for name in main_sets:
        fit[name] = read("fit", name)
        steps.update()
    both: dict = {}
    for position in positions:
        mem = memorisation_direction(fit["forget"][position], fit["retain"][position])
        absence = knowledge_absence_direction(fit["target"][position], fit["forget"][position])
        both[position] = {k: torch.stack([mem[k], absence[k]]) for k in all_layers}
    held = {}
    for name in main_sets:
        held[name] = read("held", name, both)
        steps.update()
    separability: dict = {}
    for position in positions:
        p = [held[name][position].projections for name in ("forget", "retain", "target")]
        separability[_pos_label(position)] = {
            "forget_vs_retain": [auroc(p[0][k][:, 0], p[1][k][:, 0]) for k in all_layers],
            "forget_vs_unseen": [auroc(p[2][k][:, 1], p[0][k][:, 1]) for k in all_layers],
        }
    candidates = _candidates(config, all_layers, separability["last"]["forget_vs_retain"])
    last = {
        part: {n: caps[n][-1] for n in main_sets} for part, caps in (("fit", fit), ("held", held))
    }
    gate_raw: dict[str, dict[str, dict]] = {"fit": {}, "held": {}}
    for part, caps in (("fit", fit), ("held", held)):
        other = {}
        for name in ("forget_other", "retain_other"):
            other[name] = capture_positions(
                lm,
                bench,
                getattr(sets, part)[name],
                positions=tokens,
                layers=candidates,
                keep_raw={p: True for p in tokens},
                desc=f"{name} ({part}) @ {len(tokens)} gate tokens",
                **bar_kw,
            )
            steps.update()
        for side in ("forget", "retain"):
            for position in tokens:
                gate_raw[part].setdefault(side, {})[position] = {
                    layer: torch.cat(
                        [
                            caps[side][position].raw[layer],
                            other[f"{side}_other"][position].raw[layer],
                        ]
                    )
                    for layer in candidates
                }
    steps.close()
    return Measurements(separability, candidates, last, gate_raw)


def fit_gates(
    measured: Measurements, config: LocateConfig
) -> tuple[dict[int, MemorisationGate], dict[str, dict]]:
    """Step 2: a memorisation gate per candidate layer, with its held-out statistics."""
    tokens = gate_positions(config)
    raw = measured.gate_raw
    gates: dict[int, MemorisationGate] = {}
    gate_stats: dict[str, dict] = {}
    for layer in measured.candidates:
        gate, stats = fit_gate(
            gate_tails(raw["fit"]["forget"], layer, tokens),
            gate_tails(raw["fit"]["retain"], layer, tokens),
            gate_tails(raw["held"]["forget"], layer, tokens),
            gate_tails(raw["held"]["retain"], layer, tokens),
            max_fpr=config.gate_max_fpr,
        )
        gates[layer], gate_stats[str(layer)] = gate, stats
    return gates, gate_stats


def locate(
    lm: LoadedModel,
    bench: Benchmark,
    config: LocateConfig | None = None,
    *,
    judge: Judge | None = None,
) -> SteeringProbe:
    """Find, measure and sweep; returns the recommended `SteeringProbe`.

    The probe's `evidence` holds the full `LocateResult` as JSON (saved as `sweep.json`);
    `LocateResult(**probe.evidence)` rebuilds it.
    """
    # a copy runs __post_init__ again: fields set after construction are checked too
    config = replace(config) if config is not None else LocateConfig()
    judge = judge or ClosedWorldJudge(bench)
    started = time.time()
    all_layers = check_layers(lm, None)
    if config.layers is not None:
        check_layers(lm, config.layers)
    sets = build_sets(lm, bench, config, judge)
    measured = measure(lm, bench, sets, config, all_layers)
    # Final directions at the last prompt token use every example (fit + held-out parts).
    last = measured.last
    forget_caps = [last["fit"]["forget"], last["held"]["forget"]]
    retain_caps = [last["fit"]["retain"], last["held"]["retain"]]
    directions = knowledge_absence_direction(
        [last["fit"]["target"], last["held"]["target"]], forget_caps
    )
    mem_full = memorisation_direction(forget_caps, retain_caps)
    gates, gate_stats = fit_gates(measured, config)
    swept = sweep(lm, bench, directions, gates, gate_stats, config, judge)
    best = max(swept.rows, key=rank_key)
    result = LocateResult(
        config=asdict(config),
        layers=list(all_layers),
        separability=measured.separability,
        direction_norms=[float(directions[k].norm()) for k in all_layers],
        cosines=layer_cosines(directions).tolist(),
        logit_lens={str(k): logit_lens(lm, directions[k]) for k in all_layers},
        gates=gate_stats,
        sweep=swept.rows,
        baseline=swept.baseline,
        recommended={k: best[k] for k in ("layer", "alpha", "positions", "gated", "gate_max_fpr")},
        sizes={
            "fit": {k: len(v) for k, v in sets.fit.items()},
            "held_out": {k: len(v) for k, v in sets.held.items()},
            "target_candidates": sets.target_candidates,
            "sweep_forget": len(swept.forget),
            "sweep_retain": len(swept.retain),
            "memorisation_direction_norms": [float(mem_full[k].norm()) for k in all_layers],
        },
        seconds=round(time.time() - started, 1),
    )
    return recommend(lm, bench, config, best, directions, gates, gate_stats, result)


def recommend(
    lm: LoadedModel,
    bench: Benchmark,
    config: LocateConfig,
    best: dict,
    directions: dict[int, torch.Tensor],
    gates: dict[int, MemorisationGate],
    gate_stats: dict[str, dict],
    result: LocateResult,
) -> SteeringProbe:
    """Step 4: the sweep's best row as a `SteeringProbe` carrying the evidence (its gate's
    threshold set at the row's false-positive level when the row is gated)."""
    layer = best["layer"]
    gate = gates[layer]
    if best["gated"]:
        level = best["gate_max_fpr"]
        gate.threshold = gate_stats[str(layer)]["thresholds"][str(level)]["threshold"]
        gate.method += f", threshold at held-out false-positive rate <= {level:g}"
    return SteeringProbe(
        directions[layer].float(),
        layer,
        lm.fingerprint(),
        site=config.site,
        operation="add",
        positions=best["positions"],
        alpha=best["alpha"],
        gate=gate,
        gated=best["gated"],
        extraction={
            "method": "knowledge-absence direction: mean(target) - mean(forget), diff-in-means",
            "measured_at": "last prompt token",
            "target": "unseen faces the model refuses (closed-world judge)",
            "sets": result.sizes["fit"] | {"held_out": result.sizes["held_out"]},
            "seed": config.seed,
        },
        dataset_fingerprint=bench.fingerprint(),
        module=lm.adapter.layer_path(layer),
        deepstack=deepstack_relation(lm, layer, config.site),
        evidence=result.to_json(),
        layer_directions=torch.stack([directions[k] for k in result.layers]).float(),
    )


def quick_probe(
    lm: LoadedModel,
    bench: Benchmark,
    *,
    layer: int | None = None,
    n_examples: int = 64,
    site: str = "output",
    seed: int = 0,
) -> SteeringProbe:
    """A knowledge-absence probe in seconds, without `locate`'s sweep, gate or refusal filter.

    v = mean over `n_examples` never-seen faces minus mean over `n_examples` forget questions,
    at the last prompt token of every layer (kept as `layer_directions`); the probe sits at
    `layer` (default: the last), ungated, alpha 1. For experiments, tests and benchmarks whose
    result does not hinge on the direction's quality; `locate` chooses a real one.
    """
    rng = random.Random(seed)
    unseen = bench.questions("unseen", "qa", image_only=True)
    forget = bench.questions("forget", "qa")
    if not unseen or not forget:
        raise BenchmarkError(
            f"{bench.name} needs unseen image questions and forget questions for a probe "
            f"(has {len(unseen)} and {len(forget)})"
        )
    layers = check_layers(lm, None)
    layer = layers[-1] if layer is None else check_layers(lm, [layer])[0]
    kw = {"layers": layers, "site": site, "position": "last", "progress": False}
    target = capture(lm, bench, stratified_sample(unseen, n_examples, rng), **kw)
    known = capture(lm, bench, stratified_sample(forget, n_examples, rng), **kw)
    directions = knowledge_absence_direction(target, known)
    stacked = torch.stack([directions[k] for k in layers]).float()
    return SteeringProbe(
        stacked[layer],
        layer,
        lm.fingerprint(),
        site=site,
        positions="last",
        extraction={
            "method": "knowledge-absence direction: mean(unseen) - mean(forget), unfiltered",
            "measured_at": "last prompt token",
            "sets": {"target": target.n_examples, "forget": known.n_examples},
            "seed": seed,
        },
        dataset_fingerprint=bench.fingerprint(),
        module=lm.adapter.layer_path(layer),
        deepstack=deepstack_relation(lm, layer, site),
        layer_directions=stacked,
    )
