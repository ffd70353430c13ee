"""Register a gradient baseline: a loss on the shared trainer, and its default config."""

from __future__ import annotations

from dataclasses import replace

from asru_lab.baselines.registry import Knob, Method, Unlearned, register
from asru_lab.baselines.trainer import Loss, UnlearnConfig, train_unlearning

# The learning rates a tuning sweep tries: from the public code's 2e-5, at which nothing is
# unlearned on the embedded model, to 1e-4, at which GA forgets everyone.
LEARNING_RATES = (2e-5, 4e-5, 6e-5, 1e-4)


def register_gradient_method(
    name: str,
    summary: str,
    loss: Loss,
    *,
    uses_retain: bool,
    forget_answers: str = "truth",
    defaults: dict | None = None,
    learning_rates: tuple[float, ...] = LEARNING_RATES,
) -> Method:
    """Register `loss` as method `name`; `defaults` override `UnlearnConfig()` for it;
    `learning_rates` are its tuning sweep's values."""

    def default_config() -> UnlearnConfig:
        return replace(UnlearnConfig(), **(defaults or {}))

    def run(lm, bench, config, probe=None) -> Unlearned:
        model, record = train_unlearning(
            lm,
            bench,
            config,
            loss,
            name=name,
            uses_retain=uses_retain,
            forget_answers=forget_answers,
        )
        return Unlearned(name, model, record)

    knob = Knob("lr", learning_rates)
    return register(Method(name, summary, default_config, run, knob=knob))
