"""`asru_undo`: ASRU (stage 1.2 and stage 2), then its student re-grown by distillation (UNDO,
Lee et al. 2025; `asru_lab.stages.distill`). ASRU is the teacher: the student starts as its
weights shrunk and perturbed by `distill.alpha` and learns its answers about everyone but the
forget people, so what ASRU only hid behind a refusal has to survive the perturbation to come
back. Any other saved unlearned model can be the teacher through `asru-lab distill`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from asru_lab.baselines.asru import AsruConfig, run_full
from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.stages.distill import DistillConfig, distill
from asru_lab.validation import check_fields

# the student's perturbation, weakest first (UNDO sweeps 0.1-0.7 for language and up to 1.0,
# a student from noise)
ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class UndoConfig:
    """ASRU as the teacher, then the distillation that re-grows its student. The defaults: alpha
    0.4 with the rate decayed to 1e-4 (UNDO's range for language is 0.1-0.7; on the embedded
    model 0.3 left half of what ASRU hid, and 0.4 at a constant rate or 0.6 never met the stop
    rule; README), a pool of 20 000 prompts (every retain question of every task and every
    picture question — what the pool does not show fades, and a format it does not show is
    erased — strangers for the rest), at most 6 000 steps, ended by the stop rule."""

    teacher: AsruConfig = field(default_factory=AsruConfig, metadata={"help": "the teacher"})
    distill: DistillConfig = field(
        default_factory=lambda: DistillConfig(
            alpha=0.4, min_lr=1e-4, steps=6000, max_prompts=20_000, eval_every=500
        ),
        metadata={"help": "the student's distillation"},
    )

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError)  # the nested configs check their own fields


def run_undo(lm, bench, config: UndoConfig, probe) -> Unlearned:
    teacher = run_full(lm, bench, config.teacher, probe)
    grown = distill(teacher.model, bench, config.distill, teacher_probe=teacher.probe)
    record = {
        "method": "asru_undo",
        "config": asdict(config),
        "teacher": teacher.record,
        "distill": grown.record(config.distill),
        "seconds": {"teacher": teacher.record["seconds"], "distill": grown.seconds},
    }
    return Unlearned("asru_undo", grown.model, record)


register(
    Method(
        "asru_undo",
        "ASRU, then a shrunk and perturbed copy distilled on its answers about everyone else",
        UndoConfig,
        run_undo,
        needs_probe=True,
        knob=Knob("distill.alpha", ALPHAS),
    )
)

__all__ = ["ALPHAS", "UndoConfig", "run_undo"]
