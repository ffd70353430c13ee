"""What the workshop's checkers share: the verdict, the example sets, the library's
reference directions, and turning a student's answer into a vector."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from asru_lab.capture import Capture, capture
from asru_lab.data.schema import Benchmark, QAItem, stratified_sample
from asru_lab.directions import knowledge_absence_direction
from asru_lab.models.loading import LoadedModel

SET_NAMES = ("forget", "retain", "target")


class WorkshopCheckError(AssertionError):
    """A strict check failed: the answer is missing or wrong (the message says how)."""


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer: `passed` and a message for the student."""

    passed: bool
    message: str

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


def verdict(passed: bool, message: str, strict: bool) -> Feedback:
    text = f"correct ✓ — {message}" if passed else f"not yet — hint: {message}"
    if strict and not passed:
        raise WorkshopCheckError(text)
    return Feedback(passed, text)


# --- the example sets ---------------------------------------------------------------------------


def example_sets(bench: Benchmark, n_examples: int = 32, seed: int = 0) -> dict[str, list[QAItem]]:
    """Image questions for the exercises, each set in a fitting and a held-out part.

    Keys: `forget` (people to forget), `retain` (people to keep), `target` (never-seen faces,
    the `unseen` split: the paper's x_target), each with `n_examples` questions, and
    `<name>_held_out` with up to `n_examples` other questions of the same set. Seeded.
    """
    if n_examples < 2:
        raise ValueError(f"n_examples must be >= 2, got {n_examples}")
    rng = random.Random(seed)
    sets: dict[str, list[QAItem]] = {}
    for name, split in zip(SET_NAMES, ("forget", "retain", "unseen"), strict=True):
        pool = bench.questions(split, "qa", image_only=True)
        drawn = stratified_sample(pool, 2 * n_examples, rng)
        rng.shuffle(drawn)
        sets[name], sets[f"{name}_held_out"] = drawn[:n_examples], drawn[n_examples:]
    return sets


def captures(
    lm: LoadedModel, bench: Benchmark, sets: dict, names: Sequence[str], **kwargs
) -> dict[str, Capture]:
    return {
        name: capture(lm, bench, sets[name], position="last", progress=False, **kwargs)
        for name in names
    }


def reference_directions(
    lm: LoadedModel, bench: Benchmark, sets: dict[str, list[QAItem]]
) -> dict[int, torch.Tensor]:
    """The library's knowledge-absence direction per layer (float64 `[hidden]`), fitted on
    `sets["target"]` and `sets["forget"]` at the last prompt token, site `output`."""
    fit = captures(lm, bench, sets, ("target", "forget"))
    return knowledge_absence_direction(fit["target"], fit["forget"])


def as_vector(answer, hidden: int, name: str) -> tuple[torch.Tensor | None, str | None]:
    """`answer` as a float64 `[hidden]` tensor, or a hint about why it is not one."""
    try:
        vector = torch.as_tensor(answer).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None, f"`{name}` should be a tensor, got a {type(answer).__name__}"
    if vector.ndim == 2 and vector.shape[1] == hidden:
        return None, (
            f"`{name}` has shape {list(vector.shape)}: one row per example. Average over the "
            "examples (`.mean(0)`) to get one vector"
        )
    if vector.shape != (hidden,):
        return (
            None,
            f"`{name}` should have shape [{hidden}] (the hidden size), not {list(vector.shape)}",
        )
    if not torch.isfinite(vector).all():
        return None, f"`{name}` holds NaN or infinite values"
    return vector, None


def cosine_of(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))
