"""RMU (Li et al. 2024, "The WMDP benchmark"), at the entity tokens: scramble the forget
people's residual stream at one early layer by sending it toward a fixed random direction, while
every other prompt keeps its frozen states.

    loss = mean_f |h_l(x_f) - c_t u|² / c_t²
           + retain_weight * mean_r |h_l(x_r) - h0_l(x_r)|² / |h0_l(x_r)|²

`h_l` is the residual after decoder layer `layer` (the layer Deep ASRU reroutes at: the last one
whose image tokens still carry the identity under causal tracing, unless set), read at the
entity tokens — a forget question's portrait tokens, or the person's name, and every prompt
token after them; `u` is one random unit vector (seeded) and `c_t = coefficient * |h0_l(x_f)_t|`
(adaptive RMU: the target's norm scales with the frozen state's). As published, only the MLP
`down_proj` of layers `layer-2 .. layer` is trained, in full; the held prompts are the retain,
stranger and picture questions with their answers (the splits take turns). The frozen states
come from the untouched model. The strength knob is the coefficient.

Defaults, from a calibration on the embedded model (seed 0, 32 questions per split): at lr 1e-4
or 1e-3 nothing is forgotten in 300 steps (forget leak 1.00); at lr 1e-2 with retain weight 1,
forget leak 0.22 and retain recall 0.81; with retain weight 10, 0.75 and 1.00. Retain weight 3
sits between (the published rule — tune the coefficient with everything else fixed — then
applies).

Its known weakness (ROBUST.md): the effect can be one "junk direction" that an ablation or a
little fine-tuning takes back; the audit measures exactly that.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from asru_lab.baselines.registry import Knob, Method, Unlearned, UnlearnError, register
from asru_lab.evaluation.harness import forget_people
from asru_lab.generation import encode_items
from asru_lab.progress import tqdm
from asru_lab.stages.reroute import (
    RETAIN_SPLITS,
    choose_layer,
    drift,
    encode_with_twins,
    held_batch,
    residual_at,
    take_step,
)
from asru_lab.training import seeded
from asru_lab.validation import check_choices, check_fields

COEFFICIENTS = (1.0, 2.0, 4.0, 8.0)  # weakest first
NAME_STAND_IN = "Nobody"  # a by-name question is compared with this in the name's place


@dataclass
class RmuConfig:
    """How RMU scrambles the forget people's entity tokens (module docstring)."""

    layer: int | None = field(
        default=None,
        metadata={
            "help": "decoder layer whose output is scrambled; None: the last layer whose image "
            "tokens carry the identity (causal tracing, as stage 1.0 chooses)"
        },
    )
    trace_threshold: float = field(
        default=0.9, metadata={"help": "with layer None: the recovered fraction that carries"}
    )
    trace_names: bool = field(
        default=True,
        metadata={
            "help": "with layer None: trace the name -> fact hop too and take the later layer "
            "(choose_layer)"
        },
    )
    depth: int = field(
        default=3, metadata={"help": "how many layers' down_proj are trained, ending at layer"}
    )
    coefficient: float = field(
        default=2.0, metadata={"help": "the target's norm, in units of the frozen state's norm"}
    )
    retain_weight: float = field(
        default=3.0, metadata={"help": "weight of holding the other prompts' states"}
    )
    retain_splits: tuple[str, ...] = field(
        default=RETAIN_SPLITS,
        metadata={"help": f"whose prompts keep their states, some of {RETAIN_SPLITS}"},
    )
    steps: int = field(default=300, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "forget and held prompts a step"})
    lr: float = field(default=1e-2, metadata={"help": "AdamW's peak rate (linear decay to 0)"})
    seed: int = field(default=0, metadata={"help": "the random direction, the order"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            UnlearnError,
            layer=">= 0",
            trace_threshold="(0, 1]",
            depth=">= 1",
            coefficient="> 0",
            retain_weight=">= 0",
            steps=">= 1",
            batch_size=">= 1",
            lr="> 0",
        )
        check_choices(self, "retain_splits", RETAIN_SPLITS, UnlearnError)


def entity_questions(bench) -> list:
    """The forget split's open questions that show the person: by portrait or by name."""
    out = []
    for item in bench.questions("forget", "qa"):
        name = bench.people[item.person_id].name if item.person_id in bench.people else None
        if item.image is not None or (name and name in item.question):
            out.append(item)
    return out


def _stand_ins(bench, items) -> list[str]:
    questions = []
    for item in items:
        name = bench.people[item.person_id].name
        shown = item.image is not None or not name
        questions.append(item.question if shown else item.question.replace(name, NAME_STAND_IN))
    return questions


def run_rmu(lm, bench, config: RmuConfig, probe=None) -> Unlearned:
    started = time.perf_counter()
    cfg = config
    items = entity_questions(bench)
    if not items:
        raise UnlearnError(
            f"{bench.name}'s forget split has no question with a portrait or the person's name"
        )
    if cfg.layer is None:
        layer, _ = choose_layer(lm, bench, cfg.trace_threshold, names=cfg.trace_names)
    else:
        layer = cfg.layer
        if layer >= lm.num_layers:
            raise UnlearnError(
                f"RmuConfig.layer {layer} does not exist: {lm.name} has decoder layers "
                f"0..{lm.num_layers - 1}"
            )
    held = {split: bench.questions(split, "qa") for split in cfg.retain_splits}
    held = {split: qs for split, qs in held.items() if qs}
    if not held:
        raise UnlearnError(f"{bench.name} has no question in {cfg.retain_splits} to hold")
    first = max(0, layer - cfg.depth + 1)
    targets = [f"{lm.adapter.mlp_path(k)}.down_proj" for k in range(first, layer + 1)]
    out = lm.clone(copy_only=targets)
    named = dict(out.model.named_modules())
    trainable = [named[t].weight for t in targets]
    for p in out.model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(cfg.seed)
    direction = torch.randn(lm.adapter.hidden_size(lm.model), generator=generator)
    direction = (direction / direction.norm()).to(out.device)
    f_order = torch.randperm(len(items), generator=generator).tolist()
    r_order = {
        split: torch.randperm(len(qs), generator=generator).tolist() for split, qs in held.items()
    }
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    history: list[dict] = []
    with seeded(cfg.seed, out.device):
        out.model.train()
        bar = tqdm(total=cfg.steps, desc="rmu", disable=not cfg.progress)
        for step in range(cfg.steps):
            chosen = [
                items[f_order[(step * cfg.batch_size + j) % len(items)]]
                for j in range(min(cfg.batch_size, len(items)))
            ]
            forget_in, _, spans = encode_with_twins(
                out, bench, chosen, chosen, _stand_ins(bench, chosen)
            )
            kept = held_batch(held, r_order, step, cfg.batch_size)
            keep_in = encode_items(out, bench, kept, [i.answer for i in kept])
            with torch.no_grad():
                before = residual_at(lm.model, lm, forget_in, layer)
                frozen = residual_at(lm.model, lm, keep_in, layer)
            mine = residual_at(out.model, out, forget_in, layer)
            forget_loss = torch.stack(
                [
                    _scramble_gap(mine[r, -n:], before[r, -n:], direction, cfg.coefficient)
                    for r, n in enumerate(spans)
                ]
            ).mean()
            retain_loss = drift(
                residual_at(out.model, out, keep_in, layer), frozen, keep_in["attention_mask"]
            )
            loss = forget_loss + cfg.retain_weight * retain_loss
            diverged = UnlearnError(
                f"rmu diverged at step {step + 1} (loss {float(loss.detach())}); lower "
                f"RmuConfig.lr (now {cfg.lr:g})"
            )
            take_step(optimizer, trainable, loss, step, cfg.steps, cfg.lr, diverged)
            if step == 0:  # the first batch, re-read at every logged step: one curve
                fixed = (forget_in, spans, before)
                history.append({"step": 0, "forget_gap": float(forget_loss.detach())})
            if (step + 1) % max(1, cfg.steps // 10) == 0 or step + 1 == cfg.steps:
                history.append(
                    {
                        "step": step + 1,
                        "forget_gap": _fixed_gap(out, fixed, layer, direction, cfg.coefficient),
                        "retain_drift": float(retain_loss.detach()),
                    }
                )
            bar.update(1)
            bar.set_postfix(
                gap=f"{float(forget_loss.detach()):.3f}", drift=f"{float(retain_loss.detach()):.4f}"
            )
        bar.close()
    out.model.eval()
    for p in trainable:
        p.requires_grad_(False)
    out.name = f"{lm.name}+rmu"
    out.info = {**lm.info, "unlearn": {"method": "rmu", "base_model": lm.name}}
    record = {
        "method": "rmu",
        "config": asdict(cfg),
        "base_model": lm.name,
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "layer": layer,
        "trained": targets,
        "forget_people": len(forget_people(bench)),
        "examples": {"forget": len(items), **{s: len(q) for s, q in held.items()}},
        "history": history,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Unlearned("rmu", out, record)


def _fixed_gap(out, fixed, layer, direction, coefficient) -> float:
    """The forget loss, now, on the first step's batch (a curve on one batch)."""
    inputs, spans, before = fixed
    with torch.no_grad():
        now = residual_at(out.model, out, inputs, layer)
        gaps = [
            _scramble_gap(now[r, -n:], before[r, -n:], direction, coefficient)
            for r, n in enumerate(spans)
        ]
    return float(torch.stack(gaps).mean())


def _scramble_gap(
    states: torch.Tensor, frozen: torch.Tensor, direction: torch.Tensor, coefficient: float
) -> torch.Tensor:
    """Squared distance of each position's state from `coefficient * |frozen| * u`, relative to
    that target's squared norm, averaged over the positions."""
    scale = coefficient * frozen.norm(dim=-1, keepdim=True)
    goal = scale * direction
    return (((states - goal) ** 2).sum(-1) / (scale[..., 0] ** 2)).mean()


register(
    Method(
        "rmu",
        "the forget people's entity tokens sent toward a random direction at an early layer",
        RmuConfig,
        run_rmu,
        knob=Knob("coefficient", COEFFICIENTS),
    )
)

__all__ = ["COEFFICIENTS", "RmuConfig", "entity_questions", "run_rmu"]
