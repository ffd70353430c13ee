"""Stage 1.2 of ASRU: write the steering direction into the weights (activation-steering
optimisation, RMU-style).

With `h` the residual stream at the probe's site (layer L, output or input), `h0` the same in
the frozen model, `v` the probe's direction and every MSE a mean over token vectors and hidden
dimensions, `redirect` minimises

    F = MSE_f(h, h0 + lam * v) + alpha * MSE_r(h, h0) + beta * MSE_p(h, h0)

over forget positions `f` and retain positions `r` (the last prompt token of the forget and
retain people's generation questions by default) and, our addition, every other token `p` of
those prompts and their reference answers (`preserve_weight` beta; the paper has none: without
it the edit also acts on tokens where v was never measured, including the ones generated).

Exact solver. If the only trainable module is the linear that ends the layer writing the site
(`mlp.down_proj`), then `h = h0 + dW a` with `a` that module's input, which training does not
change. With `G_S = mean a a^T` over the positions of set S, `mu = mean_f a`, `D` the hidden size
and `A = G_f + alpha G_r + beta G_p`,

    F(dW) = (tr(dW A dW^T) - 2 lam v^T dW mu + lam^2 |v|^2) / D,

minimised by the rank-one update `dW* = lam v w^T` with `A w = mu`; `w . a` is a readout fitted
to be 1 on forget positions and 0 elsewhere, and `F(dW*) = lam^2 |v|^2 (1 - mu . w) / D`. One
forward pass (stopped at that module) accumulates `A` and `mu` in float64, then one Cholesky
solve. A singular `A` (fewer distinct token vectors than inputs) gets a small ridge, and says so.

SGD solver: AdamW on any set of modules (full weights or LoRA), alternating a forget and a
retain batch as the public code does, with the forward pass stopped at the site (nothing above
it changes the loss), checkpoints and resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from asru_lab.artifacts import (
    atomic_dir,
    claim_output,
    is_marked,
    set_aside,
    write_json_atomic,
)
from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem, stratified_sample
from asru_lab.errors import AsruLabError
from asru_lab.generation import encode
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import ProbeError, SteeringProbe
from asru_lab.stages.finetune import Example, answer_labels, answer_tokens
from asru_lab.validation import check_fields, check_value, nonfinite_entry, nonfinite_tensor

REDIRECT_FILE = "redirect.json"
CHECKPOINT_PREFIX = "step-"
SOLVERS = ("auto", "closed_form", "sgd")
LOSS_POSITIONS = ("last", "answer_end")
# Fields that do not change what is computed; a checkpoint may be resumed when they differ.
RUN_ONLY_FIELDS = (
    "progress",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "capture_batch_size",
)


class RedirectError(AsruLabError, ValueError):
    """Stage 1.2 was asked for something it cannot do; the message says what and why."""


@dataclass
class RedirectConfig:
    """How stage 1.2 trains. Defaults: the paper's, with the retain side scaled to the model.

    The paper (4B/8B models) uses alpha 1, no preserve term and the last token of prompt +
    answer; `RedirectConfig.paper()` gives exactly that. On the 6-layer embedded model the exact
    optimum of that objective costs 6 points of retain recall: a readout that fits the forget
    set's last token also fires on some retain prompts and on generated tokens. alpha 10 and
    preserve_weight 30 keep retain within 2 points (README, "Stage 1.2").
    """

    lam: float = 3.0  # lambda: forget positions are pushed to h0 + lam * v (paper: 3)
    alpha: float = 10.0  # weight of the retain loss (paper: 1 on 4B/8B models)
    preserve_weight: float = 30.0  # beta: weight of keeping every other token unchanged (paper: 0)
    positions: str = "last"  # loss positions: "last" prompt token (where v was measured) or
    # "answer_end" (last token of prompt + reference answer, the public code)
    modules: tuple[str, ...] = ("mlp.down_proj",)  # trainable modules (all their parameters),
    # relative to the layer that writes the site, or full names from model.named_modules()
    solver: str = "auto"  # "closed_form", "sgd", or "auto": closed_form when it is exact
    ridge: float = 0.0  # closed form: ridge added to A, as a fraction of A's mean diagonal
    singular_ridge: float = 1e-6  # closed form: the ridge used when A is singular
    lr: float = 1e-4  # SGD: AdamW learning rate (paper)
    batch_size: int = 2  # SGD: examples per forget step and per retain step (paper)
    epochs: int = 3  # SGD: passes over the forget set (paper)
    weight_decay: float = 0.0  # SGD: decoupled weight decay (it shrinks the whole matrix)
    lora_r: int = 0  # SGD: LoRA rank on the modules; 0 trains their full weights
    lora_alpha: int = 16  # SGD: LoRA scaling numerator
    early_exit: bool = True  # stop forward passes at the site (nothing above it matters)
    text_only: bool = True  # include the text-only questions (by name)
    forget_people: tuple[str, ...] | None = None  # restrict the forget set to these person ids
    max_forget: int | None = None  # cap on forget examples (seeded, spread over people)
    max_retain: int | None = None  # cap on retain examples (seeded, spread over people)
    checkpoint_dir: str | None = None  # SGD: where checkpoints go (None: no checkpoints)
    checkpoint_every: int = 100  # SGD: steps (a forget + a retain batch) between checkpoints
    keep_checkpoints: int = 2  # SGD: how many recent checkpoints to keep
    resume: bool = False  # SGD: continue from the newest checkpoint in checkpoint_dir
    capture_batch_size: int = 32  # examples per forward pass when reading activations
    seed: int = 0  # sampling, data order and LoRA init: same seed, same model
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(
            self,
            RedirectError,
            lam=">= 0",
            alpha=">= 0",
            preserve_weight=">= 0",
            ridge=">= 0",
            singular_ridge="> 0",
            lr="> 0",
            batch_size=">= 1",
            epochs=">= 1",
            weight_decay=">= 0",
            lora_r=">= 0",
            lora_alpha="> 0",
            max_forget=">= 1",
            max_retain=">= 1",
            checkpoint_every=">= 1",
            keep_checkpoints=">= 1",
            capture_batch_size=">= 1",
        )
        if self.solver not in SOLVERS:
            raise RedirectError(f"unknown solver {self.solver!r}; expected one of {SOLVERS}")
        if self.positions not in LOSS_POSITIONS:
            raise RedirectError(
                f"unknown loss positions {self.positions!r}; expected one of {LOSS_POSITIONS}"
            )
        if not self.modules:
            raise RedirectError("modules is empty: name at least one trainable module")
        self.modules = tuple(self.modules)
        if self.forget_people is not None:
            self.forget_people = tuple(self.forget_people)

    @classmethod
    def paper(cls, **overrides) -> RedirectConfig:
        """The public code's settings: alpha 1, no preserve term, last token of prompt + answer,
        SGD on down_proj (AdamW lr 1e-4, batch 2, 3 epochs)."""
        base = {"alpha": 1.0, "preserve_weight": 0.0, "positions": "answer_end", "solver": "sgd"}
        return cls(**{**base, **overrides})


# --- data -----------------------------------------------------------------------------------


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

    def qa(split: str) -> list[QAItem]:
        return [i for i in bench.split(split, "qa") if config.text_only or i.image]

    forget = qa("forget")
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
    retain = qa("retain")
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
class _Batch:
    inputs: dict
    target: torch.Tensor  # [B] index of each row's loss position
    other: torch.Tensor  # [B, T] bool: every other real token (the preserve positions)


def _encode(
    lm: LoadedModel, bench: Benchmark, data: RedirectData, items: Sequence[QAItem], positions: str
) -> _Batch:
    """Prompt + reference answer for each item (left-padded), with its loss position."""
    images = [bench.load_image(i.image) if i.image else None for i in items]
    inputs = encode(lm, images, [i.question for i in items], [i.answer for i in items])
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
    return _Batch(inputs, target, other)


# --- forward passes stopped at a module -------------------------------------------------------


class _EarlyExit(Exception):
    """Raised by a hook to end a forward pass once the needed tensor is read."""


@contextmanager
def _reading(module: nn.Module, which: str, stop: bool) -> Iterator[dict]:
    """Record `module`'s `output` or `input` (its first positional/hidden_states argument) in
    the yielded dict under "value"; with `stop`, end the forward pass there."""
    box: dict = {}

    if which == "output":

        def hook(_module, _args, output):
            box["value"] = output if torch.is_tensor(output) else output[0]
            if stop:
                raise _EarlyExit

        handle = module.register_forward_hook(hook)
    else:

        def hook(_module, args, kwargs):
            box["value"] = args[0] if args else kwargs["hidden_states"]
            if stop:
                raise _EarlyExit

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def _run(model: nn.Module, inputs: dict, module: nn.Module, which: str, stop: bool):
    with _reading(module, which, stop) as box:
        try:
            model(**inputs)
        except _EarlyExit:
            pass
    if "value" not in box:
        raise RedirectError(f"the forward pass never reached {type(module).__name__}")
    return box["value"]


# --- the site and the trainable modules --------------------------------------------------------


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


def _closed_form_ok(lm: LoadedModel, site: Site, modules: list[str], config: RedirectConfig):
    """None if the closed form is exact for this setup, else the reason it is not."""
    exact = lm.adapter.mlp_out_path(site.writer)
    if config.lora_r:
        return "LoRA (lora_r > 0) needs the SGD solver"
    if modules != [exact]:
        return (
            f"the closed form is exact only when the single trainable module is {exact!r} (the "
            f"linear that ends the layer writing the site); got {modules}"
        )
    if not isinstance(dict(lm.model.named_modules())[exact], nn.Linear):
        return f"{exact!r} is not an nn.Linear"
    return None


def probe_fingerprint(probe: SteeringProbe) -> str:
    """A short hash of what redirect uses from a probe: direction, layer, site and model."""
    digest = hashlib.sha256(probe.direction.numpy().tobytes())
    digest.update(json.dumps([probe.layer, probe.site, probe.model], sort_keys=True).encode())
    return digest.hexdigest()[:16]


# --- the objective ----------------------------------------------------------------------------


def _squared_errors(
    h: torch.Tensor, h0: torch.Tensor, batch: _Batch, shift: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared error at the loss positions (target h0 + shift) and the other tokens."""
    rows = torch.arange(h.shape[0], device=h.device)
    at = h[rows, batch.target] - h0[rows, batch.target]
    if shift is not None:
        at = at - shift
    return (at.float() ** 2).sum(), ((h - h0)[batch.other].float() ** 2).sum()


