"""Step 3 of `locate`: the steering sweep — every candidate layer x strength x steered
positions, ungated and at every gate level, scored on forget refusal and leak, retain accuracy
and retain KL — and the order in which its rows are ranked."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from asru_lab.capture import capture
from asru_lab.data.schema import Benchmark, QAItem, contains_value, stratified_sample
from asru_lab.directions import REFUSALS
from asru_lab.evaluation.judge import Judge
from asru_lab.generation import encode_items
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import MemorisationGate, SteeringProbe
from asru_lab.progress import tqdm

if TYPE_CHECKING:
    from asru_lab.stages.locate import LocateConfig


def rank_key(row: dict) -> tuple:
    return (row["admissible"], row["forget_refusal"], -row["forget_leak"], -row["retain_kl"])


@torch.no_grad()
def _answers(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    config: LocateConfig,
    probe: SteeringProbe | None = None,
    positions: str = "last",
) -> tuple[list[str], torch.Tensor]:
    """Greedy answers and first-step log-probabilities `[n, vocab]` (ungated steering)."""
    answers, logprobs = [], []
    tok = lm.tokenizer
    for s in range(0, len(items), config.batch_size):
        chunk = items[s : s + config.batch_size]
        batch = encode_items(lm, bench, chunk)
        kwargs = dict(
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if probe is None:
            out = lm.model.generate(**batch, **kwargs)
        else:
            with probe.apply(lm, positions=positions, gated=False):
                out = lm.model.generate(**batch, **kwargs)
        new = out.sequences[:, batch["input_ids"].shape[1] :]
        answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        logprobs.append(torch.log_softmax(out.logits[0].float(), -1).cpu())
    return answers, torch.cat(logprobs)


def _score(
    forget: Sequence[QAItem],
    retain: Sequence[QAItem],
    f_answers: Sequence[str],
    r_answers: Sequence[str],
    judge: Judge,
) -> dict:
    f_judged = judge.judge(list(forget), list(f_answers))
    f_leaks = [contains_value(a, i.value) for i, a in zip(forget, f_answers, strict=True)]
    r_hits = [contains_value(a, i.value) for i, a in zip(retain, r_answers, strict=True)]
    return {
        "forget_refusal": sum(j.category in REFUSALS for j in f_judged) / len(forget),
        "forget_leak": sum(f_leaks) / len(forget),
        "retain_acc": sum(r_hits) / len(retain),
    }


def _kl(base: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """Per-row KL(base || steered) of next-token distributions, in nats."""
    return (base.exp() * (base - steered)).sum(-1)


def _mix(rows: torch.Tensor, steered: Sequence[str], base: Sequence[str]) -> list[str]:
    return [s if fire else b for fire, s, b in zip(rows.tolist(), steered, base, strict=True)]


def gate_positions(config: LocateConfig) -> list[int]:
    """The gate's token positions, oldest first (the order it reads them)."""
    return [-k for k in range(config.gate_tokens, 0, -1)]


def gate_tails(raws: dict | list, layer: int, tokens: Sequence[int]) -> torch.Tensor:
    """`[n, gate tokens, hidden]` from per-position captures, oldest token first."""
    ordered = [raws[p] for p in tokens] if isinstance(raws, dict) else raws
    return torch.stack([r[layer] for r in ordered], 1)


@dataclass
class Sweep:
    """Step 3's result: one row per (layer, alpha, positions, gate level), the unsteered
    baseline scores, and the forget / retain prompts swept."""

    rows: list[dict]
    baseline: dict
    forget: list[QAItem]
    retain: list[QAItem]


def sweep(
    lm: LoadedModel,
    bench: Benchmark,
    directions: dict[int, torch.Tensor],
    gates: dict[int, MemorisationGate],
    gate_stats: dict[str, dict],
    config: LocateConfig,
    judge: Judge,
) -> Sweep:
    """Step 3: steer sweep prompts with every candidate layer x strength x positions, ungated
    and at every gate level; score forget refusal / leak, retain accuracy and KL."""
    candidates = list(gates)
    tokens = gate_positions(config)
    rng = random.Random(f"{config.seed}:sweep")
    qa = ("qa",)
    image_only = not config.text_only
    f_items = stratified_sample(
        bench.questions("forget", qa, image_only=image_only), config.sweep_forget, rng
    )
    r_items = stratified_sample(
        bench.questions("retain", qa, image_only=image_only), config.sweep_retain, rng
    )
    sweep_tails = {}
    for name, items in (("forget", f_items), ("retain", r_items)):
        raws = [
            capture(
                lm,
                bench,
                items,
                layers=candidates,
                site=config.site,
                position=position,
                keep_raw=True,
                desc=f"sweep {name} gate @ {position}",
                progress=config.progress,
                batch_size=config.batch_size,
            ).raw
            for position in tokens
        ]
        sweep_tails[name] = {layer: gate_tails(raws, layer, tokens) for layer in candidates}
    f_base, _ = _answers(lm, bench, f_items, config)
    r_base, r_base_lp = _answers(lm, bench, r_items, config)
    baseline = _score(f_items, r_items, f_base, r_base, judge)

    fingerprint = lm.fingerprint()
    rows: list[dict] = []
    grid = [(L, a, p) for L in candidates for a in config.strengths for p in config.positions]
    for layer, alpha, positions_ in tqdm(grid, desc="locate: sweep", disable=not config.progress):
        probe = SteeringProbe(
            directions[layer].float(), layer, fingerprint, site=config.site, alpha=alpha
        )
        f_ans, _ = _answers(lm, bench, f_items, config, probe, positions_)
        r_ans, r_lp = _answers(lm, bench, r_items, config, probe, positions_)
        kl = _kl(r_base_lp, r_lp)
        variants: list[tuple] = [(None, f_ans, r_ans, kl, None)]
        for level, th in gate_stats[str(layer)]["thresholds"].items():
            gate = gates[layer]
            f_fire = gate.probability(sweep_tails["forget"][layer]) >= th["threshold"]
            r_fire = gate.probability(sweep_tails["retain"][layer]) >= th["threshold"]
            mixed = (_mix(f_fire, f_ans, f_base), _mix(r_fire, r_ans, r_base), kl * r_fire)
            variants.append((float(level), *mixed, (f_fire, r_fire)))
        for level, fa, ra, k, fires in variants:
            row = {
                "layer": layer,
                "alpha": alpha,
                "positions": positions_,
                "gated": level is not None,
                "gate_max_fpr": level,
            }
            row.update(_score(f_items, r_items, fa, ra, judge))
            row["retain_kl"] = float(k.mean())
            row["retain_drop"] = baseline["retain_acc"] - row["retain_acc"]
            row["admissible"] = row["retain_drop"] <= config.max_retain_drop + 1e-9
            if fires is not None:
                row["gate_fires_forget"] = float(fires[0].float().mean())
                row["gate_fires_retain"] = float(fires[1].float().mean())
            rows.append(row)
    return Sweep(rows, baseline, f_items, r_items)
