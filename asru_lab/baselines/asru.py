"""ASRU: `asru_stage1` writes the probe's direction into the weights (stage 1.2 only);
`asru` runs stage 1.2 then the GRPO refusal-boundary stage (stage 2)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.stages.redirect import RedirectConfig, redirect
from asru_lab.stages.reinforce import METRICS_FILE, ReinforceConfig, reinforce
from asru_lab.validation import check_fields
from asru_lab.viz import read_metrics

# stage 1.2's push along the direction, the paper's 3 and stronger (tuning sweep)
LAMBDAS = (3.0, 5.0, 8.0)


def run_stage1(lm, bench, config: RedirectConfig, probe) -> Unlearned:
    model, record = redirect(lm, probe, bench, config)
    return Unlearned("asru_stage1", model, {"method": "asru_stage1", **record})


@dataclass
class AsruConfig:
    """Stage 1.2 then stage 2. Before a stage 2, stage 1 pushes harder (lam 5, not 3): stage 2
    repairs the retain answers the stronger push disturbs."""

    redirect: RedirectConfig = field(
        default_factory=lambda: RedirectConfig(lam=5.0), metadata={"help": "stage 1.2"}
    )
    reinforce: ReinforceConfig = field(
        default_factory=ReinforceConfig, metadata={"help": "stage 2"}
    )
    training_dir: str | None = field(
        default=None,
        metadata={
            "help": "where stage 2 logs (metrics.jsonl, dashboard.html); None: a temporary folder"
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError)  # the stages' configs check their own fields

    @classmethod
    def paper(cls) -> AsruConfig:
        return cls(RedirectConfig.paper(), ReinforceConfig.paper())


def adversarial_config() -> AsruConfig:
    """ASRU whose stage 2 trains against the prefill and the refusal-direction ablation on half
    of its forget rollouts (`asru_lab.stages.adversary`)."""
    return AsruConfig(reinforce=ReinforceConfig(adversarial=("prefill", "ablation")))


def run_full(lm, bench, config: AsruConfig, probe) -> Unlearned:
    stage1, stage1_record = redirect(lm, probe, bench, config.redirect)
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(config.training_dir or scratch)
        final, record = reinforce(stage1, bench, config.reinforce, output_dir=logs, probe=probe)
        record["metrics"] = read_metrics(logs / METRICS_FILE)  # the reward curves, kept
    name = "asru_adversarial" if config.reinforce.adversarial else "asru"
    record = {
        "method": name,
        "config": asdict(config),
        "stage1": stage1_record,
        "reinforce": record,
        "seconds": {"stage1": stage1_record["seconds"], "reinforce": record["seconds"]},
    }
    return Unlearned(name, final, record)


register(
    Method(
        "asru_stage1",
        "ASRU stage 1.2 only: the probe's direction written into down_proj",
        RedirectConfig,
        run_stage1,
        needs_probe=True,
        paper_config=RedirectConfig.paper,
        knob=Knob("lam", LAMBDAS),
    )
)
register(
    Method(
        "asru",
        "ASRU: stage 1.2, then GRPO on the forget and boundary sets (stage 2)",
        AsruConfig,
        run_full,
        needs_probe=True,
        paper_config=AsruConfig.paper,
        knob=Knob("redirect.lam", LAMBDAS),
    )
)
register(
    Method(
        "asru_adversarial",
        "ASRU whose stage 2 is trained against the prefill and refusal-direction ablation",
        adversarial_config,
        run_full,
        needs_probe=True,
        knob=Knob("redirect.lam", LAMBDAS),
    )
)