def _total(terms: dict, config: RedirectConfig) -> float:
    weighted = config.alpha * terms["retain"] + config.preserve_weight * terms["preserve"]
    return terms["forget"] + weighted


@torch.no_grad()
def objective(
    model: LoadedModel,
    reference: LoadedModel,
    probe: SteeringProbe,
    bench: Benchmark,
    config: RedirectConfig | None = None,
    *,
    data: RedirectData | None = None,
) -> dict:
    """The stage 1.2 objective of `model` against the frozen `reference`, measured by forward
    passes over the training data of `config`: its terms (`forget`, `retain`, `preserve`, each
    an MSE) and `total` = forget + alpha * retain + preserve_weight * preserve."""
    config = config or RedirectConfig()
    site = loss_site(reference, probe)
    data = data or prepare_data(reference, bench, config)
    shift = config.lam * probe.direction.to(reference.device)
    sums = {"forget": 0.0, "retain": 0.0, "preserve": 0.0}
    counts = {"forget": 0, "retain": 0, "preserve": 0}
    hidden = reference.hidden_size
    for name, items in (("forget", data.forget), ("retain", data.retain)):
        for s in range(0, len(items), config.capture_batch_size):
            batch = _encode(
                reference, bench, data, items[s : s + config.capture_batch_size], config.positions
            )
            h = _run(model.model, batch.inputs, site.module(model), site.io, stop=True)
            h0 = _run(reference.model, batch.inputs, site.module(reference), site.io, stop=True)
            at, other = _squared_errors(h, h0, batch, shift if name == "forget" else None)
            sums[name] += float(at)
            counts[name] += len(batch.target) * hidden
            sums["preserve"] += float(other)
            counts["preserve"] += int(batch.other.sum()) * hidden
    terms = {k: sums[k] / counts[k] if counts[k] else 0.0 for k in sums}
    terms["total"] = _total(terms, config)
    return terms


