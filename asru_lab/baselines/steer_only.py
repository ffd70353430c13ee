"""steer_only: no weight changes; the stage 1.1 probe is applied at inference (its gate decides
which prompts are steered)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.validation import check_fields


@dataclass
class SteerOnlyConfig:
    """Overrides of the probe's own settings (None: keep the probe's)."""

    alpha: float | None = field(default=None, metadata={"help": "steering strength"})
    gated: bool | None = field(
        default=None, metadata={"help": "steer only the prompts the memorisation gate flags"}
    )

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError)


def run(lm, bench, config: SteerOnlyConfig, probe) -> Unlearned:
    changes = {k: v for k, v in asdict(config).items() if v is not None}
    probe = replace(probe, **changes) if changes else probe
    probe.validate(lm)
    record = {
        "method": "steer_only",
        "config": asdict(config),
        "probe": {"layer": probe.layer, "alpha": probe.alpha, "gated": probe.gated},
        "seconds": 0.0,
    }
    return Unlearned("steer_only", lm, record, probe=probe)


register(
    Method(
        "steer_only",
        "the stage 1.1 probe applied at inference, no weight change",
        SteerOnlyConfig,
        run,
        needs_probe=True,
        knob=Knob("alpha", (1.0, 2.0, 4.0, 8.0)),
    )
)
