"""Exercise 1: find the knowledge-absence direction yourself, compare it with the
library's, and steer a forget person into a refusal with it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from asru_lab.data.schema import Benchmark, QAItem, contains_value
from asru_lab.evaluation.judge import is_refusal
from asru_lab.generation import generate
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.workshop.common import (
    Feedback,
    as_vector,
    cosine_of,
    example_sets,
    reference_directions,
    verdict,
)


def check_direction(
    direction,
    lm: LoadedModel,
    bench: Benchmark,
    layer: int,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    strict: bool = False,
) -> Feedback:
    """Is `direction` the knowledge-absence direction at `layer`?

    Compared with the library's `v = mean(target) - mean(forget)` on the same `sets` (default
    `example_sets(bench)`), last prompt token, layer output: correct when the cosine is at least
    0.999 and the length within 1 %. The hints name the usual slips: the sign, a normalised or
    summed vector, another layer, another token position.
    """
    if direction is None:
        return verdict(
            False,
            "`direction` is still None. Capture the target and forget sets at layer "
            f"{layer} with `capture(model, bench, sets[...], layers=[{layer}], keep_raw=True)`, "
            "then take `mean(target) - mean(forget)` of the `.raw[layer]` rows",
            strict,
        )
    sets = sets or example_sets(bench)
    vector, problem = as_vector(direction, lm.hidden_size, "direction")
    if problem:
        return verdict(False, problem, strict)
    references = reference_directions(lm, bench, sets)
    reference = references[layer % lm.num_layers]
    cosine = cosine_of(vector, reference)
    ratio = float(vector.norm() / reference.norm())
    if cosine > 0.999 and abs(ratio - 1) < 0.01:
        return verdict(
            True,
            f"cosine with the library's v is {cosine:.4f} and |v| = {float(vector.norm()):.1f}",
            strict,
        )
    if cosine < -0.999:
        return verdict(
            False,
            "your vector points the opposite way. v goes from the forget set towards the "
            "never-seen faces: mean(target) - mean(forget)",
            strict,
        )
    if cosine > 0.999:
        if abs(float(vector.norm()) - 1) < 1e-3:
            why = "it has length 1: the paper's v is not normalised, keep the raw difference"
        elif abs(ratio - len(sets["target"])) < 0.5:
            why = "it is as long as a sum over the examples: take means, not sums"
        else:
            why = "check that both sides are means over their examples"
        return verdict(False, f"right direction, wrong length (x{ratio:.2f}): {why}", strict)
    for other, candidate in references.items():
        if other != layer % lm.num_layers and cosine_of(vector, candidate) > 0.999:
            return verdict(
                False,
                f"this is layer {other}'s direction; the exercise asks for layer {layer}",
                strict,
            )
    return verdict(
        False,
        f"cosine with the library's v is only {cosine:.3f}. Read the residual stream after layer "
        f"{layer} (site 'output') at the last prompt token (position='last'), on sets['target'] "
        "and sets['forget']",
        strict,
    )


def check_cosine(cosine, a, b, *, strict: bool = False) -> Feedback:
    """Is `cosine` the cosine similarity of vectors `a` and `b` (within 0.001)?"""
    if a is None or b is None:
        return verdict(False, "finish the direction first (it is still None)", strict)
    if cosine is None:
        return verdict(
            False,
            "`cosine` is still None: a·b / (|a| |b|), e.g. "
            "`torch.nn.functional.cosine_similarity(a, b, dim=0)`",
            strict,
        )
    try:
        value = float(cosine)
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"`cosine` should be a number, got {type(cosine).__name__}", strict)
    a = torch.as_tensor(a).double().flatten()
    b = torch.as_tensor(b).double().flatten()
    expected = cosine_of(a, b)
    if abs(value - expected) < 1e-3:
        return verdict(
            True, f"cosine {expected:.3f} (1: the same direction, 0: unrelated ones)", strict
        )
    if not -1 - 1e-6 <= value <= 1 + 1e-6:
        if abs(value - float(a @ b)) < 1e-3 * max(1.0, abs(float(a @ b))):
            return verdict(False, "that is the dot product: divide by both norms", strict)
        return verdict(False, f"a cosine lies in [-1, 1], got {value:.3f}", strict)
    return verdict(False, f"expected about {expected:.3f}, got {value:.3f}", strict)


def refusal_and_recall(
    lm: LoadedModel, bench: Benchmark, forget: Sequence[QAItem], retain: Sequence[QAItem]
) -> tuple[float, float, list[str]]:
    """(forget refusal rate, retain recall, forget answers) of greedy answers."""
    items = [*forget, *retain]
    answers = generate(
        lm, [bench.load_image(i.image) for i in items], [i.question for i in items], progress=False
    )
    f_answers, r_answers = answers[: len(forget)], answers[len(forget) :]
    refusal = sum(is_refusal(a) for a in f_answers) / len(forget)
    recall = sum(contains_value(a, i.value) for i, a in zip(retain, r_answers, strict=True))
    return refusal, recall / len(retain), f_answers


def check_steering(
    probe,
    lm: LoadedModel,
    bench: Benchmark,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    n_examples: int = 8,
    min_refusal: float = 0.75,
    strict: bool = False,
) -> Feedback:
    """Does steering with `probe` (a `SteeringProbe`, applied ungated) make forget people refuse?

    Greedy answers to `n_examples` held-out forget questions must be refusals at least
    `min_refusal` of the time. The message also reports retain recall under the same push,
    which the next exercise is about.
    """
    if probe is None:
        return verdict(
            False,
            "`probe` is still None. Build `SteeringProbe(direction, LAYER, model.fingerprint(), "
            "positions='last', alpha=ALPHA)`",
            strict,
        )
    if not isinstance(probe, SteeringProbe):
        return verdict(
            False, f"`probe` should be a SteeringProbe, got a {type(probe).__name__}", strict
        )
    sets = sets or example_sets(bench)
    forget = sets["forget_held_out"][:n_examples]
    retain = sets["retain_held_out"][:n_examples]
    with probe.apply(lm, gated=False):
        refusal, recall, answers = refusal_and_recall(lm, bench, forget, retain)
    example = f'e.g. "{forget[0].question}" -> "{answers[0]}"'
    if refusal >= min_refusal:
        return verdict(
            True,
            f"{refusal:.0%} of forget answers are refusals ({example}). Retain recall under the "
            f"same push: {recall:.0%}",
            strict,
        )
    hint = "push harder: raise alpha (try 2, 3, 4)"
    if cosine_of(probe.direction, reference_directions(lm, bench, sets)[probe.layer]) < 0:
        hint = "the probe's direction points away from the never-seen faces: check its sign"
    return verdict(
        False,
        f"only {refusal:.0%} of forget answers are refusals ({example}); {hint}",
        strict,
    )