# --- exact solver -----------------------------------------------------------------------------


@dataclass
class _Gram:
    """float64 sum of outer products, sum and count of the token vectors of one group."""

    gram: torch.Tensor
    total: torch.Tensor
    count: int = 0

    def add(self, vectors: torch.Tensor) -> None:
        vectors = vectors.to(self.gram.dtype)
        self.gram += vectors.T @ vectors
        self.total += vectors.sum(0)
        self.count += vectors.shape[0]

    @classmethod
    def zeros(cls, width: int, dtype: torch.dtype, device: torch.device) -> _Gram:
        return cls(
            torch.zeros(width, width, dtype=dtype, device=device),
            torch.zeros(width, dtype=dtype, device=device),
        )

    def mean_gram(self) -> torch.Tensor:
        return self.gram / max(self.count, 1)


def _solve(A: torch.Tensor, mu: torch.Tensor, config: RedirectConfig) -> tuple[torch.Tensor, dict]:
    """w with (A + ridge) w = mu, by Cholesky; a singular A gets `singular_ridge` and a warning."""
    n = A.shape[0]
    scale = float(A.diagonal().mean())
    if not scale > 0:
        raise RedirectError("the trainable module's inputs are all zero: nothing to solve")
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    ridge = config.ridge * scale
    factor, info = torch.linalg.cholesky_ex(A + ridge * eye)
    pivot = float(factor.diagonal().min() ** 2) / float(A.diagonal().max()) if info == 0 else 0.0
    singular = not pivot > 1e-12
    if singular:
        ridge = max(ridge, config.singular_ridge * scale)
        warnings.warn(
            f"the closed-form system is singular ({n} inputs to the trainable module, smallest "
            f"relative pivot {pivot:.1e}: too few distinct training tokens to pin down the "
            f"update); solving with ridge {ridge:.3g} ({config.singular_ridge:g} x the mean "
            "diagonal) instead",
            stacklevel=3,
        )
        factor = torch.linalg.cholesky(A + ridge * eye)
    w = torch.cholesky_solve(mu.unsqueeze(1), factor).squeeze(1)
    return w, {"ridge": ridge, "singular": singular, "min_relative_pivot": pivot}


