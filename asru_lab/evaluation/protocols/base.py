"""`Protocol`: what an evaluation protocol decides — which items, the prompt of each, how long
an answer may be, how one reply is scored and how a split's scores add up.

A protocol works on benchmark items and plain text; it never runs a model. The harness
(`evaluation.harness.evaluate`) turns its prompts into chats, generates, and keeps one record per
item (`evaluation.records`): `{"protocol", "split", "task", "modality", "person_id", "image",
"prompt", "options", "reference", "reply", "scores"}` plus `"judge"` (the judge's category and
scores) for generation items when the protocol `uses_judge`. `aggregate` computes a split's
metrics from those records alone, so the report can be recomputed from the items file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.evaluation.judge import Judgement, summarize
from asru_lab.generation import Turn

REFUSAL_CATEGORIES = ("rigid_refusal", "contextual_refusal")


@dataclass(frozen=True)
class Prompt:
    """The turns sent for one item: few-shot turns (with their replies), then the asked turn."""

    turns: tuple[Turn, ...]

    @property
    def images(self) -> list[str]:
        """The benchmark paths of the prompt's images, in the order of its turns."""
        return [t.image for t in self.turns if t.image is not None]


def modality(item: QAItem) -> str:
    """ "image" for a question asked about an image, "text" for a text-only one."""
    return "image" if item.has_image else "text"


def reference(item: QAItem) -> str:
    """What a reply is scored against: the correct letter (mcq), the blank's value (cloze) or
    the reference answer (qa)."""
    if item.task == "mcq":
        return item.correct_letter or ""
    return item.value if item.task == "cloze" else item.answer


class Protocol(ABC):
    """One evaluation protocol over a benchmark (subclasses: one module each, registered in
    `protocols.PROTOCOLS`). `shots` and `seed` configure the protocols that draw few-shot
    examples or images; the others ignore them."""

    name: ClassVar[str]
    needs_images: ClassVar[bool] = False  # evaluates image questions only
    uses_judge: ClassVar[bool] = False  # its generation items are also judged
    rouge: ClassVar[dict]  # its ROUGE variant, recorded in the report's meta

    def __init__(self, bench: Benchmark, *, shots: int = 1, seed: int = 0) -> None:
        self.bench = bench
        self.shots = shots
        self.seed = seed

    def select(self, split: str, items: Sequence[QAItem]) -> list[QAItem]:
        """The items of `split` this protocol evaluates (before any sampling), possibly with
        another image; default: all of them."""
        return list(items)

    @abstractmethod
    def prompt(self, item: QAItem) -> Prompt:
        """The turns sent for `item`."""

    @abstractmethod
    def max_new_tokens(self, task: str) -> int:
        """The answer length of a task, in new tokens (greedy decoding)."""

    @abstractmethod
    def score(self, item: QAItem, reply: str) -> dict:
        """The scores of one reply (JSON values: bools, floats, a letter or None)."""

    @classmethod
    @abstractmethod
    def aggregate(cls, records: Sequence[dict]) -> dict:
        """A split's metrics from its per-item records (module docstring)."""

    def key(self) -> dict:
        """What decides the prompts besides the items: an answers file must match it."""
        return {"name": self.name}

    def settings(self) -> dict:
        """The protocol as recorded in the report's meta: name, key settings, answer lengths
        and ROUGE variant."""
        lengths = {task: self.max_new_tokens(task) for task in ("qa", "mcq", "cloze")}
        return {**self.key(), "max_new_tokens": lengths, "rouge": self.rouge}


def mean(records: Sequence[dict], score: str) -> float:
    """The mean of one score over `records` (bools count as 0/1), summed in record order."""
    return sum(r["scores"][score] for r in records) / len(records)


def judge_metrics(records: Sequence[dict]) -> dict:
    """`refusal_rate` (share judged a rigid or contextual refusal; None when the judge's rubric
    gives no categories) and the judge's `quality` block, from the `judge` entries of generation
    records."""
    judgements = [Judgement(**r["judge"]) for r in records]
    quality = summarize(judgements)
    if quality["categories"] is None:  # a rubric that scores without categories (asru_paper)
        return {"refusal_rate": None, "quality": quality}
    refusals = sum(j.category in REFUSAL_CATEGORIES for j in judgements) / len(judgements)
    return {"refusal_rate": refusals, "quality": quality}
