"""Exercise 2: try a layer — held-out separability along the direction and its steering
effect on forget and retain prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.directions import auroc
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.workshop.common import (
    Feedback,
    captures,
    example_sets,
    reference_directions,
    verdict,
)
from asru_lab.workshop.direction import refusal_and_recall


def reference_separability(
    lm: LoadedModel,
    bench: Benchmark,
    sets: dict[str, list[QAItem]],
    *,
    held_out: bool = True,
) -> dict[int, float]:
    """Per layer, the AUROC of never-seen (positive) vs forget (negative) faces projected on
    that layer's knowledge-absence direction (fitted on the fitting sets), measured on the
    held-out sets (`held_out=False`: on the fitting sets themselves, an optimistic figure)."""
    directions = reference_directions(lm, bench, sets)
    names = ("target_held_out", "forget_held_out") if held_out else ("target", "forget")
    caps = captures(lm, bench, sets, names, directions=directions)
    target, forget = (caps[n].projections for n in names)
    return {layer: auroc(target[layer][:, 0], forget[layer][:, 0]) for layer in directions}


def check_separability(
    separability,
    lm: LoadedModel,
    bench: Benchmark,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    strict: bool = False,
) -> Feedback:
    """Is `separability` ({layer: AUROC}, every layer) the held-out AUROC of never-seen vs
    forget faces along each layer's v (`reference_separability`), within 0.01?"""
    n = lm.num_layers
    if separability is None:
        return verdict(
            False,
            "`separability` is still None: a dict {layer: AUROC} for layers 0.."
            f"{n - 1}. Project held-out target and forget activations on v[layer] "
            "(`capture(..., directions=v)` then `.projections[layer][:, 0]`) and call "
            "`auroc(target_scores, forget_scores)`",
            strict,
        )
    if not isinstance(separability, dict):
        return verdict(
            False, f"`separability` should be a dict, got a {type(separability).__name__}", strict
        )
    missing = [layer for layer in range(n) if layer not in separability]
    if missing:
        return verdict(False, f"layers {missing} are missing: measure every layer", strict)
    sets = sets or example_sets(bench)
    expected = reference_separability(lm, bench, sets)
    try:
        got = {layer: float(separability[layer]) for layer in range(n)}
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, "every value should be one number, the AUROC", strict)
    if all(abs(got[k] - expected[k]) <= 0.01 for k in range(n)):
        best = max(expected, key=expected.get)
        return verdict(
            True,
            f"never-seen and forget faces are best told apart at layer {best} "
            f"(AUROC {expected[best]:.2f}), worst at layer {min(expected, key=expected.get)}",
            strict,
        )
    if all(abs(got[k] - (1 - expected[k])) <= 0.01 for k in range(n)):
        return verdict(
            False,
            "every value is 1 - AUROC: the never-seen (target) scores are the positives, "
            "`auroc(target_scores, forget_scores)`",
            strict,
        )
    on_fit = reference_separability(lm, bench, sets, held_out=False)
    if all(abs(got[k] - on_fit[k]) <= 0.01 for k in range(n)):
        return verdict(
            False,
            "you measured on the examples v was fitted on, which flatters it: use "
            "sets['target_held_out'] and sets['forget_held_out']",
            strict,
        )
    wrong = [k for k in range(n) if abs(got[k] - expected[k]) > 0.01]
    k = wrong[0]
    return verdict(
        False,
        f"layers {wrong} differ; at layer {k} expected about {expected[k]:.3f}, got "
        f"{got[k]:.3f}. Project on each layer's own v, last prompt token, held-out sets",
        strict,
    )


def reference_steering_effect(
    lm: LoadedModel,
    bench: Benchmark,
    sets: dict[str, list[QAItem]],
    layer: int,
    alpha: float,
    *,
    n_examples: int = 8,
    directions: dict[int, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Steering with v[layer] at strength `alpha`, last prompt token, ungated:
    {"forget_refusal": share of refusals on the first `n_examples` held-out forget questions,
    "retain_recall": share of true facts on as many held-out retain questions}."""
    directions = directions or reference_directions(lm, bench, sets)
    probe = SteeringProbe(
        directions[layer].float(), layer, lm.fingerprint(), positions="last", alpha=alpha
    )
    with probe.apply(lm, gated=False):
        refusal, recall, _ = refusal_and_recall(
            lm, bench, sets["forget_held_out"][:n_examples], sets["retain_held_out"][:n_examples]
        )
    return {"forget_refusal": refusal, "retain_recall": recall}


def check_steering_effect(
    steering_effect: Callable[[int, float], dict] | None,
    lm: LoadedModel,
    bench: Benchmark,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    n_examples: int = 8,
    settings: Sequence[tuple[int, float]] | None = None,
    strict: bool = False,
) -> Feedback:
    """Does `steering_effect(layer, alpha)` measure what `reference_steering_effect` does?

    It is called at `settings` ((layer, alpha) pairs; default: the top layer at alpha 2 and
    layer 1 at alpha 2) and must match each rate within one question's worth (1/`n_examples`).
    """
    if steering_effect is None:
        return verdict(False, "`steering_effect` is still None: write the function", strict)
    sets = sets or example_sets(bench)
    settings = settings or ((lm.num_layers - 1, 2.0), (1, 2.0))
    directions = reference_directions(lm, bench, sets)
    keys = ("forget_refusal", "retain_recall")
    report = []
    for layer, alpha in settings:
        try:
            got = steering_effect(layer, alpha)
        except Exception as exc:  # the student's code: report, never crash the notebook
            return verdict(
                False,
                f"steering_effect({layer}, {alpha}) raised {type(exc).__name__}: {exc}",
                strict,
            )
        if got is None:
            return verdict(
                False,
                "steering_effect returns None: return {'forget_refusal': ..., "
                "'retain_recall': ...}",
                strict,
            )
        if not isinstance(got, dict) or any(k not in got for k in keys):
            return verdict(
                False, f"steering_effect should return a dict with keys {list(keys)}", strict
            )
        expected = reference_steering_effect(
            lm, bench, sets, layer, alpha, n_examples=n_examples, directions=directions
        )
        for key in keys:
            if abs(float(got[key]) - expected[key]) > 1 / n_examples + 1e-9:
                return verdict(
                    False,
                    f"at layer {layer}, alpha {alpha}: {key} should be about "
                    f"{expected[key]:.2f}, got {float(got[key]):.2f}. Steer at the last prompt "
                    f"token, ungated, on the first {n_examples} held-out questions",
                    strict,
                )
        report.append(
            f"layer {layer}, alpha {alpha:g}: forget refusal {expected['forget_refusal']:.0%}, "
            f"retain recall {expected['retain_recall']:.0%}"
        )
    return verdict(True, "; ".join(report), strict)
