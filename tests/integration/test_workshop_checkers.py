"""The workshop's checkers on the embedded model: a right answer passes, a wrong one is
reported with a hint, a missing one gets a hint without an error, strict mode raises."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import asru_lab as al
from asru_lab import workshop
from asru_lab.auditing.measure import last_states
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


# --- exercise 4: break the unlearning ---------------------------------------------------------


@pytest.fixture(scope="module")
def unlearned(lm, bench):
    """steer_only with the committed probe (`asru-lab locate`'s full sweep), as workshop 4."""
    probe = SteeringProbe.load(Path(__file__).resolve().parents[2] / "figures" / "causal" / "probe")
    return al.unlearn(lm, bench, "steer_only", probe=probe)


@pytest.fixture(scope="module")
def added(lm, bench, sets, unlearned):
    """What steer_only adds per layer, the way exercise 4a asks for it."""
    with unlearned.applied():
        on = last_states(lm, bench, sets["forget"], batch_size=32)
    off = last_states(lm, bench, sets["forget"], batch_size=32)
    return {k: on[:, k].mean(0) - off[:, k].mean(0) for k in range(lm.num_layers)}


def test_check_added(lm, bench, sets, unlearned, added):
    probe = unlearned.probe
    feedback = workshop.check_added(added, lm, bench, probe, sets=sets, strict=True)
    assert feedback.passed and f"at layer {probe.layer}" in feedback.message
    assert all(float(added[k].norm()) == 0 for k in range(probe.layer))
    hints = {
        "opposite way": {k: -v for k, v in added.items()},
        "hooks did not run while you read": {k: 0 * v for k, v in added.items()},
        "the length is x2.00": {k: 2 * v for k, v in added.items()},
        "adds nothing": {k: v + 1 for k, v in added.items()},
        "missing": {k: added[k] for k in range(3)},
        "Average over the examples": {k: torch.stack([v, v]) for k, v in added.items()},
        "still None": None,
    }
    kw = {"layers": None, "keep_raw": True, "progress": False}
    with unlearned.applied():  # capture runs through nnsight: the probe's hooks never fire
        through_nnsight = capture(lm, bench, sets["forget"], **kw)
    plain = capture(lm, bench, sets["forget"], **kw)
    hints["`capture` runs the model through nnsight"] = {
        k: through_nnsight.raw[k].mean(0) - plain.raw[k].mean(0) for k in range(lm.num_layers)
    }
    for hint, answer in hints.items():
        feedback = workshop.check_added(answer, lm, bench, probe, sets=sets)
        assert not feedback.passed and hint in feedback.message, (hint, feedback.message)
    with pytest.raises(workshop.WorkshopCheckError, match="opposite way"):
        workshop.check_added(hints["opposite way"], lm, bench, probe, sets=sets, strict=True)


def ablation_by_hand(*, normalise=True, skip_zero=True, returns=True, removes=True):
    """Exercise 4b's `ablate`, right by default; each switch is a mistake a student makes."""

    @contextmanager
    def ablate(model, directions):
        layers = model.adapter.decoder_layers(model.model)
        handles = []
        for layer, d in directions.items():
            if skip_zero and float(d.norm()) == 0:
                continue
            u = d / d.norm() if normalise else d

            def hook(module, args, output, u=u):
                edited = output - (output @ u.to(output.dtype)).unsqueeze(-1) * u.to(output.dtype)
                return edited if returns else None

            handles.append(layers[layer].register_forward_hook(hook))
        try:
            yield
        finally:
            if removes:
                for handle in handles:
                    handle.remove()

    return ablate


def test_check_ablation_brings_the_facts_back(lm, bench, sets, unlearned):
    feedback = workshop.check_ablation(
        ablation_by_hand(), lm, bench, unlearned.probe, sets=sets, strict=True
    )
    assert feedback.passed and "forget leak 0% ->" in feedback.message
    assert "retain recall" in feedback.message


def test_check_ablation_hints(lm, bench, sets, unlearned):
    def hooks():
        return [len(m._forward_hooks) for m in lm.adapter.decoder_layers(lm.model)]

    clean = hooks()

    def raises(model, directions):
        raise ZeroDivisionError("division by zero")

    wrong = {
        "changed nothing": ablation_by_hand(returns=False),
        "NaN": ablation_by_hand(skip_zero=False),
        "still has a component along the direction": ablation_by_hand(normalise=False),
        "stayed on the model": ablation_by_hand(removes=False),
        "should be a context manager": lambda model, directions: None,
        "ablate raised ZeroDivisionError": raises,
        "still None": None,
    }
    for hint, ablate in wrong.items():
        feedback = workshop.check_ablation(ablate, lm, bench, unlearned.probe, sets=sets)
        assert not feedback.passed and hint in feedback.message, (hint, feedback.message)
        assert hooks() == clean, f"{hint}: the checker left hooks on the model"
    with pytest.raises(workshop.WorkshopCheckError, match="changed nothing"):
        workshop.check_ablation(
            wrong["changed nothing"], lm, bench, unlearned.probe, sets=sets, strict=True
        )


def prefix_by_hand(item):
    start = item.answer.lower().find(item.value.lower())
    return item.answer[:start].rstrip() if start > 0 else ""


def test_check_prefill(lm, bench, sets, unlearned):
    probe = unlearned.probe
    feedback = workshop.check_prefill(prefix_by_hand, lm, bench, probe, sets=sets, strict=True)
    assert feedback.passed and "forget leak" in feedback.message
    wrong = {
        "trailing space": lambda item: prefix_by_hand(item) + " ",
        "already says the fact": lambda item: item.answer,
        "expected": lambda item: prefix_by_hand(item).split(" ")[0],
        "returns None": lambda item: None,
        "prefix_of raised KeyError": lambda item: {}["answer"],
        "still None": None,
    }
    for hint, prefix_of in wrong.items():
        feedback = workshop.check_prefill(prefix_of, lm, bench, probe, sets=sets)
        assert not feedback.passed and hint in feedback.message, (hint, feedback.message)
    with pytest.raises(workshop.WorkshopCheckError, match="trailing space"):
        workshop.check_prefill(wrong["trailing space"], lm, bench, probe, sets=sets, strict=True)
