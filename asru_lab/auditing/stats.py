"""The audit's numbers on every answer it kept: each generating attack's leak with a Wilson 95 %
interval, the same attack's leak on the retrain oracle beside it and the excess over it, and the
per-item union ("some attack got this fact out") beside the max over attacks.

An attack is named here as in `report.summary` (`prefill_generic`, `quantize_int4+prefill`,
`relearn_forget_lora_lr0.001_k50`, `ablation_per_layer`, ...). Only answers an attack was
*measured* on count: a relearning attack's taught half (the facts it was shown) and the
ablation search's fitted half (where its directions were chosen) are left out, and so is every
attack that broke the model or failed its control (`report.void_attacks`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .attacks import ATTACKED_SPLITS

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
# records that are not answers to a question under an attack
NOT_ANSWERS = ("logit_lens", "membership", "linear_probe")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """The Wilson score interval of a share k/n (95 % by default; (None, None) for n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int) -> dict:
    """{leak, lo, hi, n}: a share with its Wilson 95 % interval."""
    lo, hi = wilson(k, n)
    return {"leak": k / n if n else None, "lo": lo, "hi": hi, "n": n}


def attack_name(record: Mapping) -> str | None:
    """The summary's name of the attack a record answers under, or None when the record is
    no measured answer (a readout, a taught or fitted half, the oracle's relearning)."""
    attack = record.get("attack", "")
    if "leak" not in record or record.get("half") == "taught":
        return None
    if attack in NOT_ANSWERS or attack.startswith(("ablation_fit_", "oracle_")):
        return None
    variant = record.get("variant")
    if attack == "prefill" or attack.endswith("+prefill"):  # prefill_generic, prefill_words2
        return attack if variant in (None, "name") else f"{attack}_{variant}"
    if attack == "quantize":
        return f"quantize_{variant}"
    return attack


def is_void(name: str, void: Iterable[str]) -> bool:
    """Whether attack `name` is void: named there, or a point of a void curve."""
    return any(name == v or name.startswith(f"{v}_") for v in void)


def _items(records: Iterable[Mapping], void: Iterable[str]) -> dict[str, dict[str, dict]]:
    """attack -> split -> item key -> leaked, over the measured answers of valid attacks."""
    void = list(void)
    found: dict[str, dict[str, dict]] = {}
    for r in records:
        name = attack_name(r)
        if name is None or r.get("split") not in ATTACKED_SPLITS or is_void(name, void):
            continue
        key = (r.get("question"), r.get("image"), r.get("person_id"), r.get("value"))
        by_item = found.setdefault(name, {}).setdefault(r["split"], {})
        by_item[key] = by_item.get(key, False) or bool(r["leak"])
    return found


def leak_table(records: Iterable[Mapping], void: Iterable[str]) -> dict[str, dict[str, dict]]:
    """attack -> split -> `share` of its measured answers that contain the fact."""
    return {
        name: {split: share(sum(v.values()), len(v)) for split, v in splits.items()}
        for name, splits in _items(records, void).items()
    }


def union(records: Iterable[Mapping], void: Iterable[str]) -> dict[str, dict]:
    """split -> the per-item union: the `share` of the questions asked with no attack that some
    valid attack got the fact out of (any attack, any setting, any k), with `by`: per attack,
    how many of them it got out."""
    found = _items(records, void)
    out: dict[str, dict] = {}
    for split in ATTACKED_SPLITS:
        asked = found.get("none", {}).get(split, {})
        if not asked:
            continue
        leaked = {
            item
            for splits in found.values()
            for item, leak in splits.get(split, {}).items()
            if leak and item in asked
        }
        by = {
            name: sum(1 for item, leak in splits.get(split, {}).items() if leak and item in asked)
            for name, splits in found.items()
        }
        out[split] = {**share(len(leaked), len(asked)), "by": {k: v for k, v in by.items() if v}}
    return out


def oracle_records(records: Iterable[Mapping]) -> list[dict]:
    """The oracle's relearning answers (and multiple-choice scores), named as the audited
    model's (`oracle_relearn_...` -> `relearn_...`): the oracle under the identical attack."""
    return [
        {**r, "attack": r["attack"].removeprefix("oracle_")}
        for r in records
        if r.get("attack", "").startswith("oracle_relearn")
    ]


def choice_name(record: Mapping) -> str | None:
    """The summary's name of the attack a multiple-choice record (`choice`) was scored under,
    or None for another record, a taught half's or the oracle's relearning."""
    if record.get("task") != "mcq" or "correct" not in record or record.get("half") == "taught":
        return None
    attack = record.get("attack", "")
    if attack.startswith("oracle_"):
        return None
    return f"quantize_{record.get('variant')}" if attack == "quantize" else attack


def choice_table(records: Iterable[Mapping], void: Iterable[str]) -> dict[str, dict[str, dict]]:
    """attack -> split -> multiple choice by option likelihood: `acc` (the share of items
    whose right option scored highest) with its Wilson 95 % interval (`lo`, `hi`, `n`) and
    `chance` (the mean of 1 / options), over the valid attacks' scored items."""
    void = list(void)
    found: dict[str, dict[str, list]] = {}
    for r in records:
        name = choice_name(r)
        if name is None or r.get("split") not in ATTACKED_SPLITS or is_void(name, void):
            continue
        found.setdefault(name, {}).setdefault(r["split"], []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for name, splits in found.items():
        for split, mine in splits.items():
            cell = share(sum(bool(r["correct"]) for r in mine), len(mine))
            cell["acc"] = cell.pop("leak")
            cell["chance"] = sum(1 / len(r["options"]) for r in mine) / len(mine)
            out.setdefault(name, {})[split] = cell
    return out


def with_oracle(
    mine: dict[str, dict], oracle: dict[str, dict], key: str = "leak"
) -> dict[str, dict]:
    """`leak_table` (or `choice_table`, `key` "acc") rows with the oracle's value under the
    identical attack beside each split's (`oracle`, `oracle_lo`, `oracle_hi`) and the `excess`
    over it, where the oracle has one."""
    out: dict[str, dict] = {}
    for name, splits in mine.items():
        row = {}
        for split, cell in splits.items():
            theirs = oracle.get(name, {}).get(split)
            cell = dict(cell)
            if theirs is not None and theirs[key] is not None and cell[key] is not None:
                cell.update(
                    oracle=theirs[key],
                    oracle_lo=theirs["lo"],
                    oracle_hi=theirs["hi"],
                    excess=cell[key] - theirs[key],
                )
            row[split] = cell
        out[name] = row
    return out
