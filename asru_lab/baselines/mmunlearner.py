"""MMUnlearner (Huo et al., ACL 2025 Findings, arXiv 2502.11051): geometry-constrained gradient
ascent — only the weights that matter for the forget set, and not for the retain set, move.

1. Weight saliency. One gradient pass over the forget examples and one over the retain examples
   accumulate each weight's mean squared gradient of the answer NLL per batch (the diagonal of
   the empirical Fisher information, as the public code computes it). A weight's score is
   `(F_forget + 1e-15) / (F_retain + 1e-15)`. Scores are ranked separately on the two sides of
   the model — the vision tower with its projector, and the language model with its LM head
   (where they live comes from the architecture adapter) — and each side keeps its top
   `vision_fraction` / `language_fraction` of weights, optionally only those scoring at least
   `min_ratio` (the paper's threshold gamma).
2. Masked GradDiff. Gradient ascent on the forget answers plus descent on the retain answers,
   full-parameter AdamW on the shared trainer, every gradient multiplied by the mask.

The masks come back in `Unlearned.tensors` (parameter name -> boolean mask; a parameter with
no kept weight is left out) and `save_unlearned` writes them to `unlearn.safetensors`; their
statistics (share kept per side, counts, which parameters) are in the record's `saliency`.

Where the public code differs: it scores the language side against the retain images plus
text-only questions about everyone, forget people included (its reformulated task forgets the
faces and keeps the facts), whereas here both sides are scored against the same retain set the
training uses, because this benchmark's forget split asks to forget the person in both
modalities; it keeps every weight with a ratio >= 1 instead of a share per side (`paper()`
does that: fractions 1, `min_ratio` 1); its saliency batches hold 2 examples, here
`batch_size`; and it alternates a masked ascent step with an unmasked retain step, where here
one step sums both terms and the mask restricts all of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from asru_lab.baselines.grad_diff import loss as grad_diff_loss
from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.baselines.trainer import Step, _batch, train_unlearning, training_sets
from asru_lab.data.schema import Benchmark
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import Example, answer_tokens
from asru_lab.validation import check_fields

NAME = "mmunlearner"
SIDES = ("vision", "language")  # vision tower + projector; language model + LM head
FISHER_EPS = 1e-15  # added to both Fisher terms: a weight no example touches scores 1


@dataclass
class MMUnlearnerConfig:
    """How MMUnlearner picks its weights and trains them.

    Defaults are scaled to the embedded model. The public code trains 7B models for one epoch
    of batch 4 at lr 1e-5 and keeps every weight whose ratio is >= 1 (`paper()`); on the tiny
    embedded model that leaves the forget answers' NLL where it was (0.001 nats per token), so
    the defaults train like the other baselines here (5 epochs of batch 8) at lr 1e-4, which
    raises it to 0.33 with held-out retain answers at 0.10. They keep a fixed 10 % of each side
    (the ratio >= 1 rule keeps 16 % / 17 % here), so that the mask's size does not depend on
    how the ratios happen to fall.
    """

    vision_fraction: float = field(
        default=0.1,
        metadata={"help": "share of the vision tower + projector's weights trained, in (0, 1]"},
    )
    language_fraction: float = field(
        default=0.1,
        metadata={"help": "share of the language model + LM head's weights trained, in (0, 1]"},
    )
    min_ratio: float | None = field(
        default=None,
        metadata={
            "help": "keep only weights whose forget/retain Fisher ratio is at least this "
            "(the paper's gamma, 1); None: the top share alone decides"
        },
    )
    lr: float = field(
        default=1e-4, metadata={"help": "peak AdamW learning rate of the masked weights"}
    )
    epochs: int = field(default=5, metadata={"help": "passes over the forget examples"})
    batch_size: int = field(
        default=8,
        metadata={"help": "examples per step and per saliency batch (forget and retain alike)"},
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain NLL against the forget ascent"}
    )
    tasks: tuple[str, ...] = field(
        default=("qa",), metadata={"help": "forget/retain tasks scored and trained on"}
    )
    max_forget: int | None = field(
        default=None, metadata={"help": "forget examples used (seeded sample); None: all"}
    )
    max_retain: int | None = field(
        default=None, metadata={"help": "retain examples used; None: as many as forget"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clipping norm of the masked gradient"}
    )
    seed: int = field(default=0, metadata={"help": "example sampling and shuffling"})
    progress: bool = field(default=True, metadata={"help": "tqdm bars: saliency and training"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            UnlearnError,
            vision_fraction="(0, 1]",
            language_fraction="(0, 1]",
            min_ratio="> 0",
            lr="> 0",
            epochs=">= 1",
            batch_size=">= 1",
            retain_weight=">= 0",
            max_forget=">= 1",
            max_retain=">= 1",
            max_grad_norm="> 0",
        )

    @classmethod
    def paper(cls) -> MMUnlearnerConfig:
        """The public code's MLLMU-Bench run: every weight with ratio >= 1 (gamma = 1) on both
        sides, lr 1e-5, one epoch of batch 4."""
        return cls(
            vision_fraction=1.0,
            language_fraction=1.0,
            min_ratio=1.0,
            lr=1e-5,
            epochs=1,
            batch_size=4,
        )


def model_sides(lm: LoadedModel) -> dict[str, str]:
    """Parameter name -> "language" (the language model and its LM head, as `lm.adapter` places
    them) or "vision" (every other parameter: the vision tower and its projector)."""
    language = {
        id(p)
        for module in (lm.adapter.language_model(lm.model), lm.adapter.lm_head(lm.model))
        for p in module.parameters()
    }
    return {
        name: "language" if id(p) in language else "vision"
        for name, p in lm.model.named_parameters()
    }


@contextmanager
def _gradients_tracked(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter of `model` requires grad inside the block; the flags are restored."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def mean_squared_gradients(
    lm: LoadedModel,
    bench: Benchmark,
    split: str,
    examples: list[Example],
    *,
    batch_size: int,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Per parameter name, the squared gradient of the batch's mean answer NLL averaged over
    the batches of `split`'s `examples` (float32, the parameter's shape; in (nats per unit of
    weight)²). `lm` is not changed: the gradients are returned, never stored on its parameters."""
    tails = answer_tokens(lm, examples)[0]
    chunks = [
        list(range(start, min(start + batch_size, len(examples))))
        for start in range(0, len(examples), batch_size)
    ]
    named = dict(lm.model.named_parameters())
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    with _gradients_tracked(lm.model):
        for chunk in tqdm(chunks, desc=f"{NAME} saliency ({split})", disable=not progress):
            batch = _batch(lm, bench, examples, tails, chunk)
            loss = Step(lm.model, {split: batch}).nll(split)
            if not torch.isfinite(loss):
                raise UnlearnError(
                    f"{NAME} saliency: the {split} answer NLL is {float(loss)} on examples {chunk}"
                )
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            for name, grad in zip(named, grads, strict=True):
                if grad is not None:
                    totals[name] += grad.detach().float().square()
    return {name: total / len(chunks) for name, total in totals.items()}


