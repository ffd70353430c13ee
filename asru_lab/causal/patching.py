"""One batched forward pass as both backends run it (`_Run`: inputs, noise per visual site,
restorations, reads; `_RunOutput`), the in-place restoration, and where each traced site is:
a TransformerLens hook name or an HF module path, both from the architecture adapter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from asru_lab.hooks import residual_site
from asru_lab.models.loading import LoadedModel


@dataclass
class _Run:
    """One batched forward pass: inputs, noise per visual site, restorations, reads."""

    inputs: dict
    noise: list[torch.Tensor] | None = None
    patches: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )  # site -> (rows [n], mask [n, T], values [n, T, D])
    read_sites: Sequence[tuple[str, int]] = ()
    read_visual: bool = False


@dataclass
class _RunOutput:
    logits: torch.Tensor  # [B, vocab] at the last position
    sites: dict[tuple[str, int], torch.Tensor]  # read site -> [B, T, D]
    visual: list[torch.Tensor]  # per visual site, the clean features


def _restore(act: torch.Tensor, patch) -> torch.Tensor:
    """Put the clean `values` back into `act` at the masked positions of `rows`, in place."""
    rows, mask, values = patch
    act[rows] = torch.where(mask.unsqueeze(-1), values.to(act.dtype), act[rows])
    return act


def _module_site(lm: LoadedModel, component: str, layer: int) -> tuple[str, str]:
    """(module path, "input" | "output" | "output[0]") of one site on the HF model."""
    if component == "residual":
        at, site = residual_site(lm, layer)
        return lm.adapter.layer_path(at), site
    if component == "attention":
        return lm.adapter.attention_path(layer), "output[0]"
    return lm.adapter.mlp_path(layer), "output"


def site_names(lm: LoadedModel, backend: str, component: str, layer: int) -> str:
    """The hook name (TransformerLens) or module path + access (nnsight) of one site."""
    if backend == "nnsight":
        return ".".join(_module_site(lm, component, layer))
    at, site = residual_site(lm, layer) if component == "residual" else (layer, "output")
    return lm.adapter.lens_hook(component, at, site)
