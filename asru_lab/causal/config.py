"""What a causal trace traces: the sites, position groups, corruptions and backends it knows,
and `CausalTraceConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from asru_lab.errors import AsruLabError
from asru_lab.validation import check_fields

COMPONENTS = ("residual", "attention", "mlp")
GROUPS = ("image", "question", "template", "last_prompt", "answer_prefix", "last")
# corruption "name": a question by name, the name's tokens (question and answer prefix) noised
NAME_GROUPS = ("name", "question", "template", "last_prompt", "answer_prefix", "last")
ALL_GROUPS = ("image", "name", "question", "template", "last_prompt", "answer_prefix", "last")
CORRUPTIONS = ("noise", "swap", "name")
BACKENDS = ("transformer_lens", "nnsight")


class CausalTraceError(AsruLabError, ValueError):
    """A causal trace was asked for something it cannot do; the message says what and why."""


@dataclass
class CausalTraceConfig:
    """What to trace and how (defaults: every layer, component and position group)."""

    split: str = field(
        default="forget", metadata={"help": "whose people are traced when `people` is None"}
    )
    people: tuple[str, ...] | None = field(
        default=None, metadata={"help": "person ids; None: every person of `split`"}
    )
    max_people: int | None = field(
        default=None,
        metadata={"help": "cap on the people traced (the first ones, in benchmark order)"},
    )
    attribute: str = field(
        default="name", metadata={"help": "the fact traced: a key of the people's facts"}
    )
    question: str | None = field(
        default=None, metadata={"help": "ask this wording instead of the benchmark's question"}
    )
    corruption: str = field(
        default="noise",
        metadata={
            "help": "'noise' on the visual tokens, 'swap' in another person's image, or 'name': "
            "a question by name, noise on the name's token embeddings (nnsight backend)"
        },
    )
    noise_scale: float = field(
        default=3.0,
        metadata={"help": "noise std in units of the person's own visual-feature std"},
    )
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "decoder layers traced; None: every one"}
    )
    components: tuple[str, ...] = field(
        default=COMPONENTS, metadata={"help": f"sites restored, a subset of {COMPONENTS}"}
    )
    groups: tuple[str, ...] = field(
        default=GROUPS,
        metadata={
            "help": f"position groups restored, a subset of {ALL_GROUPS} (corruption 'name' "
            f"with the default: {NAME_GROUPS})"
        },
    )
    backend: str = field(
        default="transformer_lens",
        metadata={"help": "or 'nnsight' (the same numbers, any HF architecture)"},
    )
    min_drop: float = field(
        default=0.05,
        metadata={
            "help": "people whose corruption lowers p_clean by less stay out of the mean "
            "recovered fraction (theirs is undefined); they stay in `people`"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "rows (runs) per forward pass"})
    seed: int = field(
        default=0,
        metadata={"help": "the noise (per person: seeded by seed and person id), swap partners"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            CausalTraceError,
            max_people=">= 1",
            noise_scale="> 0",
            min_drop="[0, 1]",
            batch_size=">= 1",
        )
        for name, value, allowed in (
            ("corruption", self.corruption, CORRUPTIONS),
            ("backend", self.backend, BACKENDS),
        ):
            if value not in allowed:
                raise CausalTraceError(f"unknown {name} {value!r}; expected one of {allowed}")
        if self.corruption == "name":
            if tuple(self.groups) == GROUPS:  # a by-name question has no image tokens
                self.groups = NAME_GROUPS
            if self.backend != "nnsight":
                raise CausalTraceError(
                    "corruption 'name' noises the name's token embeddings, which only the "
                    "nnsight backend reaches: set backend='nnsight'"
                )
        for name, values, allowed in (
            ("components", self.components, COMPONENTS),
            ("groups", self.groups, ALL_GROUPS),
        ):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise CausalTraceError(
                    f"{name} must be a non-empty subset of {allowed}, got {tuple(values)}"
                )
        if self.people is not None and not self.people:
            raise CausalTraceError("people is empty: give person ids, or None for the split")
