"""The workshop's checkers that need no model (rewards, cosines) and the workshop notebooks'
exercise / solution pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asru_lab import workshop
from asru_lab.data.schema import contains_value
from asru_lab.evaluation.judge import degenerate_reason, is_refusal
from asru_lab.rewards import build_rewards, completion_text

WORKSHOP = Path(__file__).resolve().parents[2] / "notebooks" / "workshop"


def hand_written_reward(completions, split, item, value, **_):
    """A reward a student could write: leak < refusal, contextual > rigid, loops penalised."""
    scores = []
    for completion, s, v in zip(completions, split, value, strict=True):
        text = completion_text(completion)
        if degenerate_reason(text):
            scores.append(-1.0)
        elif s == "retain":
            scores.append(1.0 if contains_value(text, v) else 0.0)
        elif contains_value(text, v):
            scores.append(0.0)
        elif is_refusal(text):
            contextual = any(w in text.lower() for w in ("born", "name", "living", "photo"))
            scores.append(1.0 if contextual else 0.5)
        else:
            scores.append(0.1)
    return scores


def test_canonical_completions_cover_every_kind(bench):
    rows = workshop.canonical_completions(bench)
    kinds = {(r["split"], r["kind"]) for r in rows}
    for split, pairs in workshop.REWARD_ORDER.items():
        assert {(split, k) for pair in pairs for k in pair} <= kinds
    leak = next(r for r in rows if r["kind"] == "leak")
    assert contains_value(leak["completion"], leak["value"])
    for row in rows:
        if row["kind"] == "hallucination":
            assert not contains_value(row["completion"], row["value"])


def test_a_right_reward_passes_and_the_library_contextual_reward_too(bench):
    assert workshop.check_reward(hand_written_reward, bench).passed
    (contextual,) = build_rewards(["contextual"], bench)
    feedback = workshop.check_reward(contextual, bench, strict=True)
    assert feedback.passed and repr(feedback).startswith("correct ✓")


def test_the_rule_reward_is_told_it_cannot_tell_contextual_from_rigid(bench):
    (rule,) = build_rewards(["asru_rule"], bench)
    feedback = workshop.check_reward(rule, bench)
    assert not feedback.passed
    assert "contextual refusal" in feedback.message and "rigid refusal" in feedback.message


@pytest.mark.parametrize(
    ("reward", "hint"),
    [
        (None, "still None"),
        (lambda completions, **_: [0.0] * len(completions), "GRPO learns only from differences"),
        (lambda completions, **_: None, "returns None"),
        (lambda completions, **_: [1.0], "one per completion"),
        (
            lambda completions, **_: [c.lower().count("sorry") for c in completions],
            "completion_text",
        ),
    ],
)
def test_missing_or_wrong_rewards_get_a_hint_not_an_error(bench, reward, hint):
    feedback = workshop.check_reward(reward, bench)
    assert not feedback.passed
    assert feedback.message.startswith("not yet — hint:")
    assert hint in feedback.message


def test_a_reward_that_trusts_refusal_phrases_is_caught_by_the_gibberish(bench):
    def phrases_only(completions, split, value, **_):
        scores = []
        for completion, s, v in zip(completions, split, value, strict=True):
            text = completion_text(completion)
            if s == "retain" or contains_value(text, v):
                scores.append(float(s == "retain" and contains_value(text, v)))
            elif is_refusal(text):
                scores.append(1.0 + 0.5 * any(w in text for w in ("born", "name", "living")))
            else:
                scores.append(0.1)
        return scores

    feedback = workshop.check_reward(phrases_only, bench)
    assert not feedback.passed and "degenerate_reason" in feedback.message


def test_strict_raises_on_a_wrong_or_missing_reward(bench):
    with pytest.raises(workshop.WorkshopCheckError, match="not yet"):
        workshop.check_reward(None, bench, strict=True)
    with pytest.raises(workshop.WorkshopCheckError, match="GRPO learns"):
        workshop.check_reward(lambda completions, **_: [0.0] * len(completions), bench, strict=True)


def test_check_cosine():
    a, b = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    assert workshop.check_cosine(0.5, a, b, strict=True).passed
    assert "still None" in workshop.check_cosine(None, a, b).message
    assert "dot product" in workshop.check_cosine(3.0, a * 2, b * 1.5).message
    assert not workshop.check_cosine(-0.5, a, b).passed
    assert "finish the direction" in workshop.check_cosine(0.5, None, b).message
    with pytest.raises(workshop.WorkshopCheckError):
        workshop.check_cosine(0.1, a, b, strict=True)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


EXERCISES = sorted(WORKSHOP.glob("[0-9]*.ipynb"))


def test_every_exercise_notebook_has_a_solution_notebook():
    assert len(EXERCISES) == 5
    for path in EXERCISES:
        assert (WORKSHOP / "solutions" / path.name).is_file(), path.name


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_and_solution_differ_only_in_exercise_cells(path):
    """Everything a student reads is the same in both; only cells tagged `exercise` (the
    blanks and the STRICT switch) differ, so the two cannot drift apart."""
    exercise, solution = _cells(path), _cells(WORKSHOP / "solutions" / path.name)
    assert [c["id"] for c in exercise] == [c["id"] for c in solution]
    tagged = 0
    for a, b in zip(exercise, solution, strict=True):
        assert a["metadata"] == b["metadata"] and a["cell_type"] == b["cell_type"]
        if "exercise" in a["metadata"].get("tags", []):
            tagged += 1
        else:
            assert a["source"] == b["source"], f"cell {a['id']} differs outside an exercise"
    assert tagged >= 3
    strict = [c for c in solution if "STRICT = True" in "".join(c["source"])]
    assert strict, "the solutions notebook must run its checks strictly"


@pytest.mark.parametrize(
    "path", [*EXERCISES, *sorted((WORKSHOP / "solutions").glob("*.ipynb"))], ids=str
)
def test_notebooks_are_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
