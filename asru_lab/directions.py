"""Directions in the residual stream and how well they separate sets of examples.

- `knowledge_absence_direction`: mean(target) - mean(forget) per layer, the paper's v (where
  to push): target = never-seen faces on which the model actually refuses.
- `memorisation_direction`: mean(forget) - mean(retain) per layer, which tells the people to
  forget from those to keep (forget and retain people were learnt alike, so v alone moves both).
- `fit_gate`: a class-balanced, L2-regularised logistic probe on forget vs retain activations
  with a fitted threshold: *when* to push.
- `auroc`, `layer_cosines`, `logit_lens`: the evidence for choosing a layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from asru_lab.capture import Capture
from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem
from asru_lab.evaluation.harness import EvalConfig, answer_items
from asru_lab.evaluation.judge import ClosedWorldJudge, Judge
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import MemorisationGate

REFUSALS = ("rigid_refusal", "contextual_refusal")


def combined_mean(captures: Sequence[Capture], layer: int) -> torch.Tensor:
    """float64 mean at `layer` over several captures of one set (e.g. its two halves)."""
    count = sum(c.count for c in captures)
    if count == 0:
        raise BenchmarkError("cannot take the mean of an empty set of activations")
    return sum(c.sum[c.index(layer)] for c in captures) / count


def mean_difference(
    a: Capture | Sequence[Capture], b: Capture | Sequence[Capture]
) -> dict[int, torch.Tensor]:
    """Per layer, float64 mean(a) - mean(b) (either side may be a list of captures of one set)."""
    a = [a] if isinstance(a, Capture) else list(a)
    b = [b] if isinstance(b, Capture) else list(b)
    layers = [layer for layer in a[0].layers if layer in b[0].layers]
    return {layer: combined_mean(a, layer) - combined_mean(b, layer) for layer in layers}


def knowledge_absence_direction(target, forget) -> dict[int, torch.Tensor]:
    """v = mean(target) - mean(forget) per layer (unnormalised, float64)."""
    return mean_difference(target, forget)


def memorisation_direction(forget, retain) -> dict[int, torch.Tensor]:
    """mean(forget) - mean(retain) per layer (unnormalised, float64)."""
    return mean_difference(forget, retain)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of scores: P(positive > negative), ties counted half."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    scores = torch.cat([pos, neg])
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Average the ranks of tied scores.
    uniq, inverse = torch.unique(scores, return_inverse=True)
    if len(uniq) < len(scores):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.bincount(inverse, minlength=len(uniq)).double()
        ranks = (sums / counts)[inverse]
    rank_sum = ranks[: len(pos)].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def layer_cosines(directions: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """`[n, n]` cosine similarity between the directions of every pair of layers (sorted)."""
    stacked = torch.stack([directions[k].double() for k in sorted(directions)])
    unit = stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


@torch.no_grad()
def logit_lens(lm: LoadedModel, direction: torch.Tensor, k: int = 10) -> list[tuple[str, float]]:
    """The `k` tokens the direction promotes most: final norm + lm head applied to it.

    Returns (token, logit) pairs, highest first.
    """
    head = lm.adapter.lm_head(lm.model)
    v = direction.to(device=lm.device, dtype=head.weight.dtype).view(1, 1, -1)
    logits = lm.adapter.logits_from_hidden(lm.model, v).view(-1).float()
    logits = logits[: lm.token_rows]  # padded vocabulary rows are no tokens
    top = torch.topk(logits, min(k, logits.numel()))
    tokens = lm.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    text = [lm.tokenizer.convert_tokens_to_string([t]) for t in tokens]
    return [(t, round(float(s), 4)) for t, s in zip(text, top.values.tolist(), strict=True)]


def _logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, steps: int
) -> tuple[torch.Tensor, float]:
    """Class-balanced L2 logistic regression on standardised float64 features."""
    mu = x.mean(0)
    sd = x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    n_pos = float(y.sum())
    weights = torch.where(y > 0, 0.5 / n_pos, 0.5 / (len(y) - n_pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = z @ w + b
        loss = (weights * torch.nn.functional.softplus(-(2 * y - 1) * logits)).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, float(b.detach() - (mu * w_raw).sum())


def threshold_at_fpr(p_pos: torch.Tensor, p_neg: torch.Tensor, max_fpr: float) -> float:
    """The lowest probability threshold whose false-positive rate on `p_neg` is <= `max_fpr`
    (so the highest true-positive rate on `p_pos` under that constraint)."""
    candidates = torch.unique(torch.cat([p_pos, p_neg]).double())
    fpr = (p_neg.double().view(1, -1) >= candidates.view(-1, 1)).double().mean(1)
    allowed = candidates[fpr <= max_fpr]
    if len(allowed):
        return float(allowed.min())
    # fire on none (a probability of exactly 1 aside: a threshold must stay in [0, 1])
    return min(float(candidates.max()) + 1e-6, 1.0)


def fit_gate(
    forget: torch.Tensor,
    retain: torch.Tensor,
    forget_holdout: torch.Tensor,
    retain_holdout: torch.Tensor,
    *,
    max_fpr: Sequence[float] = (0.01,),
    l2_grid: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5),
    steps: int = 200,
) -> tuple[MemorisationGate, dict]:
    """Fit the memorisation gate on `[n, tokens, hidden]` forget (1) vs retain (0) activations.

    The L2 strength is the one with the best held-out true-positive rate at the first level
    of `max_fpr` (ties: the best AUROC). For each level in `max_fpr`, the
    threshold is the lowest whose held-out false-positive rate (retain rows it would steer) is
    at most that level; the gate gets the first. Returns the gate and its held-out statistics
    (`thresholds[level] = {threshold, true_positive_rate, false_positive_rate}`).
    """
    if min(len(forget), len(retain), len(forget_holdout), len(retain_holdout)) == 0:
        raise BenchmarkError("the memorisation gate needs forget and retain examples")
    shape = forget.shape[1:]
    x = torch.cat([forget, retain]).flatten(1).double()
    y = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))]).double()
    best = None
    for l2 in l2_grid:
        w, b = _logistic(x, y, l2, steps)
        gate = MemorisationGate(w.float().view(shape), b, 0.5)
        p_pos, p_neg = gate.probability(forget_holdout), gate.probability(retain_holdout)
        t = threshold_at_fpr(p_pos, p_neg, max_fpr[0])
        score = (float((p_pos >= t).double().mean()), auroc(p_pos, p_neg))
        if best is None or score > best[0]:
            best = (score, l2, gate, p_pos, p_neg)
    (_, score), l2, gate, p_pos, p_neg = best
    thresholds = {}
    for level in max_fpr:
        t = threshold_at_fpr(p_pos, p_neg, level)
        thresholds[str(level)] = {
            "threshold": t,
            "true_positive_rate": float((p_pos >= t).float().mean()),
            "false_positive_rate": float((p_neg >= t).float().mean()),
        }
    gate.threshold = thresholds[str(max_fpr[0])]["threshold"]
    gate.method += f", L2 {l2:g}"
    return gate, {"l2": l2, "auroc": score, "tokens": gate.tokens, "thresholds": thresholds}


def refused_items(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    judge: Judge | None = None,
    batch_size: int = 32,
) -> tuple[list[QAItem], list[str]]:
    """The items the model answers with a refusal (rigid or contextual, per the judge).

    The paper's target set: never-seen faces on which the model does refuse. Returns the kept
    items and every answer (in input order).
    """
    judge = judge or ClosedWorldJudge(bench)
    config = EvalConfig(batch_size=batch_size, progress=False)
    answers = answer_items(lm, bench, list(items), config, desc="target set")
    judged = judge.judge(list(items), answers)
    kept = [i for i, j in zip(items, judged, strict=True) if j.category in REFUSALS]
    return kept, answers
