"""The answers file: a model's generated answers, saved before judging so a rerun can score them.

JSON: {"format", "model", "model_fingerprint", "method", "benchmark", "benchmark_fingerprint",
"protocol", "config", "splits": {split: [{"task", "person_id", "image", "question", "answer"},
...]}}. Loading checks that the answers belong to the same model, method, benchmark, protocol
(its name and the settings that shape its prompts) and items, so a reused file never scores
another model's answers, nor answers to other prompts. A file without "protocol" was written
before protocols existed: its answers are asru_lab's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from asru_lab.artifacts import read_json_object, write_json_atomic
from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.errors import AsruLabError

if TYPE_CHECKING:
    from asru_lab.evaluation.harness import EvalConfig
    from asru_lab.models.loading import LoadedModel

ANSWERS_FORMAT = "asru_lab.answers/1"
_ITEM_KEYS = ("task", "person_id", "image", "question")
_NO_PROTOCOL = {"name": "asru_lab"}  # files written before protocols existed


class AnswersError(AsruLabError, ValueError):
    """A saved answers file is unreadable or belongs to another model, benchmark or sample."""


def _item_key(item: QAItem) -> dict:
    return {k: getattr(item, k) for k in _ITEM_KEYS}


def save_answers(
    path: str | os.PathLike,
    lm: LoadedModel,
    bench: Benchmark,
    chosen: dict[str, list[QAItem]],
    answers: dict[str, list[str]],
    *,
    method: str,
    config: EvalConfig,
    protocol: dict | None = None,
) -> Path:
    """Write the answers per split (paired with their items) atomically; returns the path.
    `protocol` is the protocol's `key()` (default: asru_lab's)."""
    return write_json_atomic(
        path,
        {
            "format": ANSWERS_FORMAT,
            "model": lm.name,
            "model_fingerprint": lm.fingerprint(),
            "method": method,
            "benchmark": bench.name,
            "benchmark_fingerprint": bench.fingerprint(),
            "protocol": protocol or _NO_PROTOCOL,
            "config": asdict(config),
            "splits": {
                split: [
                    {**_item_key(item), "answer": answer}
                    for item, answer in zip(items, answers[split], strict=True)
                ]
                for split, items in chosen.items()
            },
        },
    )


def load_answers(
    path: str | os.PathLike,
    lm: LoadedModel,
    bench: Benchmark,
    chosen: dict[str, list[QAItem]],
    *,
    method: str,
    protocol: dict | None = None,
) -> dict[str, list[str]]:
    """The saved answers per split, in the order of `chosen`.

    Raises AnswersError, saying what differs, unless the file was written for this model (name
    and fingerprint), method, benchmark (fingerprint), protocol (`key()`, default asru_lab's)
    and exactly these items per split.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnswersError(
            f"answers file {path} does not exist; evaluate without reusing answers to write it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnswersError(f"cannot read answers file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT:
        raise AnswersError(
            f"{path} is not an asru_lab answers file (no format {ANSWERS_FORMAT!r}); pass the "
            "*.answers.json that `evaluate` wrote beside its results"
        )
    expected = {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint(),
        "method": method,
        "benchmark_fingerprint": bench.fingerprint(),
    }
    for key, value in expected.items():
        if data.get(key) != value:
            raise AnswersError(
                f"answers in {path} were generated with {key} {data.get(key)!r}, this evaluation "
                f"has {value!r}; score them with the same model, method and benchmark, or "
                "generate new answers"
            )
    saved_protocol, wanted_protocol = data.get("protocol", _NO_PROTOCOL), protocol or _NO_PROTOCOL
    if saved_protocol != wanted_protocol:
        raise AnswersError(
            f"answers in {path} were generated under protocol {saved_protocol}, this evaluation "
            f"uses {wanted_protocol}; pass the same --protocol and --shots, or generate new "
            "answers"
        )
    saved = data.get("splits")
    if not isinstance(saved, dict) or set(saved) != set(chosen):
        shown = sorted(saved) if isinstance(saved, dict) else saved
        raise AnswersError(
            f"answers in {path} cover splits {shown}, this evaluation asks {sorted(chosen)}; "
            "pass the same splits"
        )
    answers: dict[str, list[str]] = {}
    for split, items in chosen.items():
        rows = saved[split]
        keys = [{k: row.get(k) for k in _ITEM_KEYS} for row in rows if isinstance(row, dict)]
        wanted = [_item_key(item) for item in items]
        if keys != wanted or len(keys) != len(rows):
            raise AnswersError(
                f"answers in {path} for split {split!r} are for other items ({len(rows)} saved, "
                f"{len(items)} asked; saved with config {data.get('config')}): pass the same "
                "max_items, seed and splits (CLI: --max-items or --full, --splits)"
            )
        texts = [row.get("answer") for row in rows]
        if not all(isinstance(t, str) for t in texts):
            raise AnswersError(f"answers in {path} for split {split!r} hold a non-text answer")
        answers[split] = texts
    return answers


def is_answers_file(path: str | os.PathLike) -> bool:
    """True when `path` holds an answers file (an earlier one, which may be replaced)."""
    data = read_json_object(path)
    return data is not None and data.get("format") == ANSWERS_FORMAT
