"""Deep ASRU, stage 1.0: reroute the forget people's identities where they live.

Causal tracing (README) shows a person's identity riding on the image tokens up to the middle
layers and reaching the last token after them; stages 1.2 and 2 act later, on a push at the last
token, so the face -> identity -> fact path stays intact and an attack finds it. This stage
edits that path itself: a LoRA on the MLPs of decoder layers 0..`layer` (the layer chosen by
causal tracing, `choose_layer`: the later of the last layer whose portrait tokens still carry
the identity and the last whose name tokens still carry the name's fact) is trained so that the
residual stream after `layer`, at a forget person's image tokens and every prompt token after
them (and, for a question by name, from the name on), equals what the *frozen* model computes
for a **stranger** at the same positions: the same question with a stranger's portrait (or the
stranger's name) in place of the person's. Each forget person has a stranger of their own
(seeded), so the targets differ person by person and there is no single direction to take back.
Meanwhile the residual stream of retain, stranger and picture prompts (their reference answers
included) is held where the frozen model has it (`retain_weight`). The frozen model is the same
network with the adapter switched off, so no second copy is kept in memory; the adapter is
merged at the end.

    loss = mean_f |h(x_f) - h0(x_s)|^2 / |h0(x_s)|^2
           + retain_weight * mean_r |h(x_r) - h0(x_r)|^2 / |h0(x_r)|^2

(squared errors relative to the target's own mean square, so that the weights mean the same at
any width); `h` the residual after layer `layer` (after DeepStack's injection where it adds visual
features, `hooks.residual_site`), mean over hidden dimensions and positions; spans aligned from
the end of the prompt (the text after the portrait or the name is the same in both prompts).
The forward pass stops at that layer: nothing above it changes the loss.

The stranger states are states the model was trained to refuse (strangers' portraits), or never
saw (a stranger's name: the benchmark asks no question by a stranger's name), so a rerouted
person is met as a stranger is: with a refusal in the model's own words, not a canned string.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.harness import forget_people
from asru_lab.generation import encode, encode_items
from asru_lab.hooks import read_site, residual_site
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import lora_wrap, lr_factor, seeded
from asru_lab.validation import check_choices, check_fields

MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
RETAIN_SPLITS = ("retain", "stranger", "general")


class RerouteError(AsruLabError, ValueError):
    """A reroute that cannot run as asked; the message says what and why."""


@dataclass
class RerouteConfig:
    """How stage 1.0 reroutes the forget people's identities (`asru_lab.stages.reroute`)."""

    layer: int | None = field(
        default=None,
        metadata={
            "help": "the last decoder layer edited and where the loss is read; None: the last "
            "layer whose image-token residual still carries the identity (causal tracing)"
        },
    )
    trace_threshold: float = field(
        default=0.9,
        metadata={"help": "with layer None: the recovered fraction that counts as 'carries'"},
    )
    trace_names: bool = field(
        default=True,
        metadata={
            "help": "with layer None: trace the name -> fact hop too and take the later layer "
            "(choose_layer)"
        },
    )
    modules: tuple[str, ...] = field(
        default=MLP_LINEARS,
        metadata={"help": f"the linears of each edited layer's MLP given a LoRA, of {MLP_LINEARS}"},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (alpha = rank)"})
    steps: int = field(default=300, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "forget pairs and retain prompts a step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW's peak rate (linear decay to 0)"})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of holding the other prompts' states"}
    )
    retain_splits: tuple[str, ...] = field(
        default=RETAIN_SPLITS,
        metadata={"help": f"whose prompts keep their states, some of {RETAIN_SPLITS}"},
    )
    seed: int = field(default=0, metadata={"help": "seeds the strangers, the order, the LoRA"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            RerouteError,
            layer=">= 0",
            trace_threshold="(0, 1]",
            lora_r=">= 1",
            steps=">= 1",
            batch_size=">= 1",
            lr="> 0",
            retain_weight=">= 0",
        )
        check_choices(self, "modules", MLP_LINEARS, RerouteError)
        check_choices(self, "retain_splits", RETAIN_SPLITS, RerouteError)


def choose_layer(
    lm: LoadedModel, bench: Benchmark, threshold: float, *, names: bool = False
) -> tuple[int, list]:
    """The last decoder layer whose image-token residual, restored into a run with the
    portrait corrupted, still recovers `threshold` of the person's name (causal tracing of the
    forget people, `asru_lab.causal`), and the per-layer fractions it read.

    With `names`, the name -> fact hop is traced too (`corruption="name"`: a question by name,
    the name's token embeddings noised, each of the people's attributes but the name) and the
    layer is the later of the two: the last layer whose *name* tokens still recover
    `threshold` of their own peak (the name's tokens share what they carry with the last token
    from the first layer on, so their absolute fractions stay small; an attribute whose name
    tokens recover less than 0.05 anywhere is left out). The fractions returned are then
    `{"image": [...], "name": [...]}` (the name's: per layer, the largest over attributes)."""
    from asru_lab.causal import CausalTraceConfig, trace_causal

    trace = trace_causal(
        lm, bench, CausalTraceConfig(split="forget", components=("residual",), progress=False)
    )
    column = trace.groups.index("image")
    fractions = [row[column] for row in trace.matrix("residual")]
    carried = [
        layer for layer, f in zip(trace.layers, fractions, strict=True) if (f or 0) >= threshold
    ]
    if not carried:
        raise RerouteError(
            f"causal tracing finds no layer whose image tokens carry {threshold:g} of the "
            f"identity (fractions {fractions}); set RerouteConfig.layer"
        )
    if not names:
        return max(carried), fractions
    by_name = name_fractions(lm, bench)
    peak = max((f for f in by_name if f is not None), default=0.0)
    layer = max(carried)
    if peak >= 0.05:
        layer = max(layer, *(k for k, f in enumerate(by_name) if (f or 0) >= threshold * peak))
    return layer, {"image": fractions, "name": by_name}


def name_fractions(lm: LoadedModel, bench: Benchmark) -> list[float | None]:
    """Per decoder layer, the largest over the forget people's attributes (all but the name) of
    the fraction of the fact recovered by restoring the name's tokens' residual stream into a
    run with the name noised (`corruption="name"`, nnsight); attributes whose name tokens never
    recover 0.05 are left out."""
    from asru_lab.causal import CausalTraceConfig, trace_causal

    people = [bench.people[p] for p in sorted(forget_people(bench))]
    attributes = sorted({a for p in people for a in p.facts if a != "name"})
    best: list[float | None] = [None] * lm.num_layers
    for attribute in attributes:
        config = CausalTraceConfig(
            split="forget",
            attribute=attribute,
            corruption="name",
            backend="nnsight",
            components=("residual",),
            groups=("name",),
            progress=False,
        )
        trace = trace_causal(lm, bench, config)
        column = [row[0] for row in trace.matrix("residual")]
        if max((f or 0) for f in column) < 0.05:
            continue
        for layer, f in zip(trace.layers, column, strict=True):
            if f is not None:
                best[layer] = f if best[layer] is None else max(best[layer], f)
    return best


def strangers_for(bench: Benchmark, seed: int) -> dict[str, tuple[str, str | None]]:
    """Each forget person -> (a stranger's name, that stranger's portrait), distinct, seeded."""
    portraits: dict[str, str | None] = {}
    for item in bench.questions("stranger", "qa"):
        if item.person_id and item.person_id not in portraits:
            portraits[item.person_id] = item.image
    candidates = sorted(p for p, img in portraits.items() if img and bench.people[p].name)
    people = sorted(forget_people(bench))
    if len(candidates) < len(people):
        raise RerouteError(
            f"{bench.name} has {len(candidates)} strangers with a portrait and a name for "
            f"{len(people)} forget people: every forget person needs a stranger of their own"
        )
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    picked = [candidates[k] for k in order[: len(people)].tolist()]
    return {p: (bench.people[s].name, portraits[s]) for p, s in zip(people, picked, strict=True)}


@dataclass
class _Pair:
    item: QAItem  # the forget question
    image: str | None  # the stranger's prompt: portrait ...
    question: str  # ... and question


def pairs(bench: Benchmark, strangers: dict) -> list[_Pair]:
    """Every forget-split question beside its stranger twin: the portrait swapped for the
    stranger's, or the name (where the question names the person) for the stranger's name."""
    out = []
    for item in bench.questions("forget", "qa"):
        name, portrait = strangers[item.person_id]
        own = bench.people[item.person_id].name
        if item.image is not None:
            out.append(_Pair(item, portrait, item.question))
        elif own and own in item.question:
            out.append(_Pair(item, None, item.question.replace(own, name)))
    if not out:
        raise RerouteError(
            f"{bench.name}'s forget split has no question with a portrait or the person's name"
        )
    return out


def entity_spans(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    other: torch.Tensor,
    other_mask: torch.Tensor,
) -> list[int]:
    """Per row the number of final prompt positions compared: from the first image token (or
    the first token where the two prompts differ) to the end, the shorter of the two."""
    image = lm.adapter.image_token_id(lm.model)
    lengths = []
    for a, am, b, bm in zip(ids, mask, other, other_mask, strict=True):
        a, b = a[am.bool()].tolist(), b[bm.bool()].tolist()
        if image in a and image in b:
            start_a, start_b = a.index(image), b.index(image)
        else:
            same = next(
                (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            start_a = start_b = same
        lengths.append(max(1, min(len(a) - start_a, len(b) - start_b)))
    return lengths


def held_batch(
    held: dict[str, list[QAItem]], orders: dict[str, list[int]], step: int, size: int
) -> list[QAItem]:
    """Step `step`'s `size` held prompts, the splits taking turns (each in its own seeded
    order), so that no split outnumbers the others."""
    splits = list(held)
    kept = []
    for j in range(size):
        slot = step * size + j
        split = splits[slot % len(splits)]
        order = orders[split]
        kept.append(held[split][order[(slot // len(splits)) % len(order)]])
    return kept


def drift(now: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of `now` from `frozen` over the real tokens, relative to `frozen`'s own
    mean square there."""
    real = mask.bool()
    return ((now - frozen) ** 2).mean(-1)[real].mean() / (frozen**2).mean(-1)[real].mean()


def encode_with_twins(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    twin_items: Sequence[QAItem],
    twin_questions: Sequence[str],
) -> tuple[dict, dict, list[int]]:
    """`items` encoded as asked, their twins (`twin_items`' images with `twin_questions`)
    encoded the same way, and per row the number of final prompt positions compared
    (`entity_spans`)."""
    mine = encode_items(lm, bench, list(items))
    twins = encode(lm, bench.images(list(twin_items)), list(twin_questions))
    spans = entity_spans(
        lm, mine["input_ids"], mine["attention_mask"], twins["input_ids"], twins["attention_mask"]
    )
    return mine, twins, spans


def take_step(
    optimizer: torch.optim.Optimizer,
    trainable: Sequence[torch.Tensor],
    loss: torch.Tensor,
    step: int,
    total: int,
    lr: float,
    diverged: Exception,
) -> None:
    """One AdamW step on `loss` at the linearly decayed rate, gradients clipped to 1; raises
    `diverged` (before touching the weights) when the loss is not finite."""
    if not torch.isfinite(loss):
        raise diverged
    for group in optimizer.param_groups:
        group["lr"] = lr * lr_factor(step, total)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()


def _gap(states: torch.Tensor, goal: torch.Tensor, spans: Sequence[int]) -> torch.Tensor:
    """Mean over rows of the squared error over each row's last `n` positions, relative to the
    goal's own mean square there."""
    return torch.stack(
        [
            ((states[r, -n:] - goal[r, -n:]) ** 2).mean() / (goal[r, -n:] ** 2).mean()
            for r, n in enumerate(spans)
        ]
    ).mean()


def residual_at(model, lm: LoadedModel, inputs: dict, layer: int) -> torch.Tensor:
    index, io = residual_site(lm, layer)
    value = read_site(model, inputs, lm.adapter.layer(lm.model, index), io, stop=True)
    if value is None:
        raise RerouteError(f"the forward pass never reached decoder layer {index}")
    return value.float()


def reroute(
    lm: LoadedModel, bench: Benchmark, config: RerouteConfig | None = None
) -> tuple[LoadedModel, dict]:
    """Stage 1.0 (module docstring): a copy of `lm` whose early MLPs send the forget people's
    portraits and names where strangers' go; `lm` is never changed. Returns (model, record)."""
    cfg = config or RerouteConfig()
    started = time.perf_counter()
    if not bench.split("forget"):
        raise RerouteError(f"{bench.name} has an empty forget split: there is nothing to reroute")
    fractions = None
    if cfg.layer is None:
        layer, fractions = choose_layer(lm, bench, cfg.trace_threshold, names=cfg.trace_names)
    else:
        layer = cfg.layer
        if layer >= lm.num_layers:
            raise RerouteError(
                f"RerouteConfig.layer {layer} does not exist: {lm.name} has decoder layers "
                f"0..{lm.num_layers - 1}"
            )
    strangers = strangers_for(bench, cfg.seed)
    twins = pairs(bench, strangers)
    # the held prompts, drawn evenly from each split (the strangers' would outnumber the rest)
    held = {split: bench.questions(split, "qa") for split in cfg.retain_splits}
    held = {split: items for split, items in held.items() if items}
    if not held:
        raise RerouteError(f"{bench.name} has no question in {cfg.retain_splits} to hold in place")
    targets = [f"{lm.adapter.mlp_path(k)}.{m}" for k in range(layer + 1) for m in cfg.modules]
    twin = lm.clone(copy_only=targets)  # only the merged linears change
    history: list[dict] = []
    with seeded(cfg.seed, twin.device):
        model = lora_wrap(twin.model, targets, r=cfg.lora_r, alpha=cfg.lora_r, dropout=0.0)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(cfg.seed)
        f_order = torch.randperm(len(twins), generator=generator).tolist()
        r_order = {
            split: torch.randperm(len(items), generator=generator).tolist()
            for split, items in held.items()
        }
        bar = tqdm(total=cfg.steps, desc="reroute", disable=not cfg.progress)
        for step in range(cfg.steps):
            chosen = [
                twins[f_order[(step * cfg.batch_size + j) % len(twins)]]
                for j in range(min(cfg.batch_size, len(twins)))
            ]
            kept = held_batch(held, r_order, step, cfg.batch_size)
            forget_in, stranger_in, spans = encode_with_twins(
                twin,
                bench,
                [p.item for p in chosen],
                _as_items(chosen),
                [p.question for p in chosen],
            )
            keep_in = encode_items(twin, bench, kept, [i.answer for i in kept])
            with torch.no_grad(), model.disable_adapter():
                goal = residual_at(model, twin, stranger_in, layer)
                frozen = residual_at(model, twin, keep_in, layer)
                start = residual_at(model, twin, forget_in, layer) if step == 0 else None
            model.train()
            mine = residual_at(model, twin, forget_in, layer)
            forget_loss = _gap(mine, goal, spans)
            now = residual_at(model, twin, keep_in, layer)
            retain_loss = drift(now, frozen, keep_in["attention_mask"])
            loss = forget_loss + cfg.retain_weight * retain_loss
            diverged = RerouteError(
                f"reroute diverged at step {step + 1} (loss {float(loss.detach())}); lower "
                f"RerouteConfig.lr (now {cfg.lr:g})"
            )
            take_step(optimizer, trainable, loss, step, cfg.steps, cfg.lr, diverged)
            if start is not None:
                gap = float(_gap(start, goal, spans))
                history.append({"step": 0, "forget_gap": gap, "retain_drift": 0.0})
            if (step + 1) % max(1, cfg.steps // 10) == 0 or step + 1 == cfg.steps:
                history.append(
                    {
                        "step": step + 1,
                        "forget_gap": float(forget_loss.detach()),
                        "retain_drift": float(retain_loss.detach()),
                    }
                )
            bar.update(1)
            bar.set_postfix(
                gap=f"{float(forget_loss.detach()):.3f}", drift=f"{float(retain_loss.detach()):.4f}"
            )
        bar.close()
    model.eval()
    twin.model = model.merge_and_unload()
    for p in twin.model.parameters():
        p.requires_grad_(False)
    record = {
        "stage": "reroute",
        "config": asdict(cfg),
        "layer": layer,
        "traced_fractions": fractions,
        "strangers": {p: name for p, (name, _) in strangers.items()},
        "pairs": len(twins),
        "held": {split: len(items) for split, items in held.items()},
        "history": history,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return twin, record


def _as_items(chosen: Sequence[_Pair]) -> list[QAItem]:
    """Items whose `image` is each pair's stranger portrait (for `Benchmark.images`)."""
    return [replace(p.item, image=p.image) for p in chosen]


__all__ = [
    "MLP_LINEARS",
    "RerouteConfig",
    "RerouteError",
    "choose_layer",
    "name_fractions",
    "drift",
    "encode_with_twins",
    "entity_spans",
    "held_batch",
    "pairs",
    "residual_at",
    "reroute",
    "strangers_for",
    "take_step",
]
