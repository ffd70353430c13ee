"""Per-item evaluation records: the items file (`--items-out`) and the report recomputed from it.

One JSON line per evaluated item: `protocol`, `split`, `task`, `modality` ("image" / "text"),
`person_id`, `image` (the benchmark path shown with the asked turn), `prompt` (the exact
chat-templated text sent, few-shot turns included), `options` (or null), `reference` (the
correct letter, the blank's value or the reference answer), `reply`, `scores` (every score the
protocol gave the reply) and, for generation items of protocols that use the judge, `judge`
(its category, scores and reason), and, for generation items when probabilities are on,
`probability` (`evaluation.probability.item_probabilities`). `aggregate_items` recomputes the
report's `splits` from the file alone (forget quality aside: it needs the reference model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from asru_lab.artifacts import check_output_file, write_text_atomic
from asru_lab.data.schema import QAItem
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.probability import split_metrics
from asru_lab.evaluation.protocols import PROTOCOLS, Protocol, get_protocol
from asru_lab.evaluation.protocols.base import modality, reference
from asru_lab.generation import build_chat_prompt
from asru_lab.models.loading import LoadedModel

RECORD_KEYS = ("protocol", "split", "task", "modality", "reply", "scores")


class ItemsError(AsruLabError, ValueError):
    """An items file is unreadable or does not hold asru_lab's per-item records."""


def item_record(lm: LoadedModel, protocol: Protocol, split: str, item: QAItem, reply: str) -> dict:
    """The record of one evaluated item (module docstring), without the judge's verdict."""
    return {
        "protocol": protocol.name,
        "split": split,
        "task": item.task,
        "modality": modality(item),
        "person_id": item.person_id,
        "image": item.image,
        "prompt": build_chat_prompt(lm, protocol.prompt(item).turns),
        "options": list(item.options) if item.options is not None else None,
        "reference": reference(item),
        "reply": reply,
        "scores": protocol.score(item, reply),
    }


def is_items_file(path: str | os.PathLike) -> bool:
    """True when `path` holds an items file (an earlier one, which may be replaced)."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and set(RECORD_KEYS) <= first.keys()


def check_items_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Raise OutputError unless an items file may be written at `path` (an existing file that
    is not an items file is replaced only with `overwrite`); writes nothing."""
    return check_output_file(path, overwrite=overwrite, own=is_items_file)


def write_items(
    path: str | os.PathLike, records: dict[str, Sequence[dict]], *, overwrite: bool = False
) -> Path:
    """Write the records of every split, one JSON line each, atomically; returns the path."""
    check_items_path(path, overwrite=overwrite)
    lines = [json.dumps(r, ensure_ascii=False) for rows in records.values() for r in rows]
    return write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def read_items(path: str | os.PathLike) -> list[dict]:
    """The records of an items file, in order; ItemsError naming the line if one is bad."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ItemsError(f"cannot read items file {path}: {exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ItemsError(f"{path}:{number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not set(RECORD_KEYS) <= record.keys():
            raise ItemsError(
                f"{path}:{number} is not an item record (needs {', '.join(RECORD_KEYS)}); pass "
                "the file `evaluate --items-out` wrote"
            )
        if record["protocol"] not in PROTOCOLS:
            raise ItemsError(f"{path}:{number} names unknown protocol {record['protocol']!r}")
        records.append(record)
    return records


def aggregate_items(path: str | os.PathLike) -> dict:
    """The report's `splits` (split -> metrics), recomputed from an items file alone."""
    records = read_items(path)
    protocols = {r["protocol"] for r in records}
    if len(protocols) > 1:
        raise ItemsError(f"{path} mixes protocols {sorted(protocols)}; one file holds one run")
    splits: dict[str, list[dict]] = {}
    for record in records:
        splits.setdefault(record["split"], []).append(record)
    if not splits:
        return {}
    protocol = get_protocol(protocols.pop())
    return {
        split: protocol.aggregate(rows)
        | split_metrics(split, [r["probability"] for r in rows if r.get("probability")])
        for split, rows in splits.items()
    }
