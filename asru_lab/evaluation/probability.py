"""Probability metrics (open-unlearning's definitions): answer probability, truth ratio and
forget quality.

All three score teacher-forced answers, not generations. The prompt is the item's question as
the benchmark phrases it, with its image, in the model's chat template (one turn); an answer's
tokens are those after the assistant turn opens, the end-of-turn token not counted.

- **answer probability** of an answer: `exp(-mean token NLL)`, the per-token geometric mean of
  its probability (open-unlearning `probability`). A split's `answer_prob` is its mean over the
  split's generation items, on their reference answers.
- **truth ratio** of an item: `exp(-mean_k NLL(perturbed_k)) / exp(-NLL(paraphrased))`, NLLs
  per token: how likely the wrong answers are relative to a rewording of the right one
  (open-unlearning `truth_ratio`; `1e-10` added to the denominator as there). Items need a
  `paraphrased_answer` and `perturbed_answers`. A split's `truth_ratio` aggregates them as
  open-unlearning does: on the forget people (`forget`, `test`) `mean(min(tr, 1/tr))`
  ("closer to 1 is better": a model that forgot finds right and wrong alike), elsewhere
  `mean(max(0, 1 - tr))` ("true is better").
- **forget quality**: the p-value of a two-sample Kolmogorov–Smirnov test
  (`scipy.stats.ks_2samp`, its default exact/asymptotic choice) between the evaluated model's
  per-item forget truth ratios and a reference model's on the same items — the retrain oracle
  (a model never trained on the forget people) or one the user gives. 1.0: indistinguishable
  from the reference; tiny: the forget people are still told apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.generation import encode_items
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import Example, answer_tokens

# The splits about the forget people, aggregated "closer to 1 is better".
FORGET_SPLITS = ("forget", "test")
TRUTH_RATIO_EPS = 1e-10
T = TypeVar("T")


class ProbabilityError(AsruLabError, ValueError):
    """A probability metric cannot be computed from what it was given."""


class AnswerTokenStats(NamedTuple):
    """Per answer token, float64 `[n_tokens]` each (nats): `logprob`, log p(x_t) of the
    answer's token; `mean` and `std`, the mean and standard deviation of log p(v) with v drawn
    from the model's own next-token distribution p at that position: mu_t = sum_v p(v) log p(v)
    (minus the entropy), sigma_t^2 = sum_v p(v) log p(v)^2 - mu_t^2."""

    logprob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def next_token_stats(logits: torch.Tensor, targets: torch.Tensor) -> AnswerTokenStats:
    """`AnswerTokenStats` of the tokens `targets` (`[n]`) under next-token `logits`
    (`[n, vocab]`), in float64."""
    logits = logits.double()
    logp = logits - logits.logsumexp(-1, keepdim=True)
    p = logp.exp()
    mean = (p * logp).sum(-1)
    # sum p (log p - mu)^2: sigma^2 without the cancellation of sum p log p^2 - mu^2
    std = (p * (logp - mean.unsqueeze(-1)).square()).sum(-1).sqrt()
    return AnswerTokenStats(logp.gather(-1, targets.view(-1, 1)).squeeze(-1), mean, std)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    picked = logits.gather(-1, targets.view(-1, 1)) - logits.logsumexp(-1, keepdim=True)
    return picked.squeeze(-1)


@torch.no_grad()
def _teacher_forced(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    answers: Sequence[str],
    read: Callable[[torch.Tensor, torch.Tensor], T],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> list[T]:
    """Per item, `read(logits, targets)` of its answer's tokens (teacher-forced after the
    prompt), the end-of-turn token left out: one forward pass per batch."""
    examples = [Example(i.image, i.question, a) for i, a in zip(items, answers, strict=True)]
    tails, _ = answer_tokens(lm, examples)
    out: list[T] = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = range(start, min(len(items), start + batch_size))
        inputs = encode_items(lm, bench, [items[k] for k in chunk], [answers[k] for k in chunk])
        # answers sit at the end of each (left-padded) row: logits only for the positions that
        # predict them, and one row's log-softmax at a time (the full [batch, length, vocab]
        # logits in float64 would be gigabytes at a real vocabulary)
        keep = min(max(len(tails[k]) for k in chunk) + 1, inputs["input_ids"].shape[1])
        logits = lm.model(**inputs, logits_to_keep=keep).logits
        ids = inputs["input_ids"]
        for row, k in enumerate(chunk):
            n = len(tails[k])  # answer tokens + end of turn, at the end of the row
            # position t predicts token t + 1; an empty answer keeps its end of turn
            kept = slice(-n - 1, -2) if n > 1 else slice(-2, -1)
            out.append(read(logits[row, kept], ids[row, -n:][: max(n - 1, 1)]))
    return out


def answer_logprobs(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    answers: Sequence[str],
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "answer log-probs",
) -> list[torch.Tensor]:
    """Per item, float64 log-probabilities of its answer's tokens (teacher-forced after the
    prompt; the end-of-turn token is not counted)."""
    logps = _teacher_forced(
        lm,
        bench,
        items,
        answers,
        _token_logprobs,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return [lp.cpu() for lp in logps]


def answer_token_stats(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    answers: Sequence[str],
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "answer token stats",
) -> list[AnswerTokenStats]:
    """Per item, `AnswerTokenStats` of its answer's tokens: `answer_logprobs`' log-probs with
    the mean and standard deviation of the next-token distribution's log-probs at each, from
    the same forward pass (Min-K%++ needs them)."""
    stats = _teacher_forced(
        lm,
        bench,
        items,
        answers,
        next_token_stats,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return [AnswerTokenStats(*(t.cpu() for t in s)) for s in stats]


def item_probabilities(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "answer probabilities",
) -> list[dict]:
    """Per item: `answer_prob` (of its reference answer) and, for items that have a paraphrase
    and perturbed answers, `paraphrased_prob`, `perturbed_prob` and `truth_ratio` (None
    otherwise). Probabilities are per-token geometric means (module docstring)."""
    asked: list[QAItem] = []
    answers: list[str] = []
    for item in items:
        extra = [item.paraphrased_answer, *item.perturbed_answers] if item.has_truth_ratio else []
        for answer in (item.answer, *extra):
            asked.append(item)
            answers.append(answer)
    was_training = lm.model.training
    lm.model.eval()
    try:
        logps = answer_logprobs(
            lm, bench, asked, answers, batch_size=batch_size, progress=progress, desc=desc
        )
    finally:
        lm.model.train(was_training)
    mean_nll = iter([-float(lp.mean()) if lp.numel() else math.inf for lp in logps])
    out = []
    for item in items:
        row = {
            "answer_prob": math.exp(-next(mean_nll)),
            "paraphrased_prob": None,
            "perturbed_prob": None,
            "truth_ratio": None,
        }
        if item.has_truth_ratio:
            paraphrased = next(mean_nll)
            perturbed = [next(mean_nll) for _ in item.perturbed_answers]
            row["paraphrased_prob"] = math.exp(-paraphrased)
            row["perturbed_prob"] = math.exp(-sum(perturbed) / len(perturbed))
            row["truth_ratio"] = row["perturbed_prob"] / (row["paraphrased_prob"] + TRUTH_RATIO_EPS)
        out.append(row)
    return out


def aggregate_truth_ratio(split: str, ratios: Sequence[float]) -> float:
    """A split's truth ratio from its items' (module docstring: which aggregate, and why)."""
    if split in FORGET_SPLITS:
        return sum(min(r, 1 / (r + TRUTH_RATIO_EPS)) for r in ratios) / len(ratios)
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios)


def split_metrics(split: str, rows: Sequence[dict]) -> dict:
    """`answer_prob` and (when any item has one) `truth_ratio` of a split, from the per-item
    rows `item_probabilities` returned; {} when there are none."""
    if not rows:
        return {}
    out = {"answer_prob": sum(r["answer_prob"] for r in rows) / len(rows)}
    ratios = [r["truth_ratio"] for r in rows if r["truth_ratio"] is not None]
    if ratios:
        out["truth_ratio"] = aggregate_truth_ratio(split, ratios)
    return out


def forget_quality(truth_ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """The KS-test p-value between two samples of forget truth ratios (module docstring)."""
    from scipy.stats import ks_2samp  # scipy is imported only when this metric is asked for

    for name, sample in (("evaluated", truth_ratios), ("reference", reference_ratios)):
        if len(sample) == 0:
            raise ProbabilityError(
                f"forget quality needs per-item forget truth ratios; the {name} model has none "
                "(the forget items lack paraphrased_answer / perturbed_answers)"
            )
    return float(ks_2samp(list(truth_ratios), list(reference_ratios)).pvalue)


def require_truth_ratio(bench: Benchmark, items: Sequence[QAItem], split: str = "forget") -> None:
    """ProbabilityError unless some of `items` (of `split`) can give a truth ratio."""
    if not any(i.has_truth_ratio for i in items):
        raise ProbabilityError(
            f"forget quality and truth ratio need paraphrased and perturbed answers, and no "
            f"{split} generation item of {bench.name} has them (QAItem.paraphrased_answer and "
            ".perturbed_answers; in a user dataset the qa.jsonl fields `paraphrased_answer` "
            "and `perturbed_answers`); answer probability needs neither"
        )
