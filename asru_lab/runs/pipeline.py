"""The whole method in one call: locate -> redirect -> reinforce, evaluated before and after.

`run_pipeline(out_dir)` writes one folder:

    out_dir/probe/        the steering probe (stage 1.1) with sweep.json and locate.html
    out_dir/stage1/       the redirected model (stage 1.2) + redirect.json
    out_dir/final/        the reinforced model (stage 2) + reinforce.json + training/
    out_dir/results/      vanilla.json, stage1.json, final.json (the evaluation schema)

Models are `save_pretrained` directories that `load_model` reads. With `resume=True` a stage
whose output is already complete is loaded instead of recomputed (a killed stage 2 continues
from its last checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from asru_lab.artifacts import claim_output
from asru_lab.data.schema import Benchmark
from asru_lab.evaluation.harness import EvalConfig, evaluate
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import LocateConfig, locate
from asru_lab.stages.redirect import RedirectConfig, redirect, save_redirected
from asru_lab.stages.reinforce import TRAINING_DIR, ReinforceConfig, reinforce, save_reinforced
from asru_lab.validation import check_fields

STAGES = ("vanilla", "stage1", "final")
METHODS = {"vanilla": "vanilla", "stage1": "asru_stage1", "final": "asru"}


@dataclass
class PipelineConfig:
    """One config per stage (their defaults), plus the evaluation's. Before a stage 2, stage 1
    pushes harder (lam 5, not 3): stage 2 then repairs the retain answers the stronger push
    disturbs, and the forget people's new views leak less."""

    locate: LocateConfig = field(default_factory=LocateConfig, metadata={"help": "stage 1.1"})
    redirect: RedirectConfig = field(
        default_factory=lambda: RedirectConfig(lam=5.0),
        metadata={"help": "stage 1.2, with lam 5 (the class docstring says why)"},
    )
    reinforce: ReinforceConfig = field(
        default_factory=ReinforceConfig, metadata={"help": "stage 2"}
    )
    evaluate: EvalConfig = field(
        default_factory=EvalConfig,
        metadata={"help": "the evaluation of the vanilla, stage 1 and final models"},
    )
    resume: bool = field(
        default=False, metadata={"help": "reuse complete stage outputs found in out_dir"}
    )

    def __post_init__(self) -> None:
        check_fields(self)  # the stages' configs check their own fields


def _evaluated(lm: LoadedModel, bench: Benchmark, config: PipelineConfig, stage: str, out: Path):
    path = out / "results" / f"{stage}.json"
    if config.resume and path.is_file():
        return json.loads(path.read_text())
    report = evaluate(lm, bench, config.evaluate, method=METHODS[stage])
    report.to_json(path)
    return json.loads(path.read_text())


def run_pipeline(
    lm: LoadedModel,
    bench: Benchmark,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, dict]:
    """Run every stage on `lm` and `bench` into `out_dir` (layout in the module docstring);
    returns the three evaluation results by stage name. An `out_dir` holding files asru_lab
    did not write needs `overwrite` (they are kept; see `artifacts.check_output`)."""
    config = config or PipelineConfig()
    out = claim_output(out_dir, overwrite=overwrite)
    claim_output(out / "results")
    results = {"vanilla": _evaluated(lm, bench, config, "vanilla", out)}

    probe_dir = out / "probe"
    if config.resume and (probe_dir / "probe.json").is_file():
        probe = SteeringProbe.load(probe_dir)
    else:
        probe = locate(lm, bench, config.locate)
        probe.save(probe_dir)
        from asru_lab import viz

        viz.write_locate_page(probe.evidence, probe_dir / "locate.html", lm.name)

    stage1_dir = out / "stage1"
    if config.resume and (stage1_dir / "redirect.json").is_file():
        stage1 = load_model(stage1_dir)
    else:
        stage1, record = redirect(lm, probe, bench, config.redirect)
        save_redirected(stage1, record, stage1_dir)
    results["stage1"] = _evaluated(stage1, bench, config, "stage1", out)

    final_dir = out / "final"
    if config.resume and (final_dir / "reinforce.json").is_file():
        final = load_model(final_dir)
    else:
        settings = config.reinforce  # the caller's config is never changed
        if config.resume and (final_dir / TRAINING_DIR).is_dir():
            settings = replace(settings, resume=True)
        final, record = reinforce(
            stage1, bench, settings, output_dir=final_dir / TRAINING_DIR, probe=probe
        )
        save_reinforced(final, record, final_dir)
    results["final"] = _evaluated(final, bench, config, "final", out)
    return results


def comparison_table(results: dict[str, dict]) -> str:
    """Per split: refusal / leak (recall on retain and general) and MCQ for each stage."""
    stages = [s for s in STAGES if s in results]
    head = f"{'split':8s}" + "".join(f"{s + ' refusal/leak/MCQ':>28s}" for s in stages)
    lines = [head, "-" * len(head)]
    splits = results[stages[0]]["splits"]
    for split in splits:
        cells = []
        for stage in stages:
            m = results[stage]["splits"].get(split, {})
            mcq = f"{m['mcq_acc']:.2f}" if "mcq_acc" in m else "  - "
            cells.append(f"{m.get('refusal_rate', 0):.2f} / {m.get('leak_rate', 0):.2f} / {mcq}")
        lines.append(f"{split:8s}" + "".join(f"{c:>28s}" for c in cells))
    return "\n".join(lines)
