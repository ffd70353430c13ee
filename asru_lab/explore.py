"""What a notebook explorer asks: one question's answers and next-token distribution without
and with a probe (steered the way `SteeringProbe.apply` steers), and two models' answers to
the same questions side by side (`compare_models`: what a stage changed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from asru_lab.data.schema import Benchmark, QAItem, contains_value
from asru_lab.evaluation.judge import is_refusal
from asru_lab.generation import as_image, encode, generate
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe


def compare_answers(
    lm: LoadedModel,
    probe: SteeringProbe,
    image,
    question: str,
    *,
    layer: int | None = None,
    alpha: float | None = None,
    max_new_tokens: int = 32,
) -> tuple[str, str]:
    """(unsteered, steered) greedy answers to one question; `layer` moves the probe there
    (`SteeringProbe.at_layer`, ungated off its own layer), `alpha` overrides its strength."""
    if layer is not None and layer != probe.layer:
        probe = probe.at_layer(lm, layer)
    plain = generate(lm, image, question, max_new_tokens=max_new_tokens)
    with probe.apply(lm, alpha=alpha):
        steered = generate(lm, image, question, max_new_tokens=max_new_tokens)
    return plain, steered


def verdict(answer: str, item: QAItem) -> str:
    """What an answer does with the item's fact: "knows" (the fact is in it), "refuses" (a
    refusal) or "other" (a wrong answer, or anything else)."""
    if contains_value(answer, item.value):
        return "knows"
    return "refuses" if is_refusal(answer) else "other"


def compare_models(
    before: LoadedModel, after: LoadedModel, bench: Benchmark, items: Sequence[QAItem]
) -> list[dict]:
    """Greedy answers of two models to the same questions, one dict per item, in order:
    `split`, `person` (name), `question`, `fact`, `before` and `after` (the answers), and
    `before_verdict` / `after_verdict` (`verdict`)."""
    images, questions = bench.images(items), [i.question for i in items]
    old = generate(before, images, questions) if items else []
    new = generate(after, images, questions) if items else []
    return [
        {
            "split": item.split,
            "person": bench.people[item.person_id].name,
            "question": item.question,
            "fact": item.value,
            "before": a,
            "after": b,
            "before_verdict": verdict(a, item),
            "after_verdict": verdict(b, item),
        }
        for item, a, b in zip(items, old, new, strict=True)
    ]


@dataclass(frozen=True)
class NextTokenComparison:
    """First-answer-token distributions without and with the probe, on the `top_k` tokens most
    likely under either: `tokens` decoded, `unsteered` / `steered` probabilities in [0, 1]."""

    tokens: list[str]
    unsteered: list[float]
    steered: list[float]
    layer: int
    alpha: float


@torch.no_grad()
def compare_next_token(
    lm: LoadedModel,
    probe: SteeringProbe,
    image,
    question: str,
    *,
    layer: int | None = None,
    alpha: float | None = None,
    top_k: int = 8,
) -> NextTokenComparison:
    """The next-token distribution at the first answer position, unsteered and steered the way
    `compare_answers` steers (same `layer` and `alpha` overrides, gate included)."""
    if layer is not None and layer != probe.layer:
        probe = probe.at_layer(lm, layer)
    batch = encode(lm, [as_image(image)], [question])
    plain = torch.softmax(lm.model(**batch, logits_to_keep=1).logits[0, -1].float(), -1)
    with probe.apply(lm, alpha=alpha):
        steered = torch.softmax(lm.model(**batch, logits_to_keep=1).logits[0, -1].float(), -1)
    # rank by the larger of the two, so that both distributions' leaders are shown
    real = torch.maximum(plain, steered)[: lm.token_rows]  # padded vocabulary rows: no tokens
    top = real.topk(min(top_k, real.numel())).indices.tolist()
    return NextTokenComparison(
        tokens=[lm.tokenizer.decode([t]) for t in top],
        unsteered=plain[top].tolist(),
        steered=steered[top].tolist(),
        layer=probe.layer,
        alpha=probe.alpha if alpha is None else float(alpha),
    )
