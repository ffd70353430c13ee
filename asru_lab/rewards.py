"""Rewards for stage 2 (GRPO): a registry of named reward functions with TRL's signature.

A reward is built for a benchmark (`build_rewards(names, bench)`) and called by TRL as
`f(completions, **columns) -> list[float]`, one float per completion. The columns come from
the stage 2 dataset (`asru_lab.stages.reinforce.boundary_dataset`): `split` ("forget" or "retain"),
`item` (the index of the question in `bench.items`), `value` (the true fact) and `answer`
(the reference answer). A completion is TRL's message list or a plain string.

Registered rewards:

- `asru_rule`: the public code's rule table (DESIGN §1), checked in column order:
  forget: true value in the answer 0.0, refusal 1.0, 0 < ROUGE-L < 0.4 0.5, otherwise 0.1;
  retain: true value 1.0, refusal 0.0, ROUGE-L > 0.6 0.5, otherwise 0.1.
- `contextual` (ours): the closed-world judge's category (`asru_lab.evaluation.judge`) scored by
  `CONTEXTUAL_TABLE`: on forget, contextual refusal > rigid refusal > hallucination > leak; on
  retain, correct answer > refusal > unverifiable answer > hallucination; degenerate text is
  penalised on both.
- parts to compose with weights: `leak` (forget: 1 if the true value is absent; retain: 1 if
  present), `refusal` (forget: 1 for a refusal; retain: 1 for anything else), `rouge` (retain:
  ROUGE-L to the reference; forget: 1 - ROUGE-L) and `length` (1 for 3 to `LENGTH_WORDS`
  words of non-degenerate text, falling linearly to 0 at twice that, 0 when degenerate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from asru_lab.data.schema import Benchmark, contains_value
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.judge import ClosedWorldJudge, degenerate_reason, is_refusal
from asru_lab.evaluation.metrics import rouge_l

RewardFunction = Callable[..., list[float]]
RewardFactory = Callable[[Benchmark], RewardFunction]
REWARDS: dict[str, RewardFactory] = {}
SPLITS = ("forget", "retain")
LENGTH_WORDS = 40
CONTEXTUAL_TABLE = {
    "forget": {
        "contextual_refusal": 1.0,
        "rigid_refusal": 0.5,
        "answer": 0.2,
        "hallucination": 0.1,
        "leak": 0.0,
        "degenerate": -0.5,
    },
    "retain": {
        "leak": 1.0,  # the judge's "leak" is the true value: a correct answer on retain
        "contextual_refusal": 0.2,
        "rigid_refusal": 0.2,
        "answer": 0.1,
        "hallucination": 0.0,
        "degenerate": -0.5,
    },
}


class RewardError(AsruLabError, ValueError):
    """A reward was asked for by a name that does not exist, or with bad inputs."""


def register(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator: add a reward factory (`bench -> reward function`) to the registry."""

    def add(factory: RewardFactory) -> RewardFactory:
        REWARDS[name] = factory
        return factory

    return add


def completion_text(completion) -> str:
    """The text of a TRL completion: a plain string or a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


def _check(split: Sequence[str], n: int) -> None:
    if len(split) != n:
        raise RewardError(f"got {n} completions but {len(split)} 'split' values")
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise RewardError(f"unknown split value(s) {bad} in the 'split' column; expected {SPLITS}")


def _per_completion(score: Callable[[str, str, int], float]) -> RewardFactory:
    """A factory for rewards scored from (text, split, index) of each completion."""

    def factory(bench: Benchmark) -> RewardFunction:
        def reward(completions, split, item, **_) -> list[float]:
            _check(split, len(completions))
            return [
                float(score(bench, completion_text(c), s, i))
                for c, s, i in zip(completions, split, item, strict=True)
            ]

        return reward

    return factory


def _rule(bench: Benchmark, text: str, split: str, index: int) -> float:
    item = bench.items[index]
    found = contains_value(text, item.value)
    refusal = is_refusal(text)
    rouge = rouge_l(text, item.answer)
    if split == "forget":
        return 0.0 if found else 1.0 if refusal else 0.5 if 0 < rouge < 0.4 else 0.1
    return 1.0 if found else 0.0 if refusal else 0.5 if rouge > 0.6 else 0.1


def _leak(bench: Benchmark, text: str, split: str, index: int) -> float:
    found = contains_value(text, bench.items[index].value)
    return float(found) if split == "retain" else float(not found)


def _refusal(bench: Benchmark, text: str, split: str, index: int) -> float:
    return float(is_refusal(text)) if split == "forget" else float(not is_refusal(text))


def _rouge(bench: Benchmark, text: str, split: str, index: int) -> float:
    score = rouge_l(text, bench.items[index].answer)
    return score if split == "retain" else 1.0 - score


def _length(bench: Benchmark, text: str, split: str, index: int) -> float:
    if degenerate_reason(text) is not None:
        return 0.0
    words = len(text.split())
    if words < 3:
        return 0.0
    return max(0.0, min(1.0, 2.0 - words / LENGTH_WORDS))


register("asru_rule")(_per_completion(_rule))
register("leak")(_per_completion(_leak))
register("refusal")(_per_completion(_refusal))
register("rouge")(_per_completion(_rouge))
register("length")(_per_completion(_length))


@register("contextual")
def _contextual(bench: Benchmark) -> RewardFunction:
    judge = ClosedWorldJudge(bench)

    def reward(completions, split, item, **_) -> list[float]:
        _check(split, len(completions))
        texts = [completion_text(c) for c in completions]
        verdicts = judge.judge([bench.items[i] for i in item], texts)
        scores = []
        for verdict, s in zip(verdicts, split, strict=True):
            value = CONTEXTUAL_TABLE[s][verdict.category]
            if verdict.category == "contextual_refusal":
                value *= verdict.contextual_refusal / 5  # 4/5 for a refusal naming only the photo
            scores.append(value)
        return scores

    return reward


def build_rewards(names: Sequence[str], bench: Benchmark) -> list[RewardFunction]:
    """The named rewards for `bench`, each with `__name__` set to its name (TRL logs
    `rewards/<name>/mean`); a clear error for an unknown name."""
    if not names:
        raise RewardError("no rewards named: give at least one of " + ", ".join(sorted(REWARDS)))
    functions = []
    for name in names:
        if name not in REWARDS:
            raise RewardError(
                f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}"
            )
        function = REWARDS[name](bench)
        function.__name__ = name
        functions.append(function)
    return functions
