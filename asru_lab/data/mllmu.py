"""MLLMU-Bench (Liu et al., 2025) from its Hugging Face parquet layout.

A local copy of `MLLMMU/MLLMU-Bench` has one folder per config: `forget_5|10|15` and
`retain_95|90|85` (the fictitious profiles, split by forget ratio), `Test_Set` (the same people
on new images, several per row in an `images` list) and `Retain_Set` (real celebrities). Each
row is one person: `ID`, `image` {bytes, path}, a profile `question`/`answer`, and the task
lists `Classification_Task`, `Generation_Task` and `Mask_Task`. This module turns them into
the Benchmark schema: forget / retain / test / real splits, each with QA, MCQ and cloze items.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from types import NoneType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from asru_lab.data.hf_parquet import bytes_loader, config_files, image_bytes, read_table
from asru_lab.data.prompts import CLOZE_PREFIX, mcq_prompt
from asru_lab.data.schema import LETTERS, Benchmark, BenchmarkError, Person, QAItem

# forget_ratio -> (forget config, retain config), as released.
CONFIGS = {
    0.05: ("forget_5", "retain_95"),
    0.1: ("forget_10", "retain_90"),
    0.15: ("forget_15", "retain_85"),
}
TEST_CONFIG = "Test_Set"
REAL_CONFIG = "Retain_Set"
TASK_COLUMNS = ("Classification_Task", "Generation_Task", "Mask_Task")
# MLLMU questions are about the whole profile, not one named fact.
ATTRIBUTE = "profile"
# Real celebrities get their own id namespace: their IDs may repeat the fictitious ones.
REAL_PREFIX = "real-"
BLANK_PATTERN = re.compile(r"_{2,}")
MCQ_GROUPS = ("Image_Textual_Questions", "Pure_Text_Questions")
IMAGE = "an image {bytes, path} or its bytes"
OPTIONS = "an object letter -> option text, or a list of option texts"
TEXT, OPTIONAL_TEXT = (str, "a string"), ((str, NoneType), "a string or null")
# The fields of one task entry: (accepted types, what to say is expected).
ENTRY_FIELDS = {
    "Classification_Task": {
        "Question": TEXT,
        "Options": ((dict, list), OPTIONS),
        "Correct_Answer": TEXT,
    },
    "Generation_Task": {"Question": TEXT, "Ground_Truth": TEXT, "Type": OPTIONAL_TEXT},
    "Mask_Task": {"Question": TEXT, "Ground_Truth": TEXT, "Type": OPTIONAL_TEXT},
}


def load_mllmu(directory: str | os.PathLike, *, forget_ratio: float = 0.1) -> Benchmark:
    """MLLMU-Bench from a local copy of its parquet configs, with 5, 10 or 15 % forgotten.

    Splits: `forget` / `retain` (the chosen configs), `test` (Test_Set rows of the forget
    people; image questions cycle through each row's images) and `real` (Retain_Set). Images
    stay as encoded bytes in memory and are decoded when first opened.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise BenchmarkError(
            f"MLLMU-Bench directory not found: {root}; download MLLMMU/MLLMU-Bench (e.g. "
            "`huggingface-cli download MLLMMU/MLLMU-Bench --repo-type dataset --local-dir DIR`)"
        )
    forget_config, retain_config = configs_for(forget_ratio)
    blobs: dict[str, bytes] = {}
    forget_rows = read_config(root, forget_config, image_column="image")
    retain_rows = read_config(root, retain_config, image_column="image")
    forget_ids = {str(r["ID"]) for r in forget_rows}
    test_rows = read_config(root, TEST_CONFIG, image_column="images", keep_ids=forget_ids)
    real_rows = read_config(root, REAL_CONFIG, image_column="image")

    people: dict[str, Person] = {}
    items: list[QAItem] = []
    for config, rows, split in (
        (forget_config, forget_rows, "forget"),
        (retain_config, retain_rows, "retain"),
        (REAL_CONFIG, real_rows, "real"),
    ):
        for index, row in enumerate(rows):
            person = row_person(row, split)
            known = people.get(person.id)
            if known is not None and known.split != split:
                raise BenchmarkError(
                    f"{config}: ID {row['ID']!r} is also in the {known.split} split; the "
                    "forget and retain configs must not share people (use matching forget_N / "
                    "retain_(100-N))"
                )
            people.setdefault(person.id, person)
            images = store_images(row, config, index, blobs)
            items += row_items(row, person.id, split, images, config)
    for index, row in enumerate(test_rows):
        images = store_images(row, TEST_CONFIG, index, blobs)
        items += row_items(row, str(row["ID"]), "test", images, TEST_CONFIG)

    bench = Benchmark(
        people.values(),
        items,
        name="mllmu",
        root=root,
        image_loader=bytes_loader(blobs, "MLLMU-Bench"),
        meta={
            "source": f"mllmu:{root}",
            "forget_ratio": forget_ratio,
            "forget_config": forget_config,
            "retain_config": retain_config,
        },
    )
    bench.validate()
    return bench


def configs_for(forget_ratio: float) -> tuple[str, str]:
    """The (forget, retain) config names released for `forget_ratio`."""
    for ratio, names in CONFIGS.items():
        if math.isclose(forget_ratio, ratio):
            return names
    raise BenchmarkError(
        f"MLLMU-Bench has no split with forget_ratio={forget_ratio}; it ships 0.05, 0.1 and 0.15 "
        "(forget_5/10/15)"
    )


def read_config(
    root: Path, config: str, *, image_column: str, keep_ids: set[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of one config folder (all `**/*.parquet` under it), optionally only `keep_ids`.

    `image_column` is the image column the config is expected to have (`image` or the Test
    Set's `images`); either one is accepted.
    """
    folder = root / config
    if not folder.is_dir():
        raise BenchmarkError(
            f"MLLMU-Bench config folder {config!r} is missing from {root}; download the whole "
            "dataset (all configs) into that directory"
        )
    rows: list[dict[str, Any]] = []
    for file in config_files(folder):
        table = read_table(file)
        check_columns(table.column_names, file, image_column)
        check_id_type(table, file)
        if keep_ids is not None:
            ids = pc.cast(table.column("ID"), pa.string())
            table = table.filter(pc.is_in(ids, value_set=pa.array(sorted(keep_ids), pa.string())))
        rows += [checked_row(row, file) for row in table.to_pylist()]
    return rows


def check_columns(columns: list[str], file: Path, image_column: str) -> None:
    """Raise naming the first required column `file` lacks."""
    present = set(columns)
    for column in ("ID", *TASK_COLUMNS):
        if column not in present:
            raise BenchmarkError(
                f"{file}: column {column!r} is missing (found {sorted(present)}); is this an "
                "MLLMU-Bench parquet file?"
            )
    if "image" not in present and "images" not in present:
        raise BenchmarkError(
            f"{file}: column {image_column!r} is missing (found {sorted(present)}); each row "
            "needs its person's image"
        )


def check_id_type(table: pa.Table, file: Path) -> None:
    """Raise if the `ID` column holds something other than strings or integers."""
    id_type = table.schema.field("ID").type
    kind = pa.types
    if not (kind.is_string(id_type) or kind.is_large_string(id_type) or kind.is_integer(id_type)):
        raise BenchmarkError(
            f"{file}: column 'ID' holds {id_type}, expected strings or integers; is this an "
            "MLLMU-Bench parquet file?"
        )


def checked_row(row: dict[str, Any], file: Path) -> dict[str, Any]:
    """`row` with JSON-text task columns decoded, once every value has the type MLLMU-Bench
    uses; else a BenchmarkError naming the file, the column, the row's ID and the type found."""

    def need(value: Any, kinds: type | tuple, column: str, expected: str, at: str = "") -> None:
        if not isinstance(value, kinds):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            found = "null" if value is None else f"{type(value).__name__} {shown}"
            where = f"column {column!r}" + (f" at {at}" if at else "")
            raise BenchmarkError(
                f"{file}: {where} of ID {row['ID']!r} holds {found}, expected {expected}; is "
                "this an MLLMU-Bench parquet file?"
            )

    need(row["ID"], (str, int), "ID", "a string or an integer")
    for column in ("question", "answer", "name", "Name"):
        need(row.get(column), (str, NoneType), column, "a string or null")
    images = row.get("images")
    need(images, (list, NoneType), "images", f"a list of {IMAGE}s")
    for column, entries in (("image", [row.get("image")]), ("images", images or [])):
        for k, entry in enumerate(entries):
            data = image_bytes(entry)
            need(data, (bytes, NoneType), column, IMAGE, f"[{k}]" if column == "images" else "")
    row = dict(row)
    for column in TASK_COLUMNS:
        if isinstance(row.get(column), str):  # some mirrors store the task lists as JSON text
            try:
                row[column] = json.loads(row[column])
            except json.JSONDecodeError as exc:
                raise BenchmarkError(
                    f"{file}: column {column!r} of ID {row['ID']!r} is text but not valid JSON "
                    f"({exc.msg} at character {exc.pos})"
                ) from exc
        value = row.get(column)
        if column == "Classification_Task":
            need(value, (dict, NoneType), column, "an object holding question lists")
            groups = {g: (value or {}).get(g) for g in MCQ_GROUPS}
        else:
            groups = {"": value}
        for group, entries in groups.items():
            need(entries, (list, NoneType), column, "a list of questions", group)
            for k, entry in enumerate(entries or []):
                at = f"{group}[{k}]"
                need(entry, dict, column, "an object", at)
                for key, (kinds, expected) in ENTRY_FIELDS[column].items():
                    need(entry.get(key), kinds, column, expected, f"{at}.{key}")
                if column == "Classification_Task":
                    options = entry["Options"]
                    texts = options.values() if isinstance(options, dict) else options
                    for text in texts:
                        need(text, (str, NoneType), column, OPTIONS, f"{at}.Options")
    return row


def row_person(row: dict[str, Any], split: str) -> Person:
    """The Person a row describes; real celebrities' ids get the `real-` prefix."""
    raw = str(row["ID"])
    name = row.get("name") or row.get("Name") or f"person {raw}"
    pid = REAL_PREFIX + raw if split == "real" else raw
    return Person(pid, str(name), split, {})


def store_images(
    row: dict[str, Any], config: str, index: int, blobs: dict[str, bytes]
) -> list[str]:
    """Put the row's image bytes into `blobs` and return their paths (`<config>/<row>/<k>`)."""
    if row.get("images"):
        entries = list(row["images"])
    elif row.get("image"):
        entries = [row["image"]]
    else:
        raise BenchmarkError(f"{config}: row {index} (ID {row['ID']!r}) has no image")
    paths = []
    for k, entry in enumerate(entries):
        data = image_bytes(entry)
        if not isinstance(data, bytes | bytearray) or not data:
            raise BenchmarkError(
                f"{config}: row {index} (ID {row['ID']!r}) image {k} has no bytes; the parquet "
                "files must embed the images (as the Hugging Face release does)"
            )
        path = f"{config}/{index}/{k}"
        blobs[path] = bytes(data)
        paths.append(path)
    return paths


def task_list(row: dict[str, Any], column: str) -> Any:
    """A task column's value of a `checked_row` ([] or {} if null)."""
    return row.get(column) or ([] if column != "Classification_Task" else {})


def uses_image(entry: dict[str, Any], where: str) -> bool:
    """True for `Image_Textual` entries, False for `Pure_Text` ones (default: image)."""
    kind = str(entry.get("Type") or "Image_Textual")
    if kind.lower().startswith("image"):
        return True
    if kind.lower().startswith("pure") or kind.lower() == "text":
        return False
    raise BenchmarkError(f"{where}: unknown Type {kind!r}; expected Image_Textual or Pure_Text")


def row_items(
    row: dict[str, Any], person_id: str, split: str, images: list[str], config: str
) -> list[QAItem]:
    """All question items of one row; image questions take the row's images in turn."""
    where = f"{config} ID {row['ID']!r}"
    shown = 0

    def next_image() -> str:
        nonlocal shown
        shown += 1
        return images[(shown - 1) % len(images)]

    items: list[QAItem] = []
    if row.get("question") and row.get("answer"):
        answer = str(row["answer"])
        items.append(
            QAItem(
                split,
                "qa",
                person_id,
                next_image(),
                str(row["question"]),
                answer,
                ATTRIBUTE,
                answer.strip(),
            )
        )
    classification = task_list(row, "Classification_Task")
    for group, with_image in zip(MCQ_GROUPS, (True, False), strict=True):
        for entry in classification.get(group) or []:
            options, correct = mcq_options(entry, f"{where} {group}")
            question = str(entry["Question"])
            items.append(
                QAItem(
                    split,
                    "mcq",
                    person_id,
                    next_image() if with_image else None,
                    mcq_prompt(question, options),
                    options[correct],  # reference answer: the correct option's text
                    ATTRIBUTE,
                    options[correct],
                    options,
                    correct,
                )
            )
    for entry in task_list(row, "Generation_Task"):
        truth = ground_truth(entry, f"{where} Generation_Task")
        image = next_image() if uses_image(entry, f"{where} Generation_Task") else None
        items.append(
            QAItem(split, "qa", person_id, image, str(entry["Question"]), truth, ATTRIBUTE, truth)
        )
    for entry in task_list(row, "Mask_Task"):
        truth = ground_truth(entry, f"{where} Mask_Task")
        sentence = str(entry["Question"])
        if not BLANK_PATTERN.search(sentence):
            raise BenchmarkError(f"{where} Mask_Task: no blank (__) in question {sentence!r}")
        image = next_image() if uses_image(entry, f"{where} Mask_Task") else None
        question = CLOZE_PREFIX + BLANK_PATTERN.sub("___", sentence)
        items.append(QAItem(split, "cloze", person_id, image, question, truth, ATTRIBUTE, truth))
    return items


def ground_truth(entry: dict[str, Any], where: str) -> str:
    """The entry's `Ground_Truth`, checking that it and `Question` are present."""
    for key in ("Question", "Ground_Truth"):
        if not entry.get(key):
            raise BenchmarkError(f"{where}: an entry has no {key!r}: {entry!r}")
    return str(entry["Ground_Truth"]).strip()


def mcq_options(entry: dict[str, Any], where: str) -> tuple[tuple[str, ...], int]:
    """(option texts in letter order, index of `Correct_Answer`) of a Classification entry
    (`Options`: letter -> text, or a list of texts for A, B, ...)."""
    raw = entry["Options"]
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            raise BenchmarkError(f"{where}: {len(raw)} options, at most {len(LETTERS)} allowed")
        raw = dict(zip(LETTERS, raw, strict=False))
    if not entry["Question"]:
        raise BenchmarkError(f"{where}: an entry has an empty 'Question': {entry!r}")
    letters = sorted(k for k, v in raw.items() if v is not None)
    options = tuple(raw[k] for k in letters)
    answer = str(entry.get("Correct_Answer") or "").strip()
    if answer[:1].upper() in letters and (len(answer) == 1 or not answer[1:2].isalnum()):
        return options, letters.index(answer[:1].upper())
    if answer in options:
        return options, options.index(answer)
    raise BenchmarkError(
        f"{where}: Correct_Answer {answer!r} is not one of the options {', '.join(letters)}"
    )
