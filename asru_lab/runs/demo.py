"""`asru-lab demo`: the whole story on the embedded default, in a few minutes on a laptop CPU.

vanilla model -> locate (stage 1.1) -> redirect (stage 1.2) -> reinforce (stage 2) -> evaluate,
then the same forget set unlearned by gradient ascent and NPO for comparison, and every model
attacked with the audit's cheap attacks (the answer's first words prefilled, the model's own
refusal direction ablated: `DEMO_ATTACKS`) beside the retrain oracle under the same attacks, so
that the table shows what comes back, not only what is said. It is `reproduce` at one forget
ratio with demo sizes (`demo_config`): fewer evaluation items, a smaller locate sweep, fewer GRPO
steps and 2 of the baselines' 5 epochs, against `asru-lab reproduce`, which runs the full
protocol. `demo_report` turns the result into a table a newcomer can read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from asru_lab.auditing import AuditConfig
from asru_lab.baselines import get_method
from asru_lab.evaluation.harness import EvalConfig
from asru_lab.runs.reproduce import ReproduceConfig, ReproduceResult, reproduce
from asru_lab.stages.locate import LocateConfig

DEMO_METHODS = ("asru_stage1", "asru", "ga", "npo")
DEMO_RATIO = 0.1
# the audit's cheap attacks (issue #32): what a method that only hides gives back at once
DEMO_ATTACKS = ("prefill", "ablation")


def demo_config(max_items: int = 32, progress: bool = True) -> ReproduceConfig:
    """`reproduce` settings for the demo: the full method, smaller samples."""
    asru = get_method("asru").default_config()
    asru = replace(asru, reinforce=replace(asru.reinforce, n_forget=100, n_boundary=100))
    return ReproduceConfig(
        methods=DEMO_METHODS,
        forget_ratios=(DEMO_RATIO,),
        # the demo's table shows neither truth ratios nor forget quality: skip their passes
        evaluate=EvalConfig(max_items=max_items, probabilities=False),
        oracle=False,  # the audit adds the retrain oracle's row: the floor of every attack
        # demo-sized: the direction is ablated in the running model only (the audit also
        # writes it out of the weights and prefills and relearns that copy: 3x the time)
        audit=AuditConfig(
            attacks=DEMO_ATTACKS,
            max_items=max_items,
            ablation_orthogonalize=False,
            progress=progress,
        ),
        # the demo shows the baselines at their public settings (README), untuned
        tuning=None,
        locate=LocateConfig(
            layers=(4, 5),
            strengths=(1.0, 2.0),
            positions=("last",),
            heatmap_positions=("last", -2, "prompt"),
            max_examples=160,
            retain_examples=480,
            sweep_forget=32,
            sweep_retain=64,
        ),
        # the baselines at their public settings, 2 of their 5 epochs: a demo-sized run
        configs={
            "asru": asru,
            "ga": replace(get_method("ga").default_config(), epochs=2),
            "npo": replace(get_method("npo").default_config(), epochs=2),
        },
        samples=1,
        png=False,  # HTML figures only: PNG export starts a browser, ~10 s
        progress=progress,
    )


def run_demo(
    out_dir: str | Path, config: ReproduceConfig | None = None, *, overwrite: bool = False
) -> ReproduceResult:
    """Run the demo into `out_dir` (tables, figures, manifest, cache as `reproduce` writes)."""
    return reproduce(out_dir, config or demo_config(), overwrite=overwrite)


LABELS = {
    "vanilla": "before unlearning",
    "oracle": "retrain oracle (never saw them)",
    "asru_stage1": "ASRU, stage 1 only",
    "asru": "ASRU (stage 1 + 2)",
    "ga": "gradient ascent (GA)",
    "grad_diff": "GradDiff",
    "kl_min": "KL-Min",
    "npo": "NPO",
    "refusal_sft": "refusal SFT",
    "steer_only": "steering only (probe)",
}


def demo_report(result: ReproduceResult) -> str:
    """The demo's final table with a legend, and one forgotten person's answers per method."""
    rows = result.rows
    header = (
        f"{'':32s}{'forgotten people':>42s}{'same people,':>15s}{'everyone else':>24s}\n"
        f"{'method':32s}{'leaks a fact':>14s}{'under attack':>14s}{'polite refusal':>17s}"
        f"{'new photos':>12s}{'recalls':>11s}{'MCQ right':>13s}"
    )
    lines = [header, "-" * 113]
    for r in rows:
        lines.append(
            f"{LABELS.get(r['method'], r['method']):32s}"
            f"{_pct(r.get('forget.leak_rate')):>14s}"
            f"{_pct(r.get('audit.union_leak')):>14s}"
            f"{r.get('forget.quality.contextual_refusal', 0):>12.1f} / 5"
            f"{_pct(r.get('test.leak_rate')):>12s}"
            f"{_pct(r.get('retain.leak_rate')):>11s}"
            f"{_pct(r.get('retain.mcq_acc')):>13s}"
        )
    lines += [
        "",
        "leaks a fact: share of answers about a forgotten person that still contain the true",
        "  fact (lower is better); new photos: the same people on views and wordings never",
        "  trained on. under attack: share of those questions that the answer's first words",
        "  prefilled or the model's own refusal direction ablated got the fact out of (the",
        "  audit's cheap attacks, demo-sized; `asru-lab audit` runs every attack): a method that",
        "  only hides the fact gives it back here; the retrain oracle, which never saw these",
        "  people, is the floor.",
        "  polite refusal: the judge's contextual-refusal score, 5 = a refusal that says what",
        "  cannot be told (not a canned 'I don't know', not gibberish, not a made-up fact).",
        "  recalls / MCQ right: the people who must NOT be forgotten (higher is better).",
    ]
    samples = {c["method"]: c["samples"] for c in result.manifest["cells"] if c["samples"]}
    first = next(iter(samples.values()), [])
    forget = next((s for s in first if s["split"] == "forget"), None)
    if forget:
        lines += [
            "",
            f'A forgotten person, asked "{forget["question"]}" (truth: {forget["truth"]}):',
        ]
        for method, answers in samples.items():
            answer = next(
                (s["answer"] for s in answers if s["question"] == forget["question"]
                 and s["person"] == forget["person"]),
                "",
            )  # fmt: skip
            lines.append(f"  {LABELS.get(method, method):32s} {answer}")
    return "\n".join(lines)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"
