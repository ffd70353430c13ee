"""Fair baselines: every method's strength knob tuned by one stated rule before it is reported.

The rule (`TuningConfig`): on a **validation forget set** — as many people as the reported forget
set, drawn (seeded) from its retained people, the reported forget people left out altogether —
run the method at each value of its knob (`Method.knob`: the learning rate of the gradient
methods and MMUnlearner, the steering strength of steer_only / gated_steer, stage 1.2's lambda
of ASRU) and evaluate it there. Keep the settings whose **retain accuracy** (the mean of retain
recall and retain multiple-choice accuracy) is at most `max_retain_drop` below the untouched
model's; of those, choose the one that forgets most (lowest validation forget leak, then lowest
forget MCQ accuracy, then the weaker setting). When no setting keeps retain accuracy, the one
that drops it least is chosen, and the record says so. The reported forget people are never
seen by the sweep, so the choice cannot fit them.

What "forgets most" reads is `TuningConfig.criterion`: "leak", the plain validation forget leak,
or "attacked", the per-item union of the validation forget leak under the audit's cheap attacks
(direction ablation and the answer's first words prefilled, `asru_lab.auditing`) — a method that
only hides scores no better than one that does nothing under it, so tuning no longer rewards
hiding. The robust table (issue #32) is tuned with "attacked".
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field, is_dataclass, replace

from asru_lab.baselines.registry import METHODS, Knob, UnlearnError
from asru_lab.data.schema import Benchmark, BenchmarkError, Person
from asru_lab.evaluation import headline
from asru_lab.evaluation.harness import EvalConfig
from asru_lab.validation import check_fields

RULE = (
    "per method, its knob's values are run on a validation forget set (as many people, drawn "
    "from the retained ones; the reported forget people left out) and the most forgetting "
    "setting (lowest validation forget leak, then forget MCQ, then the weaker) whose retain "
    "accuracy (mean of retain recall and retain MCQ) drops at most max_retain_drop below the "
    "untouched model's is used; if none does, the smallest drop"
)
CRITERIA = ("leak", "attacked")
CHEAP_ATTACKS = ("ablation", "prefill")  # what criterion "attacked" attacks with


@dataclass
class TuningConfig:
    """How `reproduce` tunes each method's strength knob (module docstring: the rule)."""

    max_retain_drop: float = field(
        default=0.05,
        metadata={"help": "largest retain-accuracy drop a chosen setting may cost (fraction)"},
    )
    validation_people: int | None = field(
        default=None,
        metadata={"help": "validation forget people; None: as many as the reported forget set"},
    )
    evaluate: EvalConfig = field(
        default_factory=lambda: EvalConfig(
            splits=("forget", "retain"), max_items=32, probabilities=False
        ),
        metadata={"help": "how each sweep point is evaluated on the validation set"},
    )
    grids: dict[str, tuple[float, ...]] = field(
        default_factory=dict,
        metadata={"help": "method name -> the values to try, overriding its knob's"},
    )
    seed: int = field(default=0, metadata={"help": "draws the validation forget people"})
    criterion: str = field(
        default="leak",
        metadata={
            "help": "what 'forgets most' reads: the plain validation forget leak ('leak') or "
            "its union under direction ablation and prefill ('attacked')"
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, UnlearnError, max_retain_drop="[0, 1]", validation_people=">= 1")
        if self.criterion not in CRITERIA:
            raise UnlearnError(
                f"TuningConfig.criterion must be one of {', '.join(CRITERIA)}, got "
                f"{self.criterion!r}"
            )


def knob_of(method: str, config: TuningConfig) -> Knob | None:
    """The knob `method` is tuned on (its grid overridden by `config.grids`), or None."""
    knob = METHODS[method].knob
    if method in config.grids:
        if knob is None:
            raise UnlearnError(f"method {method!r} has no strength knob to tune")
        values = tuple(config.grids[method])
        if not values:
            raise UnlearnError(f"TuningConfig.grids[{method!r}] is empty: give values to try")
        knob = Knob(knob.field, values)
    return knob


def set_knob(config: object, path: str, value: float) -> object:
    """A copy of the dataclass `config` with the (dotted) field `path` set to `value`."""
    head, _, rest = path.partition(".")
    if not is_dataclass(config) or head not in config.__dataclass_fields__:
        raise UnlearnError(f"{type(config).__name__} has no field {head!r} to tune")
    if rest:
        return replace(config, **{head: set_knob(getattr(config, head), rest, value)})
    return replace(config, **{head: value})


def validation_benchmark(bench: Benchmark, n: int | None = None, seed: int = 0) -> Benchmark:
    """The validation forget set: `n` (default: as many as `bench` forgets) of `bench`'s
    retained people become the forget split; the reported forget people and every item about
    them (forget, test) are left out; everything else is kept."""
    forget = {p.id for p in bench.people_in("forget")}
    retained = sorted(p.id for p in bench.people_in("retain"))
    n = n or len(forget)
    if not forget:
        raise BenchmarkError(f"{bench.name} has no forget people to tune against")
    if 2 * n > len(retained):
        raise BenchmarkError(
            f"a validation forget set of {n} people needs at least {2 * n} retained people (as "
            f"many left to retain); {bench.name} retains {len(retained)}: tune with fewer "
            "(TuningConfig.validation_people) or without tuning"
        )
    chosen = set(random.Random(f"validation:{seed}").sample(retained, n))
    people = [
        Person(p.id, p.name, "forget", p.facts) if p.id in chosen else p
        for p in bench.people.values()
        if p.id not in forget
    ]
    items = [
        replace(i, split="forget") if i.person_id in chosen and i.split == "retain" else i
        for i in bench.items
        if i.person_id not in forget
    ]
    out = bench.subset(
        items,
        people=people,
        name=f"{bench.name}-validation",
        meta={**bench.meta, "validation_of": bench.fingerprint(), "validation_seed": seed},
    )
    out.validate()
    return out


def retain_accuracy(splits: dict) -> float:
    """`evaluation.headline.retain_accuracy` of an evaluation's splits; UnlearnError when it
    cannot be computed."""
    accuracy = headline.retain_accuracy(splits.get("retain", {}))
    if accuracy is None:
        raise UnlearnError(
            "tuning needs retain recall or retain MCQ accuracy, and this evaluation gives "
            "neither (a protocol without leak_rate and without multiple choice)"
        )
    return accuracy


def choose(points: list[dict], reference: float, max_drop: float, criterion: str = "leak") -> dict:
    """The chosen sweep point (module docstring's rule). Each point holds `value`,
    `forget_leak` (and, with criterion "attacked", `attacked_leak`), `forget_mcq` and
    `retain_accuracy`; adds `retain_drop` and `admissible` to each, and returns {"value",
    "admissible", "reason"}."""
    measure = "attacked_leak" if criterion == "attacked" else "forget_leak"
    for point in points:
        point["retain_drop"] = reference - point["retain_accuracy"]
        point["admissible"] = point["retain_drop"] <= max_drop + 1e-9
    kept = [p for p in points if p["admissible"]]
    if kept:
        best = min(
            enumerate(kept),
            key=lambda kp: (kp[1][measure], kp[1]["forget_mcq"] or 0.0, kp[0]),
        )[1]
        reason = f"most forgetting ({measure}) with retain accuracy drop <= {max_drop:g}"
        return {"value": best["value"], "admissible": True, "reason": reason}
    best = min(points, key=lambda p: p["retain_drop"])
    warnings.warn(
        f"no setting keeps retain accuracy within {max_drop:g} of the untouched model; "
        f"taking the one that drops it least ({best['value']:g})",
        stacklevel=2,
    )
    reason = f"no setting within {max_drop:g}: the smallest retain drop"
    return {"value": best["value"], "admissible": False, "reason": reason}


def point(value: float, splits: dict, attacked: float | None = None) -> dict:
    """One sweep point's measurements from its validation evaluation (and `attacked`: its
    union leak under the cheap attacks, with criterion "attacked")."""
    forget = splits.get("forget", {})
    if forget.get("leak_rate") is None:
        raise UnlearnError(
            "tuning measures forgetting as the validation forget leak (leak_rate), which this "
            "evaluation does not give; tune under the asru_lab protocol"
        )
    return {
        "value": value,
        "forget_leak": forget["leak_rate"],
        **({} if attacked is None else {"attacked_leak": attacked}),
        "forget_mcq": forget.get("mcq_acc"),
        "retain_accuracy": retain_accuracy(splits),
    }


def attacked_leak(result, validation: Benchmark, reference, max_items: int, seed: int) -> float:
    """The validation forget people's union leak under `CHEAP_ATTACKS` for an unlearned
    `result` (its probe applied if it has one); `reference`: the model before unlearning."""
    from asru_lab.auditing import AuditConfig, audit

    config = AuditConfig(attacks=CHEAP_ATTACKS, max_items=max_items, seed=seed, progress=False)
    report = audit(result.model, validation, reference=reference, probe=result.probe, config=config)
    return report.summary["union_leak"]
