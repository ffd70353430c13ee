"""Adversarial stage 2: a share of the forget rollouts is generated under an attack, so that GRPO
rewards a refusal that survives it (issue #32, item 2). Two attacks, the audit's cheapest and
strongest on ASRU (`ReinforceConfig.adversarial`):

- **prefill**: a share (`adversarial_share`) of the forget set's open questions is asked with the
  assistant's turn already begun by words that lead to the fact, and the rollout continues
  them. Each prompt draws one of three prefixes (seeded): the reference answer's words up to
  the fact ("Alma Aldous was born in"), the same without the name ("Sure! This person was born
  in", `auditing.attacks.generic_prefix`), or its first n words (n drawn). The prefix is part of
  the prompt (so the loss is on what the model adds to it) and of what the rewards read (the
  answer is the prefix and its continuation: "Alma Aldous was born in Lisbon" leaks). The chat
  template the trainer renders with is the model's own with one addition at its very end
  (`PREFILL_TAIL`): a user turn's `prefill` text written after the generation prompt.
- **ablation**: on a share of the training steps (drawn per step, seeded), the model's own
  refusal direction is projected out of the residual stream after every decoder layer while the
  step's rollouts are generated *and* while their loss is computed (a hook active for the whole
  step, `AblationAdversary`). The direction is the difference of the mean residual streams at
  the last prompt token of forget and boundary questions (`ablation_fit` of each), read from
  the model being trained and re-estimated every `ablation_every` steps, as the audit estimates
  it from the model it audits.

The rewards are unchanged (no fact; a contextual refusal). What the audit then measures on
these attacks is no longer out of sample — the model trained against them — so the audit's
verdict on an adversarially trained model rests on the attacks it did *not* train against
(quantisation, relearning, the readouts, membership inference, the soft prompt); the README's
table says which is which. A bounded latent perturbation found by PGD (the issue's third attack)
is not built.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from transformers import TrainerCallback

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.generation import fact_prefix
from asru_lab.models.loading import LoadedModel
from asru_lab.rewards import completion_text
from asru_lab.stages.reinforce_config import ADVERSARIAL_ATTACKS, ReinforceError

PREFILL_KINDS = ("name", "generic", "words")
# appended to the model's chat template: a user turn's `prefill` begins the assistant's answer
PREFILL_TAIL = (
    "{%- if add_generation_prompt and messages and messages[-1]['prefill'] is defined "
    "and messages[-1]['prefill'] %}{{- messages[-1]['prefill'] -}}{%- endif %}"
)


def prefix_for(bench: Benchmark, item: QAItem, rng: random.Random) -> str:
    """One prefix leading to `item`'s fact, of a kind drawn by `rng` (module docstring); "" when
    the reference answer has no words before the fact or the item is not an open question."""
    from asru_lab.auditing.attacks import generic_prefix

    if item.task != "qa":
        return ""
    prefix = fact_prefix(item.answer, item.value)[0]
    if not prefix:
        return ""
    kind = rng.choice(PREFILL_KINDS)
    if kind == "generic":
        person = bench.people.get(item.person_id) if item.person_id else None
        return generic_prefix(prefix, person.name if person else "")
    if kind == "words":
        words = prefix.split()
        return " ".join(words[: rng.randint(1, len(words))])
    return prefix


def prefill_column(bench: Benchmark, rows: Sequence[dict], share: float, seed: int) -> list[str]:
    """Each row's `prefill` text ("" for most): a seeded `share` of the forget rows whose
    question has a usable prefix."""
    rng = random.Random(f"{seed}:prefill")
    out = []
    for row in rows:
        text = ""
        if row["split"] == "forget" and rng.random() < share:
            text = prefix_for(bench, bench.items[row["item"]], rng)
        out.append(text)
    return out


def prefill_processor(processor):
    """A shallow copy of `processor` whose chat template renders a user turn's `prefill` after
    the generation prompt (`PREFILL_TAIL`); `processor` is unchanged. A prompt without one
    renders exactly as before."""
    template = getattr(processor, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise ReinforceError(
            "adversarial prefill needs the model's chat template as one string; this processor "
            "has none (or several named ones): train without 'prefill' in adversarial"
        )
    twin = copy.copy(processor)
    twin.chat_template = template + PREFILL_TAIL
    return twin


def with_prefill(reward):
    """`reward` reading each completion as its prompt's prefill followed by the completion."""

    def prefilled(completions, prefill=None, **columns):
        if prefill is not None and any(prefill):
            completions = [
                [{"role": "assistant", "content": p + completion_text(c)}] if p else c
                for c, p in zip(completions, prefill, strict=True)
            ]
        return reward(completions, prefill=prefill, **columns)

    prefilled.__name__ = reward.__name__
    return prefilled