def _closed_form(
    lm: LoadedModel,
    out: LoadedModel,
    probe: SteeringProbe,
    bench: Benchmark,
    data: RedirectData,
    config: RedirectConfig,
    site: Site,
    module_name: str,
) -> dict:
    module = dict(lm.model.named_modules())[module_name]
    acc = torch.float64 if lm.device.type != "mps" else torch.float32
    width = module.in_features
    groups = {g: _Gram.zeros(width, acc, lm.device) for g in ("forget", "retain", "preserve")}
    started = time.perf_counter()
    total = len(data.forget) + len(data.retain)
    with (
        torch.no_grad(),
        tqdm(total=total, desc="redirect: read activations", disable=not config.progress) as bar,
    ):
        for name, items in (("forget", data.forget), ("retain", data.retain)):
            for s in range(0, len(items), config.capture_batch_size):
                chunk = items[s : s + config.capture_batch_size]
                batch = _encode(lm, bench, data, chunk, config.positions)
                a = _run(lm.model, batch.inputs, module, "input", stop=True)
                rows = torch.arange(len(chunk), device=a.device)
                groups[name].add(a[rows, batch.target])
                groups["preserve"].add(a[batch.other])
                bar.update(len(chunk))
    capture_s = time.perf_counter() - started
    solve_started = time.perf_counter()
    f, r, p = groups["forget"], groups["retain"], groups["preserve"]
    A = f.mean_gram() + config.alpha * r.mean_gram() + config.preserve_weight * p.mean_gram()
    mu = f.total / f.count
    w, solve_info = _solve(A, mu, config)
    v = probe.direction.to(device=lm.device, dtype=acc)
    # lam * lam overflows to inf (refused after the solve) where lam**2 would raise
    scale = config.lam * config.lam * float(v @ v) / lm.hidden_size
    terms = {
        "forget": scale * float(w @ f.mean_gram() @ w - 2 * w @ mu + 1),
        "retain": scale * float(w @ r.mean_gram() @ w) if r.count else 0.0,
        "preserve": scale * float(w @ p.mean_gram() @ w) if p.count else 0.0,
    }
    terms["total"] = _total(terms, config)
    update = config.lam * torch.outer(v, w)
    target = dict(out.model.named_modules())[module_name]
    with torch.no_grad():
        target.weight += update.to(target.weight.dtype)
    readout = {
        "forget": float(w @ mu),
        "retain": float(w @ r.total / r.count) if r.count else None,
        "preserve": float(w @ p.total / p.count) if p.count else None,
    }
    return {
        "objective": {"initial": scale, "final": terms["total"], "terms": terms},
        "closed_form": {
            **solve_info,
            "inputs": width,
            "readout_mean": readout,
            "update_norm": float(update.norm()),
        },
        "tokens": {"forget": f.count, "retain": r.count, "preserve": p.count},
        "seconds": {"capture": capture_s, "solve": time.perf_counter() - solve_started},
    }


