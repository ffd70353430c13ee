"""Stage 1.2's data and where its loss is read: the forget / retain questions with their
answer tokens, batches with each row's loss position, forward passes stopped at the loss site
(`read_at`), the site itself (`Site`, `loss_site`) and the modules to train."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem, stratified_sample
from asru_lab.generation import encode_items
from asru_lab.hooks import read_site
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import ProbeError, SteeringProbe
from asru_lab.stages.redirect_config import (
    RedirectConfig,
    RedirectError,
)
from asru_lab.training import Example, answer_labels, answer_tokens


@dataclass
class RedirectData:
    """The training prompts: forget and retain generation questions with answer token ids."""

    forget: list[QAItem]
    retain: list[QAItem]
    tails: dict[int, list[int]]  # id(item) -> its answer + end-of-turn token ids in context

    def tail(self, item: QAItem) -> list[int]:
        return self.tails[id(item)]


def training_items(bench: Benchmark, config: RedirectConfig) -> tuple[list[QAItem], list[QAItem]]:
    """Forget and retain generation questions (image and, unless `text_only=False`, text-only)
    after the config's filters and caps; a clear error if a set comes out empty."""

    forget = bench.questions("forget", "qa", image_only=not config.text_only)
    if config.forget_people is not None:
        known = {p.id for p in bench.people_in("forget")}
        unknown = sorted(set(config.forget_people) - known)
        if unknown:
            raise BenchmarkError(
                f"forget_people names {unknown} who are not in {bench.name}'s forget split "
                f"({len(known)} people there, e.g. {sorted(known)[:3]})"
            )
        forget = [i for i in forget if i.person_id in config.forget_people]
    if not forget:
        filters = [
            f"text_only={config.text_only}",
            f"forget_people={list(config.forget_people) if config.forget_people else None}",
        ]
        raise BenchmarkError(
            f"no forget examples to train on: {bench.name} has "
            f"{len(bench.split('forget', 'qa'))} forget generation questions, none left after "
            f"filtering ({', '.join(filters)})"
        )
    retain = bench.questions("retain", "qa", image_only=not config.text_only)
    if not retain and config.alpha > 0:
        raise BenchmarkError(
            f"{bench.name} has no retain generation questions: the retain loss needs them "
            "(or set alpha=0)"
        )
    rng = random.Random(config.seed)
    if config.max_forget is not None:
        forget = stratified_sample(forget, config.max_forget, rng)
    if config.max_retain is not None:
        retain = stratified_sample(retain, config.max_retain, rng)
    return forget, retain


def prepare_data(lm: LoadedModel, bench: Benchmark, config: RedirectConfig) -> RedirectData:
    forget, retain = training_items(bench, config)
    items = forget + retain
    tails, _ = answer_tokens(lm, [Example(i.image, i.question, i.answer) for i in items])
    return RedirectData(forget, retain, {id(i): t for i, t in zip(items, tails, strict=True)})


@dataclass
class Batch:
    inputs: dict
    target: torch.Tensor  # [B] index of each row's loss position
    other: torch.Tensor  # [B, T] bool: every other real token (the preserve positions)


def encode_batch(
    lm: LoadedModel, bench: Benchmark, data: RedirectData, items: Sequence[QAItem], positions: str
) -> Batch:
    """Prompt + reference answer for each item (left-padded), with its loss position."""
    inputs = encode_items(lm, bench, items, [i.answer for i in items])
    tails = [data.tail(i) for i in items]
    answer_labels(inputs, tails)  # checks that each row ends with its answer tokens
    seq = inputs["input_ids"].shape[1]
    if positions == "last":
        target = [seq - len(t) - 1 for t in tails]
    else:  # the last answer token, before the end-of-turn token
        target = [seq - 1 - bool(lm.tokenizer.eos_token)] * len(items)
    target = torch.tensor(target, device=lm.device)
    other = inputs["attention_mask"].bool().clone()
    other[torch.arange(len(items), device=lm.device), target] = False
    return Batch(inputs, target, other)


def read_at(model: nn.Module, inputs: dict, module: nn.Module, which: str, stop: bool):
    """`module`'s `which` tensor ("output"/"input") for `model(**inputs)`, the pass ended there
    when `stop` (`hooks.read_site`)."""
    value = read_site(model, inputs, module, which, stop=stop)
    if value is None:
        raise RedirectError(f"the forward pass never reached {type(module).__name__}")
    return value


@dataclass(frozen=True)
class Site:
    """Where the loss is read: the `io` ("output"/"input") of decoder layer `layer`, written by
    decoder layer `writer` (the layer itself for "output", the one before for "input")."""

    layer: int
    io: str
    writer: int

    def module(self, lm: LoadedModel) -> nn.Module:
        return lm.adapter.layer(lm.model, self.layer)


def loss_site(lm: LoadedModel, probe: SteeringProbe) -> Site:
    """The probe's site in `lm`, checked: a clear `ProbeError` for a probe that does not fit."""
    probe.validate(lm)
    if probe.operation != "add":
        raise ProbeError(
            f"redirect writes an added direction (h0 + lam * v); this probe's operation is "
            f"{probe.operation!r}"
        )
    writer = probe.layer if probe.site == "output" else probe.layer - 1
    if writer < 0:
        raise ProbeError(
            "this probe reads the input of layer 0 (the embeddings): no decoder layer writes it"
        )
    return Site(probe.layer, probe.site, writer)


def resolve_modules(
    lm: LoadedModel, site: Site, names: Sequence[str], *, lora: bool = False
) -> list[str]:
    """Full module names (from `lm.model`) of the trainable modules (every parameter of each
    is trained, or a LoRA adapter on it); a clear error for a name that does not exist, cannot
    change the loss, or (with `lora`) is not a linear layer."""
    modules = dict(lm.model.named_modules())
    writer_path = lm.adapter.layer_path(site.writer)
    layer_prefix = lm.adapter.layer_path(0)[: -len("0")]
    resolved = []
    for name in names:
        full = name if name in modules else f"{writer_path}.{name}"
        if full not in modules or not name:
            linears = [
                n[len(writer_path) + 1 :]
                for n, m in modules.items()
                if n.startswith(writer_path + ".") and isinstance(m, nn.Linear)
            ]
            raise RedirectError(
                f"trainable module {name!r} does not exist (looked for {full!r}); the linear "
                f"modules of layer {site.writer} are: {', '.join(linears)}"
            )
        if full.startswith(layer_prefix):
            index = int(full[len(layer_prefix) :].split(".")[0])
            if index > site.writer:
                raise RedirectError(
                    f"trainable module {full!r} is in layer {index}, above the loss site "
                    f"({site.io} of layer {site.layer}): it cannot change the loss"
                )
        if not any(p.is_floating_point() for p in modules[full].parameters()):
            raise RedirectError(f"module {full!r} has no parameters to train")
        if lora and not isinstance(modules[full], nn.Linear):
            raise RedirectError(
                f"LoRA (lora_r > 0) adapts linear layers; {full!r} is a "
                f"{type(modules[full]).__name__} (name its linear submodules instead)"
            )
        resolved.append(full)
    return resolved
