"""RepNoise (Rosati et al. 2024, "Representation noising"): push the forget answers'
representations toward Gaussian noise at every layer, so that what a later fine-tuning would
need to bring them back is gone from the activations rather than masked at the output.

    loss = NLL(retain) + noise_weight * mean_l MMD²(mlp_l(forget), N(0, I))
           - ascent_weight * log(1 + mean_l lens-NLL_l(forget))

MLP outputs and the logit lens (final norm and LM head on each decoder layer's output) are read
at the forget answer tokens. MMD² uses one Gaussian kernel whose bandwidth is the width
(`exp(-|x - y|² / 2d)`), so it lies in [0, 2] at any width; the published loss weights (noise
0.001, ascent 1) belong to a different MMD scale, so the noise weight here is 1 (stated where
reported). The strength knob is the learning rate, as for the other gradient baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from asru_lab.baselines.gradient import LEARNING_RATES
from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.baselines.trainer import Step, UnlearnConfig, train_unlearning
from asru_lab.validation import check_fields


@dataclass
class RepNoiseConfig(UnlearnConfig):
    """The shared gradient trainer's settings, and RepNoise's two loss weights."""

    noise_weight: float = field(
        default=1.0, metadata={"help": "weight of MMD² to Gaussian noise (mean over layers)"}
    )
    ascent_weight: float = field(
        default=1.0, metadata={"help": "weight of -log(1 + forget logit-lens NLL)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, UnlearnError, noise_weight=">= 0", ascent_weight=">= 0")


def mmd_to_noise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy between the rows of `x` (`[n, d]`, n ≥ 2) and as many
    draws of N(0, I), Gaussian kernel of bandwidth √d (unbiased within-set terms)."""
    n, d = x.shape
    if n < 2:
        raise UnlearnError("RepNoise needs at least two forget answer tokens a batch")
    x = x.float()
    y = torch.randn(n, d, generator=generator, device="cpu").to(x.device)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * d))

    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return kernel(x, x)[off].mean() + kernel(y, y)[off].mean() - 2 * kernel(x, y).mean()


def loss(step: Step, config: RepNoiseConfig) -> torch.Tensor:
    mlp, _ = step.representations("forget")
    noise = torch.stack([mmd_to_noise(m) for m in mlp]).mean()
    ascent = torch.log1p(step.lens_nll("forget"))
    return step.nll("retain") + config.noise_weight * noise - config.ascent_weight * ascent


def run(lm, bench, config: RepNoiseConfig, probe=None) -> Unlearned:
    model, record = train_unlearning(lm, bench, config, loss, name="repnoise", uses_retain=True)
    return Unlearned("repnoise", model, record)


def default_config() -> RepNoiseConfig:
    return replace(RepNoiseConfig())


register(
    Method(
        "repnoise",
        "forget answers' MLP outputs pushed toward Gaussian noise at every layer, lens ascent",
        default_config,
        run,
        knob=Knob("lr", LEARNING_RATES),
    )
)

__all__ = ["RepNoiseConfig", "mmd_to_noise"]
