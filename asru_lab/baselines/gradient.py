"""Register a gradient baseline: a loss on the shared trainer, and its default config."""

from __future__ import annotations

from dataclasses import replace

from asru_lab.baselines.registry import Method, Unlearned, register
from asru_lab.baselines.trainer import Loss, UnlearnConfig, train_unlearning


def register_gradient_method(
    name: str,
    summary: str,
    loss: Loss,
    *,
    uses_retain: bool,
    forget_answers: str = "truth",
    defaults: dict | None = None,
) -> Method:
    """Register `loss` as method `name`; `defaults` override `UnlearnConfig()` for it."""

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

    return register(Method(name, summary, default_config, run))
