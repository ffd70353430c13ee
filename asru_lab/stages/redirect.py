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
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.progress import tqdm
from asru_lab.stages.redirect_checkpoints import checkpoints, resume_from, save_checkpoint
from asru_lab.stages.redirect_config import RUN_ONLY_FIELDS, RedirectConfig, RedirectError
from asru_lab.stages.redirect_data import (
    Batch,
    RedirectData,
    Site,
    encode_batch,
    loss_site,
    prepare_data,
    read_at,
    resolve_modules,
)
from asru_lab.training import lora_wrap
from asru_lab.validation import nonfinite_tensor

REDIRECT_FILE = "redirect.json"


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
    h: torch.Tensor, h0: torch.Tensor, batch: Batch, shift: torch.Tensor | None
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
            batch = encode_batch(
                reference, bench, data, items[s : s + config.capture_batch_size], config.positions
            )
            h = read_at(model.model, batch.inputs, site.module(model), site.io, stop=True)
            h0 = read_at(reference.model, batch.inputs, site.module(reference), site.io, stop=True)
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
                batch = encode_batch(lm, bench, data, chunk, config.positions)
                a = read_at(lm.model, batch.inputs, module, "input", stop=True)
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


def _trainable(
    out: LoadedModel, modules: list[str], config: RedirectConfig
) -> dict[str, nn.Parameter]:
    """Mark the parameters to train (and wrap the modules in LoRA); returns them by name."""
    out.model.requires_grad_(False)
    if config.lora_r:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)  # LoRA init
            out.model = lora_wrap(
                out.model, modules, r=config.lora_r, alpha=config.lora_alpha, dropout=0.0
            )
    else:
        named = dict(out.model.named_modules())
        for name in modules:
            named[name].requires_grad_(True)
    return {n: p for n, p in out.model.named_parameters() if p.requires_grad}


def _start(
    directory: Path | None,
    config: RedirectConfig,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    signature: dict,
) -> tuple[int, dict[str, list[float]]]:
    """(first step, losses so far): 0 and none for a new run, else the newest readable
    checkpoint's, loaded into `params` and `optimizer` (`config.resume` must ask for it)."""
    if directory is not None and directory.is_dir() and checkpoints(directory):
        found = checkpoints(directory)
        if not config.resume:
            raise RedirectError(
                f"{directory} holds checkpoints of an earlier run (newest: {found[-1].name}); "
                "pass resume=True (CLI: --resume) to continue it, or delete the directory"
            )
        state = resume_from(found, params, optimizer, signature, stacklevel=5)
        return state["step"], state["losses"]
    if config.resume:
        warnings.warn(
            f"resume=True but no checkpoint in {directory}: starting from the beginning",
            stacklevel=4,
        )
    return 0, {"forget": [], "retain": []}


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
    signature = _signature(lm, probe, bench, config)
    directory = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    start, losses = _start(directory, config, params, optimizer, signature)
    resumed_from = start or None

    def loss_on(items: Sequence[QAItem], forget: bool) -> torch.Tensor:
        batch = encode_batch(lm, bench, data, items, config.positions)
        stop = config.early_exit
        with torch.no_grad():
            h0 = read_at(lm.model, batch.inputs, site.module(lm), site.io, stop=stop)
        h = read_at(out.model, batch.inputs, site_module, site.io, stop=stop)
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
            save_checkpoint(directory, step, params, optimizer, state, config.keep_checkpoints)

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
    out = lm.clone(copy_only=modules)  # only the trained modules change
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
