"""NPO with sharpness-aware minimisation (Fan et al. 2025, "Towards LLM unlearning resilient to
relearning attacks"): the forget loss is minimised at the worst point of a small ball around the
weights, so that a few steps of fine-tuning cannot climb back out of a sharp minimum.

    min_θ  NPO(θ + δ) + retain_weight * NLL_retain(θ),  δ = ρ ∇NPO(θ) / |∇NPO(θ)|

over the trained (LoRA) parameters: one gradient of the forget loss gives δ, the weights step
to θ + δ, the forget loss there is backpropagated, the weights step back, and the retain loss
is added at θ. ρ 0.01 is the paper's MUSE setting; the knob is NPO's learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.baselines.trainer import Step, UnlearnConfig, train_unlearning
from asru_lab.validation import check_fields

LEARNING_RATES = (1e-5, 3e-5, 6e-5, 1e-4)  # NPO's


@dataclass
class NpoSamConfig(UnlearnConfig):
    """The shared gradient trainer's settings (NPO's learning rate), and SAM's radius."""

    sam_rho: float = field(
        default=0.01, metadata={"help": "radius of the forget loss's worst-case perturbation"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, UnlearnError, sam_rho="> 0")


def npo(step: Step, config: UnlearnConfig) -> torch.Tensor:
    ratio = step.sequence_logprob("forget") - step.sequence_logprob("forget", reference=True)
    return -(2.0 / config.npo_beta) * F.logsigmoid(-config.npo_beta * ratio).mean()


def loss(step: Step, config: NpoSamConfig) -> torch.Tensor:
    params = [p for p in step.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(npo(step, config), params, allow_unused=True)
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
    shifts = [
        None if g is None else g * (config.sam_rho / (norm + 1e-12)).to(g.dtype) for g in grads
    ]
    saved = [None if g is None else p.detach().clone() for p, g in zip(params, grads, strict=True)]
    with torch.no_grad():
        for p, shift in zip(params, shifts, strict=True):
            if shift is not None:
                p.add_(shift)
    step.forget_cache()
    try:
        sharp = npo(step, config)
        sharp.backward()  # the forget gradient, taken at θ + δ (the trainer steps on it)
    finally:
        with torch.no_grad():  # back exactly (θ + δ - δ is not θ in floating point)
            for p, kept in zip(params, saved, strict=True):
                if kept is not None:
                    p.copy_(kept)
        step.forget_cache()
    return config.retain_weight * step.nll("retain") + sharp.detach()


def run(lm, bench, config: NpoSamConfig, probe=None) -> Unlearned:
    model, record = train_unlearning(lm, bench, config, loss, name="npo_sam", uses_retain=True)
    return Unlearned("npo_sam", model, record)


def default_config() -> NpoSamConfig:
    return replace(NpoSamConfig(), lr=1e-5)


register(
    Method(
        "npo_sam",
        "NPO whose forget loss is minimised at the worst nearby weights (SAM), + retain NLL",
        default_config,
        run,
        knob=Knob("lr", LEARNING_RATES),
    )
)

__all__ = ["NpoSamConfig"]
