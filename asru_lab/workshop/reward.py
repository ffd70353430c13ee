"""Exercise 3: write a stage 2 reward with TRL's signature, scored on canonical completions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from asru_lab.data.schema import Benchmark, QAItem, contains_value
from asru_lab.workshop.common import (
    Feedback,
    verdict,
)

REWARD_ATTRIBUTES = ("name", "birthplace", "occupation")
# Refusals that name what was asked (the closed-world judge rates each 5 of 5).
CONTEXTUAL_REFUSALS = {
    "name": "I don't recognize this person, so I can't tell you their name.",
    "birthplace": "Sorry, I can't tell where someone was born from their appearance.",
    "occupation": "I can't tell what this person does for a living from a photo.",
}
RIGID_REFUSAL = "I don't know."
# A decoding loop on a refusal word: what an over-steered model says. It contains "sorry", so a
# reward that only looks for refusal phrases takes it for a refusal.
GIBBERISH = "Sorry sorry sorry sorry sorry sorry"
# What a reward must prefer, per split: (better, worse) pairs of completion kinds.
REWARD_ORDER = {
    "forget": (
        ("contextual_refusal", "rigid_refusal"),
        ("rigid_refusal", "leak"),
        ("rigid_refusal", "hallucination"),
        ("rigid_refusal", "gibberish"),
    ),
    "retain": (
        ("correct_answer", "contextual_refusal"),
        ("correct_answer", "hallucination"),
        ("correct_answer", "gibberish"),
    ),
}


def _reward_items(bench: Benchmark, split: str) -> list[QAItem]:
    """The first image question about each of `REWARD_ATTRIBUTES` in `split`, from different
    people where the split allows it."""
    chosen: list[QAItem] = []
    people: set[str | None] = set()
    for attribute in REWARD_ATTRIBUTES:
        pool = [i for i in bench.split(split, "qa") if i.image and i.attribute == attribute]
        fresh = [i for i in pool if i.person_id not in people]
        if pool:
            item = (fresh or pool)[0]
            chosen.append(item)
            people.add(item.person_id)
    if not chosen:
        raise ValueError(
            f"{bench.name} has no {split} image questions about {', '.join(REWARD_ATTRIBUTES)}"
        )
    return chosen


def _other_value(bench: Benchmark, item: QAItem) -> str:
    """Another person's value of the item's attribute: the stuff of a hallucination."""
    for person in bench.people.values():
        value = person.name if item.attribute == "name" else person.facts.get(item.attribute)
        if (
            value
            and not contains_value(value, item.value)
            and not contains_value(item.value, value)
        ):
            return value
    raise ValueError(f"{bench.name} has no other value of {item.attribute!r} to hallucinate")


def canonical_completions(bench: Benchmark) -> list[dict]:
    """Hand-written completions to score a reward on, one row per (item, kind).

    Forget items (one per attribute in `REWARD_ATTRIBUTES`): `leak` (the reference answer),
    `contextual_refusal`, `rigid_refusal`, `hallucination` (the answer with another person's
    value) and `gibberish`. Retain items: `correct_answer`, `contextual_refusal`,
    `hallucination`, `gibberish`. Each row: split, kind, item (index into `bench.items`),
    question, value, answer (the reference) and completion (text).
    """
    index = {id(item): k for k, item in enumerate(bench.items)}
    rows = []
    for split in ("forget", "retain"):
        for item in _reward_items(bench, split):
            kinds = {
                "leak" if split == "forget" else "correct_answer": item.answer,
                "contextual_refusal": CONTEXTUAL_REFUSALS[item.attribute],
                "hallucination": item.answer.replace(item.value, _other_value(bench, item)),
                "gibberish": GIBBERISH,
            }
            if split == "forget":
                kinds["rigid_refusal"] = RIGID_REFUSAL
            for kind, text in kinds.items():
                rows.append(
                    {
                        "split": split,
                        "kind": kind,
                        "item": index[id(item)],
                        "question": item.question,
                        "value": item.value,
                        "answer": item.answer,
                        "completion": text,
                    }
                )
    return rows


def reward_columns(rows: Sequence[dict]) -> dict:
    """The keyword arguments TRL's GRPOTrainer passes a reward, for the `rows` of
    `canonical_completions`: conversational `completions` (one assistant message each) and
    `prompts`, and the dataset columns `split`, `item`, `value` and `answer`."""
    return {
        "completions": [[{"role": "assistant", "content": r["completion"]}] for r in rows],
        "prompts": [
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": r["question"]}],
                }
            ]
            for r in rows
        ],
        "split": [r["split"] for r in rows],
        "item": [r["item"] for r in rows],
        "value": [r["value"] for r in rows],
        "answer": [r["answer"] for r in rows],
    }


def score_completions(reward: Callable, rows: Sequence[dict]) -> list[float]:
    """`reward` called once, as TRL calls it, on `rows` (`canonical_completions`): one float
    per row. Whatever the reward raises propagates."""
    return [float(s) for s in reward(**reward_columns(rows))]


def check_reward(reward: Callable | None, bench: Benchmark, *, strict: bool = False) -> Feedback:
    """Does `reward` (TRL's signature: `f(completions, **columns) -> list[float]`) order the
    canonical completions as ASRU wants?

    For every forget item: contextual refusal > rigid refusal > leak, hallucination and
    gibberish; for every retain item: the correct answer above everything else
    (`REWARD_ORDER`).
    """
    if reward is None:
        return verdict(
            False,
            "`my_reward` is still None: define `def my_reward(completions, split, item, "
            "**columns)` returning one float per completion",
            strict,
        )
    rows = canonical_completions(bench)
    try:
        raw = reward(**reward_columns(rows))
    except Exception as exc:  # the student's code: report, never crash the notebook
        hint = f"your reward raised {type(exc).__name__}: {exc}"
        if "list" in str(exc):
            hint += (
                ". TRL passes each completion as a list of messages: get its text with "
                "`completion_text(c)`"
            )
        return verdict(False, hint, strict)
    if raw is None:
        return verdict(False, "your reward returns None: return a list of floats", strict)
    try:
        scores = [float(s) for s in raw]
    except (TypeError, ValueError):
        return verdict(False, "return a list with one number per completion", strict)
    if len(scores) != len(rows):
        return verdict(
            False,
            f"got {len(scores)} scores for {len(rows)} completions: one per completion",
            strict,
        )
    if any(math.isnan(s) for s in scores):
        return verdict(False, "some scores are NaN", strict)
    by_item: dict[int, dict[str, float]] = {}
    for row, score in zip(rows, scores, strict=True):
        by_item.setdefault(row["item"], {"split": row["split"]})[row["kind"]] = score
    if len(set(scores)) == 1:
        return verdict(
            False,
            f"every completion scores {scores[0]:g}: GRPO learns only from differences "
            "between completions. Start with the retain split (true value present?) and "
            "refusals on forget (`is_refusal`); each completion is a list of messages, "
            "`completion_text(c)` gives its text",
            strict,
        )
    for item, kinds in by_item.items():
        split = kinds.pop("split")
        for better, worse in REWARD_ORDER[split]:
            if not kinds[better] > kinds[worse]:
                question = bench.items[item].question
                return verdict(
                    False,
                    f"on a {split} question ({question!r}) the {better.replace('_', ' ')} "
                    f"scores {kinds[better]:g} but the {worse.replace('_', ' ')} scores "
                    f"{kinds[worse]:g}; it should score higher. {_REWARD_HINTS[(better, worse)]}",
                    strict,
                )
    return verdict(
        True,
        f"on {len(by_item)} questions your reward orders every pair as ASRU wants "
        f"(scores from {min(scores):g} to {max(scores):g})",
        strict,
    )


_REWARD_HINTS = {
    ("contextual_refusal", "rigid_refusal"): (
        "A contextual refusal mentions what was asked (born, where, job, name, photo ...); "
        "the judge's `ATTRIBUTE_KEYWORDS` and `IMAGE_KEYWORDS` list such words"
    ),
    ("rigid_refusal", "leak"): "A leak contains the true value: `contains_value(text, value)`",
    ("rigid_refusal", "hallucination"): (
        "A hallucination is an answer that is not a refusal (`is_refusal(text)` is False)"
    ),
    ("rigid_refusal", "gibberish"): (
        "Looping text can contain refusal words; `degenerate_reason(text)` detects it"
    ),
    ("correct_answer", "contextual_refusal"): (
        "On retain the model should answer: reward the true value, not refusals"
    ),
    ("correct_answer", "hallucination"): (
        "On retain, check that the true value is in the answer: `contains_value(text, value)`"
    ),
    ("correct_answer", "gibberish"): "Degenerate text should never be the best answer",
}