def saliency_masks(
    scores: dict[str, torch.Tensor],
    sides: dict[str, str],
    fractions: dict[str, float],
    min_ratio: float | None = None,
) -> dict[str, torch.Tensor]:
    """Per parameter name, a boolean mask of its shape: True for the weights among the top
    `fractions[side]` of their side's `scores` (rounded to whole weights, at least one; ties
    broken by parameter order, so the masks repeat exactly) that also score >= `min_ratio`."""
    masks = {}
    for side, fraction in fractions.items():
        names = [name for name in scores if sides[name] == side]
        if not names:
            raise UnlearnError(
                f"the model has no {side} parameters: MMUnlearner needs both a vision tower "
                "and a language model"
            )
        flat = torch.cat([scores[name].flatten() for name in names])
        keep = max(1, round(fraction * flat.numel()))
        # the keep-th largest score; no full sort: its indices would take 8 bytes per weight
        threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
        chosen = flat > threshold
        ties = (flat == threshold).nonzero().flatten()
        chosen[ties[: keep - int(chosen.sum())]] = True
        if min_ratio is not None:
            chosen &= flat >= min_ratio
        pieces = chosen.split([scores[name].numel() for name in names])
        for name, piece in zip(names, pieces, strict=True):
            masks[name] = piece.reshape(scores[name].shape).clone()  # its own storage
    return masks


def mask_statistics(masks: dict[str, torch.Tensor], sides: dict[str, str]) -> dict:
    """Per side: weights kept and in all, the share kept, and the kept count of each parameter
    that keeps any."""
    stats = {}
    for side in SIDES:
        kept = {name: int(m.count_nonzero()) for name, m in masks.items() if sides[name] == side}
        total = sum(m.numel() for name, m in masks.items() if sides[name] == side)
        stats[side] = {
            "kept": sum(kept.values()),
            "total": total,
            "share": sum(kept.values()) / total,
            "parameters": {name: count for name, count in kept.items() if count},
        }
    return stats


def run(lm: LoadedModel, bench: Benchmark, config: MMUnlearnerConfig, probe=None) -> Unlearned:
    config = replace(config)  # runs __post_init__ again: fields set after construction too
    started = time.time()
    sets = training_sets(bench, config, uses_retain=True, forget_answers="truth")
    fisher = {
        split: mean_squared_gradients(
            lm, bench, split, examples, batch_size=config.batch_size, progress=config.progress
        )
        for split, examples in sets.items()
    }
    scores = {
        name: (forget + FISHER_EPS) / (fisher["retain"][name] + FISHER_EPS)
        for name, forget in fisher["forget"].items()
    }
    sides = model_sides(lm)
    fractions = {"vision": config.vision_fraction, "language": config.language_fraction}
    masks = saliency_masks(scores, sides, fractions, config.min_ratio)
    saliency_seconds = round(time.time() - started, 2)
    model, record = train_unlearning(
        lm, bench, config, grad_diff_loss, name=NAME, uses_retain=True, masks=masks
    )
    record["saliency"] = {
        "score": "mean squared forget gradient / mean squared retain gradient, per weight",
        "sides": mask_statistics(masks, sides),
        "seconds": saliency_seconds,
    }
    kept = {name: mask for name, mask in masks.items() if mask.any()}
    return Unlearned(NAME, model, record, tensors=kept)


register(
    Method(
        NAME,
        "saliency-masked GradDiff on the vision and language weights (MMUnlearner)",
        MMUnlearnerConfig,
        run,
        paper_config=MMUnlearnerConfig.paper,
        # full-parameter updates on a tenth of the weights: it takes larger steps than LoRA
        knob=Knob("lr", (5e-5, 1e-4, 3e-4, 1e-3)),
    )
)
