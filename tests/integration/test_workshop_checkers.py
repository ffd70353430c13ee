"""The workshop's checkers on the embedded model: a right answer passes, a wrong one is
reported with a hint, a missing one gets a hint without an error, strict mode raises."""

from __future__ import annotations

import pytest
import torch

from asru_lab import workshop
from asru_lab.capture import capture
from asru_lab.data.schema import contains_value
from asru_lab.directions import auroc
from asru_lab.evaluation.judge import is_refusal
from asru_lab.generation import generate
from asru_lab.probe import SteeringProbe

LAYER = 5


@pytest.fixture(scope="module")
def sets(bench):
    return workshop.example_sets(bench, n_examples=12)


@pytest.fixture(scope="module")
def by_hand(lm, bench, sets):
    """v at every layer, the way the exercise asks for it: means of raw activations."""
    kw = {"layers": None, "keep_raw": True, "progress": False}
    target = capture(lm, bench, sets["target"], **kw)
    forget = capture(lm, bench, sets["forget"], **kw)
    return {k: target.raw[k].mean(0) - forget.raw[k].mean(0) for k in range(lm.num_layers)}


def test_example_sets_are_disjoint_and_seeded(bench, sets):
    assert workshop.example_sets(bench, n_examples=12) == sets
    for name in workshop.SET_NAMES:
        assert len(sets[name]) == 12
        assert not {id(i) for i in sets[name]} & {id(i) for i in sets[f"{name}_held_out"]}
    assert all(i.split == "unseen" for i in sets["target"])


def test_check_direction(lm, bench, sets, by_hand):
    v = by_hand[LAYER]
    assert workshop.check_direction(v, lm, bench, LAYER, sets=sets, strict=True).passed
    hints = {
        "opposite way": -v,
        "not normalised": v / v.norm(),
        "means, not sums": v * len(sets["target"]),
        "layer 3's direction": by_hand[3],
        "Average over the examples": torch.stack([v, v]),
        "still None": None,
    }
    for hint, answer in hints.items():
        feedback = workshop.check_direction(answer, lm, bench, LAYER, sets=sets)
        assert not feedback.passed and hint in feedback.message, (hint, feedback.message)
    with pytest.raises(workshop.WorkshopCheckError, match="opposite way"):
        workshop.check_direction(-v, lm, bench, LAYER, sets=sets, strict=True)


def test_check_steering(lm, bench, sets, by_hand):
    fingerprint = lm.fingerprint()
    strong = SteeringProbe(by_hand[LAYER], LAYER, fingerprint, positions="last", alpha=3.0)
    feedback = workshop.check_steering(strong, lm, bench, sets=sets, strict=True)
    assert feedback.passed and "Retain recall" in feedback.message
    weak = SteeringProbe(by_hand[LAYER], LAYER, fingerprint, positions="last", alpha=0.1)
    assert "raise alpha" in workshop.check_steering(weak, lm, bench, sets=sets).message
    wrong_way = SteeringProbe(-by_hand[LAYER], LAYER, fingerprint, positions="last", alpha=3.0)
    assert "sign" in workshop.check_steering(wrong_way, lm, bench, sets=sets).message
    assert "still None" in workshop.check_steering(None, lm, bench, sets=sets).message
    with pytest.raises(workshop.WorkshopCheckError):
        workshop.check_steering(weak, lm, bench, sets=sets, strict=True)


def test_check_separability(lm, bench, sets):
    directions = workshop.reference_directions(lm, bench, sets)
    kw = {"layers": None, "directions": directions, "progress": False}
    target = capture(lm, bench, sets["target_held_out"], **kw).projections
    forget = capture(lm, bench, sets["forget_held_out"], **kw).projections
    right = {k: auroc(target[k][:, 0], forget[k][:, 0]) for k in range(lm.num_layers)}
    assert workshop.check_separability(right, lm, bench, sets=sets, strict=True).passed
    swapped = {k: 1 - a for k, a in right.items()}
    assert "1 - AUROC" in workshop.check_separability(swapped, lm, bench, sets=sets).message
    on_fit = workshop.reference_separability(lm, bench, sets, held_out=False)
    if any(abs(on_fit[k] - right[k]) > 0.01 for k in right):
        assert "fitted on" in workshop.check_separability(on_fit, lm, bench, sets=sets).message
    partial = {k: right[k] for k in range(3)}
    assert "missing" in workshop.check_separability(partial, lm, bench, sets=sets).message
    assert "still None" in workshop.check_separability(None, lm, bench, sets=sets).message
    with pytest.raises(workshop.WorkshopCheckError):
        workshop.check_separability(swapped, lm, bench, sets=sets, strict=True)


def test_check_steering_effect(lm, bench, sets, by_hand):
    def steering_effect(layer, alpha):
        probe = SteeringProbe(
            by_hand[layer], layer, lm.fingerprint(), positions="last", alpha=alpha
        )
        forget, retain = sets["forget_held_out"][:8], sets["retain_held_out"][:8]
        with probe.apply(lm):
            f = generate(
                lm, [bench.load_image(i.image) for i in forget], [i.question for i in forget]
            )
            r = generate(
                lm, [bench.load_image(i.image) for i in retain], [i.question for i in retain]
            )
        return {
            "forget_refusal": sum(map(is_refusal, f)) / len(f),
            "retain_recall": sum(contains_value(a, i.value) for i, a in zip(retain, r, strict=True))
            / len(r),
        }

    feedback = workshop.check_steering_effect(steering_effect, lm, bench, sets=sets, strict=True)
    assert feedback.passed and "layer 5" in feedback.message

    def upside_down(layer, alpha):
        effect = steering_effect(layer, alpha)
        return {"forget_refusal": 1 - effect["forget_refusal"], "retain_recall": 0.5}

    assert not workshop.check_steering_effect(upside_down, lm, bench, sets=sets).passed
    assert (
        "returns None"
        in workshop.check_steering_effect(lambda *a: None, lm, bench, sets=sets).message
    )
    assert (
        "raised ZeroDivisionError"
        in workshop.check_steering_effect(lambda *a: 1 / 0, lm, bench, sets=sets).message
    )
    with pytest.raises(workshop.WorkshopCheckError):
        workshop.check_steering_effect(None, lm, bench, sets=sets, strict=True)
