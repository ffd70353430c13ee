"""`asru_deep`: Deep ASRU — stage 1.0 (`asru_lab.stages.reroute`: the early MLPs send the forget
people's portraits and names where strangers' go, at the layer causal tracing chooses), then
ASRU's stage 1.2 and stage 2 on the rerouted model. Stage 1.0 acts where the identity is
recalled; stages 1.2 and 2 turn what then reaches the last token into a contextual refusal. It is
the deeper teacher for distillation (`asru-lab distill --model <asru_deep>`): what the teacher no
longer recalls cannot survive in the student at any alpha."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from asru_lab.baselines.asru import LAMBDAS, AsruConfig, run_full
from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.stages.reroute import RerouteConfig, reroute
from asru_lab.validation import check_fields


@dataclass
class DeepAsruConfig:
    """Stage 1.0, then ASRU. The reroute's defaults are the better of the two measured in the
    README (rate 1e-2, rank 64, retain weight 3, 400 steps: retain recall 0.84 where weight 1
    left 0.59)."""

    reroute: RerouteConfig = field(
        default_factory=lambda: RerouteConfig(lr=1e-2, lora_r=64, retain_weight=3.0, steps=400),
        metadata={"help": "stage 1.0"},
    )
    asru: AsruConfig = field(default_factory=AsruConfig, metadata={"help": "stages 1.2 and 2"})

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError)  # the nested configs check their own fields


def run_deep(lm, bench, config: DeepAsruConfig, probe) -> Unlearned:
    rerouted, reroute_record = reroute(lm, bench, config.reroute)
    rest = run_full(rerouted, bench, config.asru, probe)
    record = {
        "method": "asru_deep",
        "config": asdict(config),
        "reroute": reroute_record,
        "asru": rest.record,
        "seconds": {"reroute": reroute_record["seconds"], **rest.record["seconds"]},
    }
    return Unlearned("asru_deep", rest.model, record)


register(
    Method(
        "asru_deep",
        "Deep ASRU: the early MLPs reroute the forget people to strangers, then ASRU",
        DeepAsruConfig,
        run_deep,
        needs_probe=True,
        knob=Knob("asru.redirect.lam", LAMBDAS),
    )
)

__all__ = ["DeepAsruConfig", "run_deep"]
