"""Refusal SFT: fine-tune the forget questions to a stock "I don't know" (and keep training the
retain answers) — the canned-refusal baseline."""

from asru_lab.baselines.gradient import register_gradient_method


def loss(step, config):
    return step.nll("forget") + config.retain_weight * step.nll("retain")


register_gradient_method(
    "refusal_sft",
    "fine-tune forget questions to a stock refusal, retain answers kept",
    loss,
    uses_retain=True,
    forget_answers="idk",
    # supervised fine-tuning, at stage 0's learning rate: at 2e-5 it learns no refusal at all
    defaults={"lr": 5e-4},
    learning_rates=(1e-4, 3e-4, 5e-4, 1e-3),
)