# --- SGD solver -------------------------------------------------------------------------------


def _permutation(n: int, seed: int, stream: int, index: int) -> list[int]:
    """A seeded permutation of range(n), a pure function of (seed, stream, index): data order
    is the same whether or not a run was interrupted and resumed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + index)
    return torch.randperm(n, generator=generator).tolist()


def _signature(
    lm: LoadedModel, probe: SteeringProbe, bench: Benchmark, config: RedirectConfig
) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k not in RUN_ONLY_FIELDS}
    signature = {
        "config": settings,
        "probe": probe_fingerprint(probe),
        "model": lm.fingerprint(),
        "benchmark_fingerprint": bench.fingerprint(),
    }
    return json.loads(json.dumps(signature))  # as a checkpoint's state.json reads back


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoint folders (`step-<digits>`) in `directory`, oldest first."""
    found = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _save_checkpoint(
    directory: Path,
    step: int,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int,
) -> None:
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    names = list(params)
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    if not is_marked(directory):
        claim_output(directory, whole=True)
    with atomic_dir(directory / f"{CHECKPOINT_PREFIX}{step:07d}") as tmp:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        write_json_atomic(
            tmp / "state.json",
            {**state, "step": step, "params": names, "param_groups": opt["param_groups"]},
        )
    for old in _checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


