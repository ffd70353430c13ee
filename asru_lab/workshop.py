"""Checkers for the teaching workshop (`notebooks/workshop/`): each compares a student's answer
with the library's own computation and says, in a sentence, what is right or what to try next.

Every checker returns a `Feedback` that displays as its message: "correct ✓ — ..." or
"not yet — hint: ...". A missing answer (None, or a stub that returns nothing) is never an
error, only a hint, so the exercise notebooks run from top to bottom before anyone has written
a line. With `strict=True` (the solutions notebooks) a wrong or missing answer raises
`WorkshopCheckError` instead, so that running the solutions tests them.

The exercises, in the paper's words:

1. the **knowledge-absence direction** `v = mean h_L(target) - mean h_L(forget)` at the last
   prompt token, computed by hand (`check_direction`), compared with the library's
   (`check_cosine`) and used to steer a forget person into a refusal (`check_steering`);
2. the same at other layers: held-out **separability** (AUROC) of never-seen vs forget faces
   along v (`check_separability`) and the **steering effect** on forget and retain prompts
   (`check_steering_effect`);
3. a stage 2 **reward** with TRL's signature, scored on canonical completions
   (`canonical_completions`, `score_completions`, `check_reward`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from asru_lab.capture import Capture, capture
from asru_lab.data.schema import Benchmark, QAItem, contains_value, stratified_sample
from asru_lab.directions import auroc, knowledge_absence_direction
from asru_lab.evaluation.judge import is_refusal
from asru_lab.generation import generate
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe

SET_NAMES = ("forget", "retain", "target")
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


def _verdict(passed: bool, message: str, strict: bool) -> Feedback:
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
        pool = [i for i in bench.split(split, "qa") if i.image]
        drawn = stratified_sample(pool, 2 * n_examples, rng)
        rng.shuffle(drawn)
        sets[name], sets[f"{name}_held_out"] = drawn[:n_examples], drawn[n_examples:]
    return sets


def _captures(
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
    fit = _captures(lm, bench, sets, ("target", "forget"))
    return knowledge_absence_direction(fit["target"], fit["forget"])


def _as_vector(answer, hidden: int, name: str) -> tuple[torch.Tensor | None, str | None]:
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


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


# --- exercise 1: find the direction yourself -----------------------------------------------------


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
        return _verdict(
            False,
            "`direction` is still None. Capture the target and forget sets at layer "
            f"{layer} with `capture(model, bench, sets[...], layers=[{layer}], keep_raw=True)`, "
            "then take `mean(target) - mean(forget)` of the `.raw[layer]` rows",
            strict,
        )
    sets = sets or example_sets(bench)
    vector, problem = _as_vector(direction, lm.hidden_size, "direction")
    if problem:
        return _verdict(False, problem, strict)
    references = reference_directions(lm, bench, sets)
    reference = references[layer % lm.num_layers]
    cosine = _cosine(vector, reference)
    ratio = float(vector.norm() / reference.norm())
    if cosine > 0.999 and abs(ratio - 1) < 0.01:
        return _verdict(
            True,
            f"cosine with the library's v is {cosine:.4f} and |v| = {float(vector.norm()):.1f}",
            strict,
        )
    if cosine < -0.999:
        return _verdict(
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
        return _verdict(False, f"right direction, wrong length (x{ratio:.2f}): {why}", strict)
    for other, candidate in references.items():
        if other != layer % lm.num_layers and _cosine(vector, candidate) > 0.999:
            return _verdict(
                False,
                f"this is layer {other}'s direction; the exercise asks for layer {layer}",
                strict,
            )
    return _verdict(
        False,
        f"cosine with the library's v is only {cosine:.3f}. Read the residual stream after layer "
        f"{layer} (site 'output') at the last prompt token (position='last'), on sets['target'] "
        "and sets['forget']",
        strict,
    )


def check_cosine(cosine, a, b, *, strict: bool = False) -> Feedback:
    """Is `cosine` the cosine similarity of vectors `a` and `b` (within 0.001)?"""
    if a is None or b is None:
        return _verdict(False, "finish the direction first (it is still None)", strict)
    if cosine is None:
        return _verdict(
            False,
            "`cosine` is still None: a·b / (|a| |b|), e.g. "
            "`torch.nn.functional.cosine_similarity(a, b, dim=0)`",
            strict,
        )
    try:
        value = float(cosine)
    except (TypeError, ValueError, RuntimeError):
        return _verdict(False, f"`cosine` should be a number, got {type(cosine).__name__}", strict)
    a = torch.as_tensor(a).double().flatten()
    b = torch.as_tensor(b).double().flatten()
    expected = _cosine(a, b)
    if abs(value - expected) < 1e-3:
        return _verdict(
            True, f"cosine {expected:.3f} (1: the same direction, 0: unrelated ones)", strict
        )
    if not -1 - 1e-6 <= value <= 1 + 1e-6:
        if abs(value - float(a @ b)) < 1e-3 * max(1.0, abs(float(a @ b))):
            return _verdict(False, "that is the dot product: divide by both norms", strict)
        return _verdict(False, f"a cosine lies in [-1, 1], got {value:.3f}", strict)
    return _verdict(False, f"expected about {expected:.3f}, got {value:.3f}", strict)


def _refusal_and_recall(
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
        return _verdict(
            False,
            "`probe` is still None. Build `SteeringProbe(direction, LAYER, model.fingerprint(), "
            "positions='last', alpha=ALPHA)`",
            strict,
        )
    if not isinstance(probe, SteeringProbe):
        return _verdict(
            False, f"`probe` should be a SteeringProbe, got a {type(probe).__name__}", strict
        )
    sets = sets or example_sets(bench)
    forget = sets["forget_held_out"][:n_examples]
    retain = sets["retain_held_out"][:n_examples]
    with probe.apply(lm, gated=False):
        refusal, recall, answers = _refusal_and_recall(lm, bench, forget, retain)
    example = f'e.g. "{forget[0].question}" -> "{answers[0]}"'
    if refusal >= min_refusal:
        return _verdict(
            True,
            f"{refusal:.0%} of forget answers are refusals ({example}). Retain recall under the "
            f"same push: {recall:.0%}",
            strict,
        )
    hint = "push harder: raise alpha (try 2, 3, 4)"
    if _cosine(probe.direction, reference_directions(lm, bench, sets)[probe.layer]) < 0:
        hint = "the probe's direction points away from the never-seen faces: check its sign"
    return _verdict(
        False,
        f"only {refusal:.0%} of forget answers are refusals ({example}); {hint}",
        strict,
    )


# --- exercise 2: try a layer ----------------------------------------------------------------------


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
    caps = _captures(lm, bench, sets, names, directions=directions)
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
        return _verdict(
            False,
            "`separability` is still None: a dict {layer: AUROC} for layers 0.."
            f"{n - 1}. Project held-out target and forget activations on v[layer] "
            "(`capture(..., directions=v)` then `.projections[layer][:, 0]`) and call "
            "`auroc(target_scores, forget_scores)`",
            strict,
        )
    if not isinstance(separability, dict):
        return _verdict(
            False, f"`separability` should be a dict, got a {type(separability).__name__}", strict
        )
    missing = [layer for layer in range(n) if layer not in separability]
    if missing:
        return _verdict(False, f"layers {missing} are missing: measure every layer", strict)
    sets = sets or example_sets(bench)
    expected = reference_separability(lm, bench, sets)
    try:
        got = {layer: float(separability[layer]) for layer in range(n)}
    except (TypeError, ValueError, RuntimeError):
        return _verdict(False, "every value should be one number, the AUROC", strict)
    if all(abs(got[k] - expected[k]) <= 0.01 for k in range(n)):
        best = max(expected, key=expected.get)
        return _verdict(
            True,
            f"never-seen and forget faces are best told apart at layer {best} "
            f"(AUROC {expected[best]:.2f}), worst at layer {min(expected, key=expected.get)}",
            strict,
        )
    if all(abs(got[k] - (1 - expected[k])) <= 0.01 for k in range(n)):
        return _verdict(
            False,
            "every value is 1 - AUROC: the never-seen (target) scores are the positives, "
            "`auroc(target_scores, forget_scores)`",
            strict,
        )
    on_fit = reference_separability(lm, bench, sets, held_out=False)
    if all(abs(got[k] - on_fit[k]) <= 0.01 for k in range(n)):
        return _verdict(
            False,
            "you measured on the examples v was fitted on, which flatters it: use "
            "sets['target_held_out'] and sets['forget_held_out']",
            strict,
        )
    wrong = [k for k in range(n) if abs(got[k] - expected[k]) > 0.01]
    k = wrong[0]
    return _verdict(
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
        refusal, recall, _ = _refusal_and_recall(
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
        return _verdict(False, "`steering_effect` is still None: write the function", strict)
    sets = sets or example_sets(bench)
    settings = settings or ((lm.num_layers - 1, 2.0), (1, 2.0))
    directions = reference_directions(lm, bench, sets)
    keys = ("forget_refusal", "retain_recall")
    report = []
    for layer, alpha in settings:
        try:
            got = steering_effect(layer, alpha)
        except Exception as exc:  # the student's code: report, never crash the notebook
            return _verdict(
                False,
                f"steering_effect({layer}, {alpha}) raised {type(exc).__name__}: {exc}",
                strict,
            )
        if got is None:
            return _verdict(
                False,
                "steering_effect returns None: return {'forget_refusal': ..., "
                "'retain_recall': ...}",
                strict,
            )
        if not isinstance(got, dict) or any(k not in got for k in keys):
            return _verdict(
                False, f"steering_effect should return a dict with keys {list(keys)}", strict
            )
        expected = reference_steering_effect(
            lm, bench, sets, layer, alpha, n_examples=n_examples, directions=directions
        )
        for key in keys:
            if abs(float(got[key]) - expected[key]) > 1 / n_examples + 1e-9:
                return _verdict(
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
    return _verdict(True, "; ".join(report), strict)


# --- exercise 3: write a reward ------------------------------------------------------------------


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
        return _verdict(
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
        return _verdict(False, hint, strict)
    if raw is None:
        return _verdict(False, "your reward returns None: return a list of floats", strict)
    try:
        scores = [float(s) for s in raw]
    except (TypeError, ValueError):
        return _verdict(False, "return a list with one number per completion", strict)
    if len(scores) != len(rows):
        return _verdict(
            False,
            f"got {len(scores)} scores for {len(rows)} completions: one per completion",
            strict,
        )
    if any(math.isnan(s) for s in scores):
        return _verdict(False, "some scores are NaN", strict)
    by_item: dict[int, dict[str, float]] = {}
    for row, score in zip(rows, scores, strict=True):
        by_item.setdefault(row["item"], {"split": row["split"]})[row["kind"]] = score
    if len(set(scores)) == 1:
        return _verdict(
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
                return _verdict(
                    False,
                    f"on a {split} question ({question!r}) the {better.replace('_', ' ')} "
                    f"scores {kinds[better]:g} but the {worse.replace('_', ' ')} scores "
                    f"{kinds[worse]:g}; it should score higher. {_REWARD_HINTS[(better, worse)]}",
                    strict,
                )
    return _verdict(
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
