"""The trace itself: `trace_causal` packs every person's clean, corrupted and patched runs
into batched forward passes on one backend and gathers the probabilities into a
`CausalTrace`; `compare_with_locate` sets its last-token residual peak beside `locate`'s
probe layer."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict

import torch

from asru_lab.capture import check_layers
from asru_lab.causal.cases import (
    _Case,
    _cases,
    _draw_name_noise,
    _draw_noise,
    _left_pad,
    _noise,
    _pad_batch,
    select_items,
)
from asru_lab.causal.config import BACKENDS, CausalTraceConfig, CausalTraceError
from asru_lab.causal.lens_backend import _LensBackend
from asru_lab.causal.nnsight_backend import _NnsightBackend
from asru_lab.causal.patching import _Run, site_names
from asru_lab.causal.result import CausalTrace, PersonTrace, _mean
from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm


# --- the trace ------------------------------------------------------------------------------
def _backend(lm: LoadedModel, name: str, *, corruption: str):
    """The runner for `name`, reaching what `corruption` noises: the visual features
    ("noise"), the token embeddings ("name", nnsight only) or nothing ("swap")."""
    if name == "transformer_lens":
        return _LensBackend(lm, corruption == "noise")
    return _NnsightBackend(lm, corruption == "noise", embeddings=corruption == "name")


def _probabilities(logits: torch.Tensor, targets: Sequence[int]) -> list[float]:
    probs = torch.softmax(logits.double(), dim=-1)
    return probs[torch.arange(len(targets)), torch.tensor(targets)].tolist()


def trace_causal(
    lm: LoadedModel,
    bench: Benchmark,
    config: CausalTraceConfig | None = None,
    *,
    items: Sequence[QAItem] | None = None,
    probe=None,
) -> CausalTrace:
    """Causal tracing of `config.attribute` for the chosen people (or the given `items`).

    Returns a `CausalTrace`: per person p_clean, p_corrupt and p_patched per component x
    layer x position group (probabilities in [0, 1]); with `probe` (a `SteeringProbe` from
    `locate`), the last-token residual peak is set beside the probe's layer in `comparison`.
    """
    config = config or CausalTraceConfig()
    layers = check_layers(lm, config.layers)
    if probe is not None:
        probe.validate(lm)
    items = list(items) if items is not None else select_items(bench, config)
    if not items:
        raise BenchmarkError("nothing to trace: the item list is empty")
    started = time.perf_counter()
    cases = _cases(lm, bench, items, config)
    backend = _backend(lm, config.backend, corruption=config.corruption)
    sites = [(c, layer) for c in config.components for layer in layers]
    n_jobs = len(_jobs(cases, sites, config.groups))
    counters = {"forward_rows": 0, "forward_passes": 0, "rows_per_pass": []}
    setup = time.perf_counter() - started
    _run_all(lm, backend, cases, sites, n_jobs, config, counters)
    seconds = time.perf_counter() - started
    trace = CausalTrace(
        model=lm.fingerprint(),
        dataset_fingerprint=bench.fingerprint(),
        config=json.loads(json.dumps(asdict(config))),  # as `load` reads it back
        layers=list(layers),
        components=list(config.components),
        groups=list(config.groups),
        hooks={
            b: {c: [site_names(lm, b, c, layer) for layer in layers] for c in config.components}
            for b in BACKENDS
        },
        people=[_person_trace(lm, case, layers, config) for case in cases],
        timing={
            "seconds": round(seconds, 3),
            "setup_seconds": round(setup, 3),  # encoding the prompts, booting the backend
            "people": len(cases),
            "patched_runs": n_jobs,
            **counters,
            "batch_size": config.batch_size,
        },
    )
    _warn_if_undefined(trace, config)
    if probe is not None:
        trace.comparison = compare_with_locate(trace, probe)
    return trace


def _run_all(lm, backend, cases, sites, n_jobs: int, config, counters) -> None:
    """Every forward pass of the trace, the model in eval mode meanwhile."""
    was_training = lm.model.training
    lm.model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=2 * len(cases) + n_jobs, desc="causal trace", disable=not config.progress
            ) as bar,
        ):
            # people in chunks: their clean activations are held only while their runs go
            for start in range(0, len(cases), config.batch_size):
                chunk = cases[start : start + config.batch_size]
                _clean_and_corrupt(lm, backend, chunk, sites, config, counters)
                bar.update(2 * len(chunk))
                jobs = _jobs(chunk, sites, config.groups)
                for first in range(0, len(jobs), config.batch_size):
                    part = jobs[first : first + config.batch_size]
                    _patched(lm, backend, part, config, counters)
                    bar.update(len(part))
                for case in chunk:
                    case.clean = {}
    finally:
        lm.model.train(was_training)


def _warn_if_undefined(trace: CausalTrace, config: CausalTraceConfig) -> None:
    """Warn (at `trace_causal`'s caller) when no person's corruption lowered p enough for a
    recovered fraction, with the likely reason."""
    if not trace.people or trace.effective():
        return
    p_clean = _mean([p.p_clean for p in trace.people])
    why = (
        f"in the clean run the fact's first token has p {p_clean:.2f} on average: the "
        "model does not say the fact right there (check the question and the reference "
        "answer the prefix comes from)"
        if p_clean < 0.5
        else "the model does not need the image here: the teacher-forced answer prefix "
        "may already name the person (as before a birthplace), or the noise is too weak "
        "(raise noise_scale, or use 'swap')"
    )
    warnings.warn(
        f"the corruption lowered p by less than min_drop={config.min_drop} for every "
        f"person, so recovered fractions are undefined; {why}",
        stacklevel=3,
    )


def _jobs(cases: Sequence[_Case], sites, groups) -> list[tuple[_Case, tuple[str, int], str]]:
    """The patched runs: (case, site, group) for every group the case's prompt has."""
    return [
        (case, site, group)
        for case in cases
        for site in sites
        for group in groups
        if case.groups[group].any()
    ]


def _clean_and_corrupt(lm, backend, chunk, sites, config, counters) -> None:
    """The clean run (probabilities, activations at every site, the noise drawn from the
    visual features) and the corrupted run of a chunk of people: two forward passes."""
    batch, offsets = _pad_batch(lm, [c.inputs for c in chunk])
    noised = config.corruption in ("noise", "name")
    out = backend.run(_Run(batch, read_sites=sites, read_visual=noised))
    targets = [c.target_id for c in chunk]
    for r, (case, p) in enumerate(zip(chunk, _probabilities(out.logits, targets), strict=True)):
        case.p_clean = p
        case.clean = {s: out.sites[s][r, offsets[r] :].clone() for s in sites}
    if config.corruption == "noise":
        _draw_noise(chunk, out.visual, config)
    elif config.corruption == "name":
        _draw_name_noise(chunk, out.visual[0], offsets, config)
    batch, _ = _pad_batch(lm, [c.corrupt_inputs for c in chunk])
    out = backend.run(_Run(batch, noise=_noise(chunk, config, batch["input_ids"].shape[1])))
    for case, p in zip(chunk, _probabilities(out.logits, targets), strict=True):
        case.p_corrupt = p
    counters["forward_rows"] += 2 * len(chunk)
    counters["forward_passes"] += 2
    counters["rows_per_pass"] += [len(chunk), len(chunk)]


def _patched(lm, backend, part, config, counters) -> None:
    """One forward pass over patched runs: row r is its case's corrupted run with one site
    restored at one position group."""
    rows = [case for case, _, _ in part]
    batch, _ = _pad_batch(lm, [c.corrupt_inputs for c in rows])
    length = batch["input_ids"].shape[1]
    by_site: dict[tuple[str, int], list[int]] = {}
    for r, (_, site, _) in enumerate(part):
        by_site.setdefault(site, []).append(r)
    patches = {}
    for site, idx in by_site.items():
        mask = torch.stack([_left_pad(part[r][0].groups[part[r][2]], length) for r in idx])
        values = torch.stack([_left_pad(part[r][0].clean[site], length) for r in idx])
        patches[site] = (torch.tensor(idx, device=lm.device), mask.to(lm.device), values)
    out = backend.run(_Run(batch, noise=_noise(rows, config, length), patches=patches))
    probs = _probabilities(out.logits, [c.target_id for c in rows])
    for (case, site, group), p in zip(part, probs, strict=True):
        case.patched[(site, group)] = p
    counters["forward_rows"] += len(part)
    counters["forward_passes"] += 1
    counters["rows_per_pass"].append(len(part))


def _person_trace(lm, case: _Case, layers, config: CausalTraceConfig) -> PersonTrace:
    grids = {  # an empty group (no answer prefix) was not run: None
        c: [[case.patched.get(((c, layer), g)) for g in config.groups] for layer in layers]
        for c in config.components
    }
    return PersonTrace(
        person_id=case.person.id,
        name=case.person.name,
        split=case.person.split,
        question=case.question,
        image=case.item.image,
        attribute=case.item.attribute,
        value=case.item.value,
        answer_prefix=case.prefix,
        target_token=lm.tokenizer.decode([case.target_id]),
        target_id=case.target_id,
        swap_with=case.swap_with,
        group_sizes={g: int(case.groups[g].sum()) for g in config.groups},
        p_clean=case.p_clean,
        p_corrupt=case.p_corrupt,
        p_patched=grids,
    )


# --- next to locate -------------------------------------------------------------------------
def compare_with_locate(trace: CausalTrace, probe) -> dict:
    """The layer whose last-token residual stream recovers the most, beside the layer the
    `locate` sweep recommends (both as "the residual stream after layer L")."""
    theirs, ours = probe.model, trace.model
    for key in ("family", "hidden_size", "num_layers"):
        if theirs.get(key) != ours.get(key):
            raise CausalTraceError(
                f"the probe is for another model: model.{key} is {theirs.get(key)!r} in the "
                f"probe but {ours.get(key)!r} in the trace"
            )
    traced = "residual" in trace.components and "last" in trace.groups
    peak = trace.peak("residual", "last") if traced else None
    half = trace.first_layer("residual", "last") if traced else None
    after = probe.layer if probe.site == "output" else probe.layer - 1
    return {
        "causal": {
            "layer": None if peak is None else peak["layer"],
            "recovered_fraction": None if peak is None else peak["fraction"],
            "what": "restoring this layer's residual stream at the last token (in the "
            "corrupted run) brings back the largest share of the fact's probability. After "
            "the last layer this is always everything (that stream is the prediction), so the "
            "informative number is the next one",
            "half_recovery_layer": half,
            "half_recovery_what": "the first layer whose last-token residual stream alone "
            "recovers at least half: where the recalled fact has reached the position that "
            "predicts it",
        },
        "locate": {
            "layer": after,
            "probe_layer": probe.layer,
            "probe_site": probe.site,
            "alpha": probe.alpha,
            "positions": probe.positions,
            "what": "adding the knowledge-absence direction here best turns forget answers "
            "into refusals while keeping retain answers: where known vs never-seen is "
            "represented and steerable",
        },
        "same_layer_as_peak": peak is not None and peak["layer"] == after,
        "same_layer_as_half_recovery": half == after,
    }


def describe_comparison(comparison: dict) -> str:
    """The causal-vs-locate comparison as three lines of text."""
    c, loc = comparison["causal"], comparison["locate"]
    peak = "-" if c["layer"] is None else f"{c['layer']} ({c['recovered_fraction']:.3f})"
    half = c["half_recovery_layer"]

    def relation(layer: int | None) -> str:
        if layer is None:
            return "undefined"
        if layer == loc["layer"]:
            return "the same layer as locate's"
        shift = loc["layer"] - layer
        return f"{abs(shift)} layer{'s' if abs(shift) > 1 else ''} " + (
            "before locate's" if shift > 0 else "after locate's"
        )

    return "\n".join(
        [
            f"causal tracing, last-token residual stream: peak recovery after layer {peak} "
            f"({relation(c['layer'])}); first layer recovering >= half: "
            f"{'none' if half is None else half} ({relation(half)})",
            f"locate's recommended probe: layer {loc['probe_layer']} ({loc['probe_site']}), "
            f"i.e. the residual stream after layer {loc['layer']}, alpha {loc['alpha']:g}",
            "recall is where the fact travels to the prediction; locate is where knowing vs "
            "not knowing the person is represented and steerable: they need not agree",
        ]
    )