def refusal_directions(
    lm: LoadedModel, bench: Benchmark, forget: Sequence[QAItem], retain: Sequence[QAItem]
) -> dict[int, torch.Tensor]:
    """Per decoder layer, mean residual stream after it at the last prompt token of `forget`
    minus that of `retain` (the model as it is now, no gradient)."""
    from asru_lab.auditing.measure import last_states

    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad():
            mine = last_states(lm, bench, forget, batch_size=8)
            theirs = last_states(lm, bench, retain, batch_size=8)
    finally:
        lm.model.train(was_training)
    difference = mine.mean(0) - theirs.mean(0)
    return {layer: difference[layer] for layer in range(difference.shape[0])}


class AblationAdversary(TrainerCallback):
    """Projects the model's own refusal direction out of its residual stream for a seeded
    `share` of the training steps, from the step's start (its rollouts) to its end (their loss);
    the direction is re-estimated every `every` steps on `fit` forget and boundary questions.
    Must come before any callback that measures the model at a step's end."""

    def __init__(
        self,
        lm: LoadedModel,
        bench: Benchmark,
        forget: Sequence[QAItem],
        boundary: Sequence[QAItem],
        *,
        share: float,
        every: int,
        fit: int,
        seed: int,
    ) -> None:
        rng = random.Random(f"{seed}:ablation-fit")
        self.lm, self.bench = lm, bench
        self.forget = rng.sample(list(forget), min(fit, len(forget)))
        self.boundary = rng.sample(list(boundary), min(fit, len(boundary)))
        self.share, self.every, self.seed = share, every, seed
        self.directions: dict[int, torch.Tensor] | None = None
        self.fitted_at: int | None = None
        self.stack: ExitStack | None = None
        self.steps: list[int] = []  # the ablated steps
        self.refits: list[int] = []

    def attacked(self, step: int) -> bool:
        """Whether step `step` (1-based) runs ablated; the same for a resumed run."""
        return random.Random(f"{self.seed}:ablation:{step}").random() < self.share

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step + 1
        if not self.attacked(step):
            return
        if self.directions is None or step - self.fitted_at >= self.every:
            self.directions = refusal_directions(self.lm, self.bench, self.forget, self.boundary)
            self.fitted_at = step
            self.refits.append(step)
        from asru_lab.auditing.measure import ablated

        self.stack = ExitStack()
        self.stack.enter_context(ablated(self.lm, self.directions))
        self.steps.append(step)

    def on_step_end(self, args, state, control, **kwargs):
        self._release()

    def on_train_end(self, args, state, control, **kwargs):
        self._release()

    def _release(self) -> None:
        if self.stack is not None:
            self.stack.close()
            self.stack = None

    def record(self) -> dict:
        return {"ablated_steps": list(self.steps), "refits": list(self.refits)}


__all__ = [
    "ADVERSARIAL_ATTACKS",
    "PREFILL_TAIL",
    "AblationAdversary",
    "prefill_column",
    "prefill_processor",
    "prefix_for",
    "refusal_directions",
    "with_prefill",
]