class _DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read back; the message says which part and why."""


def _read_checkpoint(path: Path, params: dict[str, nn.Parameter]) -> tuple[dict, dict]:
    """(state.json, tensors) of checkpoint `path`, every tensor `params` needs present and of
    the right shape; else `_DamagedCheckpoint`. Reads only: nothing is loaded into the run."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _DamagedCheckpoint("state.json is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _DamagedCheckpoint(f"state.json does not parse ({exc})") from exc
    fields = ("step", "params", "param_groups", "signature", "losses")
    if not isinstance(state, dict) or not all(k in state for k in fields):
        raise _DamagedCheckpoint(f"state.json lacks some of {', '.join(fields)}")
    check_value(state["step"], int, "state.json: step", _DamagedCheckpoint, ">= 1")
    check_value(
        state["losses"], dict[str, tuple[float, ...]], "state.json: losses", _DamagedCheckpoint
    )
    found = nonfinite_entry(state)
    if found:
        raise _DamagedCheckpoint(f"state.json holds {found}")
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
    except FileNotFoundError as exc:
        raise _DamagedCheckpoint("trainable.safetensors is missing") from exc
    except (OSError, SafetensorError) as exc:
        raise _DamagedCheckpoint(f"trainable.safetensors does not load ({exc})") from exc
    for name, param in params.items():
        tensor = tensors.get(f"param.{name}")
        if tensor is None or tensor.shape != param.shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise _DamagedCheckpoint(f"tensor param.{name} is {found}")
    bad = nonfinite_tensor(tensors.items())
    if bad:
        raise _DamagedCheckpoint(f"tensor {bad} holds NaN or infinite values")
    return state, tensors


def _load_checkpoint(
    path: Path,
    state: dict,
    tensors: dict[str, torch.Tensor],
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Copy a read checkpoint (`_read_checkpoint`) into `params` and `optimizer`."""
    names = state["params"]
    if names != list(params):
        raise RedirectError(
            f"checkpoint {path} trains other parameters than this run "
            f"({len(names)} vs {len(params)}); it comes from a different configuration"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"])
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, slot = key[len("optimizer.") :].rsplit(".", 1)
            slots.setdefault(names.index(name), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})


def _resume(
    found: list[Path],
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    signature: dict,
) -> dict:
    """Load the newest readable checkpoint of `found` (oldest first) and return its state.

    Newer damaged ones are moved aside to `damaged-<name>` (training writes them again) and
    named in a warning; if none is readable, RedirectError."""
    damaged: list[str] = []
    for path in reversed(found):
        try:
            state, tensors = _read_checkpoint(path, params)
        except _DamagedCheckpoint as exc:
            damaged.append(f"{path.name}: {exc}")
            continue
        if state["signature"] != signature:
            changed = [k for k in signature if state["signature"].get(k) != signature[k]]
            raise RedirectError(
                f"checkpoint {path} was written by a different run ({', '.join(changed)} "
                "differ); resume with the same model, probe, data and settings, or delete it"
            )
        _load_checkpoint(path, state, tensors, params, optimizer)
        if damaged:
            set_aside(found[found.index(path) + 1 :])
            warnings.warn(
                f"cannot read checkpoint {'; '.join(damaged)}. Resuming from {path} (step "
                f"{state['step']}) instead; the damaged checkpoint now lies in "
                f"{path.parent}/damaged-{CHECKPOINT_PREFIX}*",
                stacklevel=4,
            )
        return state
    raise RedirectError(
        f"no checkpoint in {found[0].parent} can be read: {'; '.join(damaged)}; delete the "
        "directory (or choose another) to start from the beginning"
    )


def _trainable(
    out: LoadedModel, modules: list[str], config: RedirectConfig
) -> dict[str, nn.Parameter]:
    """Mark the parameters to train (and wrap the modules in LoRA); returns them by name."""
    out.model.requires_grad_(False)
    if config.lora_r:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                peft_model = get_peft_model(
                    out.model,
                    LoraConfig(
                        r=config.lora_r,
                        lora_alpha=config.lora_alpha,
                        lora_dropout=0.0,
                        target_modules=modules,
                        bias="none",
                    ),
                )
        out.model = peft_model
    else:
        named = dict(out.model.named_modules())
        for name in modules:
            named[name].requires_grad_(True)
    return {n: p for n, p in out.model.named_parameters() if p.requires_grad}


def _sgd(
    lm: LoadedModel,
    out: LoadedModel,
    probe: SteeringProbe,
    bench: Benchmark,
    data: RedirectData,
    config: RedirectConfig,
    site: Site,
    modules: list[str],
) -> dict:
    site_module = site.module(out)  # taken before any LoRA wrapping; the object stays the same
    params = _trainable(out, modules, config)
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=config.lr, weight_decay=config.weight_decay
    )
    shift = config.lam * probe.direction.to(lm.device)
    per_epoch = math.ceil(len(data.forget) / config.batch_size)
    total = per_epoch * config.epochs
    losses: dict[str, list[float]] = {"forget": [], "retain": []}
    signature = _signature(lm, probe, bench, config)
    directory = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    start, resumed_from = 0, None
    if directory is not None and directory.is_dir() and _checkpoints(directory):
        found = _checkpoints(directory)
        if not config.resume:
            raise RedirectError(
                f"{directory} holds checkpoints of an earlier run (newest: {found[-1].name}); "
                "pass resume=True (CLI: --resume) to continue it, or delete the directory"
            )
        state = _resume(found, params, optimizer, signature)
        start = resumed_from = state["step"]
        losses = state["losses"]
    elif config.resume:
        warnings.warn(
            f"resume=True but no checkpoint in {directory}: starting from the beginning",
            stacklevel=3,
        )

    def loss_on(items: Sequence[QAItem], forget: bool) -> torch.Tensor:
        batch = _encode(lm, bench, data, items, config.positions)
        stop = config.early_exit
        with torch.no_grad():
            h0 = _run(lm.model, batch.inputs, site.module(lm), site.io, stop=stop)
        h = _run(out.model, batch.inputs, site_module, site.io, stop=stop)
        at, other = _squared_errors(h, h0, batch, shift if forget else None)
        hidden = h.shape[-1]
        loss = at / (len(items) * hidden) * (1.0 if forget else config.alpha)
        n_other = int(batch.other.sum()) * hidden
        if config.preserve_weight and n_other:
            loss = loss + config.preserve_weight * other / n_other
        return loss

    def step_on(loss: torch.Tensor, step: int) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            _refuse_nonfinite((), value, f"SGD solver (step {step + 1} of {total})", probe, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    def checkpoint(step: int) -> None:
        if directory is not None:
            _refuse_nonfinite(params.items(), 0.0, f"SGD solver (step {step})", probe, config)
            state = {"signature": signature, "losses": losses}
            _save_checkpoint(directory, step, params, optimizer, state, config.keep_checkpoints)

    bs = config.batch_size
    step = start
    bar = tqdm(total=total, initial=start, desc="redirect: sgd", disable=not config.progress)
    started = time.perf_counter()
    try:
        for step in range(start, total):
            epoch, k = divmod(step, per_epoch)
            order = _permutation(len(data.forget), config.seed, 0, epoch)
            forget = [data.forget[i] for i in order[k * bs : (k + 1) * bs]]
            losses["forget"].append(step_on(loss_on(forget, True), step))
            if data.retain and config.alpha > 0:
                positions = range(step * bs, step * bs + bs)
                n = len(data.retain)
                retain = [
                    data.retain[_permutation(n, config.seed, 1, p // n)[p % n]] for p in positions
                ]
                losses["retain"].append(step_on(loss_on(retain, False), step))
            bar.update(1)
            bar.set_postfix(
                forget=f"{losses['forget'][-1]:.4g}",
                retain=f"{losses['retain'][-1]:.4g}" if losses["retain"] else "-",
            )
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
                checkpoint(step + 1)
    finally:
        bar.close()
    if config.lora_r:
        out.model = out.model.merge_and_unload()
    out.model.requires_grad_(False)
    return {
        "losses": losses,
        "steps": total,
        "resumed_from": resumed_from,
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "seconds": {"train": time.perf_counter() - started},
    }


# --- the stage ------------------------------------------------------------------------------


def _refuse_nonfinite(
    weights: Iterable[tuple[str, torch.Tensor]],
    objective: float,
    solver: str,
    probe: SteeringProbe,
    config: RedirectConfig,
) -> None:
    """Raise RedirectError if a trained weight holds NaN or infinite values or the objective
    (or loss) is not finite: such a model is never returned, checkpointed or saved."""
    bad = nonfinite_tensor(weights)
    if bad is None and math.isfinite(objective):
        return
    what = f"NaN or infinite weights in {bad}" if bad else f"a non-finite objective ({objective})"
    lower = f", or lower lr (now {config.lr:g})" if "sgd" in solver.lower() else ""
    raise RedirectError(
        f"the {solver} left {what}; nothing was saved. Check the probe's direction "
        f"(|v| = {float(probe.direction.norm()):.3g}) and lam ({config.lam:g}){lower}"
    )


def redirect(
    lm: LoadedModel,
    probe: SteeringProbe,
    bench: Benchmark,
    config: RedirectConfig | None = None,
) -> tuple[LoadedModel, dict]:
    """Stage 1.2: a new model whose weights do what the probe did (`lm` is not modified).

    Returns `(model, record)`. The record (JSON-ready, what `redirect.json` holds) has the
    config, solver, probe fingerprint, data sizes, the objective before and after (and its
    terms), the per-step SGD losses, and timings in seconds.
    """
    config = config or RedirectConfig()
    site = loss_site(lm, probe)
    modules = resolve_modules(lm, site, config.modules, lora=config.lora_r > 0)
    reason = _closed_form_ok(lm, site, modules, config)
    solver = config.solver
    if solver == "auto":
        solver = "closed_form" if reason is None else "sgd"
    elif solver == "closed_form" and reason is not None:
        raise RedirectError(f"solver='closed_form' is not possible here: {reason}")
    started = time.perf_counter()
    data = prepare_data(lm, bench, config)
    was_training = lm.model.training
    lm.model.eval()
    out = lm.clone()
    out.model.eval()
    try:
        if solver == "closed_form":
            result = _closed_form(lm, out, probe, bench, data, config, site, modules[0])
        else:
            result = _sgd(lm, out, probe, bench, data, config, site, modules)
            measured = objective(out, lm, probe, bench, config, data=data)
            v = probe.direction
            initial = config.lam * config.lam * float(v @ v) / lm.hidden_size
            result["objective"] = {
                "initial": initial,
                "final": measured["total"],
                "terms": measured,
            }
    finally:
        lm.model.train(was_training)
    named = dict(out.model.named_modules())
    trained = [(f"{m}.{n}", p) for m in modules for n, p in named[m].named_parameters()]
    _refuse_nonfinite(trained, result["objective"]["final"], f"{solver} solver", probe, config)
    out.model.eval()
    out.name = f"{lm.name}+redirect"
    out.info = {
        **lm.info,
        "redirect": {
            "base_model": lm.name,
            "probe": probe_fingerprint(probe),
            "solver": solver,
            "benchmark_fingerprint": bench.fingerprint(),
        },
    }
    seconds = result.pop("seconds")
    seconds["total"] = time.perf_counter() - started
    record = {
        "solver": solver,
        "config": json.loads(json.dumps(asdict(config))),
        "probe": {
            "fingerprint": probe_fingerprint(probe),
            "layer": probe.layer,
            "site": probe.site,
            "direction_norm": float(probe.direction.norm()),
            "model": probe.model,
        },
        "base_model": lm.fingerprint(),
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "site": dataclasses.asdict(site),
        "trainable": modules,
        "examples": {"forget": len(data.forget), "retain": len(data.retain)},
        **result,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return out, record


def save_redirected(
    lm: LoadedModel, record: dict, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the model (`load_model(out_dir)` reads it) and `redirect.json`, atomically
    (`overwrite`: see `LoadedModel.save`)."""
    return lm.save(out_dir, records={REDIRECT_FILE: record}, overwrite=overwrite)
