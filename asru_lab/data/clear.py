"""CLEAR (Dontsov et al., 2024: "CLEAR: Character Unlearning in Textual and Visual Modalities")
from its Hugging Face parquet layout.

A local copy of `therem/CLEAR` has one folder per config, holding `train-0000k-of-0000n.parquet`
(the dataset card maps each config to `<config>/train-*`; `data/` is the default config, the
same rows as `full`). The configs this module reads, with the columns it uses:

- `forget01|05|10` and `retain99|95|90` (required, chosen by `forget_ratio`): one row per
  image of one of TOFU's fictitious authors, given a face: `image` {bytes, path}, `caption`
  (a description of the picture that names the person) and `name`.
- `forget01|05|10_perturbed` and `retain_perturbed` (optional): caption rows again (`caption`,
  `name`) with `paraphrased_caption` and `perturbed_captions` (a list), the reference wording
  and the wrong ones of open-unlearning's truth ratio.
- `forget01|05|10+tofu` and `retain99|95|90+tofu` (optional): the caption rows plus TOFU's text
  questions about the same authors, rows with `question` and `answer` and no image or caption.
  These configs have no `name` column.
- `real_faces` (optional): celebrities, `image`, `answer` (the name), `options` (wrong names);
  `real_world` (optional): questions about real photos, `question`, `answer`, `options` (wrong
  answers) and `image` (a row without one becomes a text-only question).

Mapped onto the Benchmark schema (person ids are the names, lower-cased and hyphenated):

- `forget` / `retain`: each caption row is a `qa` item about its image, asked CAPTION_QUESTION,
  answered by the caption; attribute "caption", value = the person's name (a reply that names
  the person leaks). A perturbed row whose caption (and name) equals a caption row's gives that
  item its `paraphrased_answer` and `perturbed_answers`. Each TOFU question becomes a text-only
  `qa` item (attribute "profile", value = the answer) about the person of the same split whose
  full name occurs in the question (else in the answer), or, when neither names anyone, about
  the person of the previous question: TOFU lists each author's questions together.
- `real`: each `real_faces` row asks REAL_FACE_QUESTION (`qa`: answer and value = the name,
  attribute "name"; and, with options, an `mcq` over the name and the wrong names).
- `general`: each `real_world` row asks its own `question` about its image (`qa`: answer and
  value = `answer`, attribute "world_fact"; and, with options, an `mcq`).
  These `real` and `general` `qa` items carry the answer as `paraphrased_answer` and the wrong
  options as `perturbed_answers`, as CLEAR's own evaluation scores them. An `mcq` puts the right
  option at position (row index mod number of options): fixed, but varying between rows.

There is no `test` or `unseen` split: CLEAR has no held-out views of the forget people.

What could not be confirmed from the published card and code, and the reading chosen here:
CLEAR's evaluation asks for a caption with a question drawn at random from nine wordings;
CAPTION_QUESTION is one of them, fixed so that runs compare. Its face-naming prompt is the
completion prefix "The name of the person on the image is"; REAL_FACE_QUESTION asks it as a
question. That `options` holds only wrong answers (the evaluation inserts the right one) is
assumed; a right answer already among them is used in place. That a perturbed caption equals
its base caption exactly (up to white space) is assumed; one matching no caption row is an
error. `retain_perturbed` is assumed to have the columns of `forget10_perturbed`, and
`real_world` an `image` column (the card lists its text columns only). That TOFU's author
names equal CLEAR's `name` values is assumed; a TOFU question before the first one that names
someone is not attributed (counted in `meta["tofu_questions_unattributed"]`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from asru_lab.data.hf_parquet import (
    bytes_loader,
    column_names,
    config_files,
    image_bytes,
    read_table,
)
from asru_lab.data.prompts import mcq_prompt
from asru_lab.data.schema import (
    LETTERS,
    Benchmark,
    BenchmarkError,
    Person,
    QAItem,
    normalize_text,
    shorten,
)

# forget_ratio -> the two digits of the released forget config (its retain config is 100 - N).
RATIO_DIGITS = {0.01: "01", 0.05: "05", 0.1: "10"}
RETAIN_PERTURBED = "retain_perturbed"
REAL_FACES = "real_faces"
REAL_WORLD = "real_world"
CAPTION_QUESTION = "Describe the image in detail."
REAL_FACE_QUESTION = "What is the name of the person in this image?"
REAL_PREFIX = "real-"
DOWNLOAD = "huggingface-cli download therem/CLEAR --repo-type dataset --local-dir DIR"
# Columns a config must have; the optional ones are read when present.
CAPTION_COLUMNS = ("image", "caption", "name")
PERTURBED_COLUMNS = ("caption", "paraphrased_caption", "perturbed_captions")
TOFU_COLUMNS = ("question", "answer")
REAL_FACES_COLUMNS = ("image", "answer")
REAL_WORLD_COLUMNS = ("question", "answer")


def load_clear(directory: str | os.PathLike, *, forget_ratio: float = 0.1) -> Benchmark:
    """CLEAR from a local copy of its parquet configs, with 1, 5 or 10 % of its people forgotten.

    Splits: `forget` / `retain` (caption items with their images, TOFU's text questions when the
    `+tofu` configs are there), `real` (real_faces) and `general` (real_world); the mapping is
    in the module docstring. Images stay as encoded bytes in memory, decoded when first opened.
    `meta["configs_read"]` lists the configs found and read.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise BenchmarkError(
            f"CLEAR directory not found: {root}; download therem/CLEAR (e.g. `{DOWNLOAD}`)"
        )
    forget_config, retain_config = configs_for(forget_ratio)
    for config in (forget_config, retain_config):
        if not (root / config).is_dir():
            found = ", ".join(configs_in(root)) or "no config folders"
            raise BenchmarkError(
                f"CLEAR config folder {config!r} (forget_ratio={forget_ratio}) is missing from "
                f"{root}, which holds: {found}. Download the whole dataset into that directory "
                f"(`{DOWNLOAD}`) or choose the forget_ratio of a forget/retain pair it holds"
            )
    read: list[str] = []
    blobs: dict[str, bytes] = {}
    people: dict[str, Person] = {}
    ids: dict[tuple[bool, str], str] = {}  # (a celebrity?, name) -> person id
    items: list[QAItem] = []
    for config, split in ((forget_config, "forget"), (retain_config, "retain")):
        rows = read_rows(root, config, CAPTION_COLUMNS, read=read)
        items += caption_items(rows, config, split, people, ids, blobs)
    items = attach_perturbed(
        items,
        root,
        (f"{forget_config}_perturbed", RETAIN_PERTURBED),
        (forget_config, retain_config),
        read,
    )
    unattributed = 0
    for config, split in ((forget_config, "forget"), (retain_config, "retain")):
        rows = read_rows(root, f"{config}+tofu", TOFU_COLUMNS, read=read, optional=True)
        tofu, missed = tofu_items(rows, f"{config}+tofu", split, people)
        items += tofu
        unattributed += missed
    real_rows = read_rows(root, REAL_FACES, REAL_FACES_COLUMNS, ("options",), read, True)
    for index, row in enumerate(real_rows):
        where = f"{REAL_FACES} row {index}"
        name = text(row, "answer", where)
        pid = person_id(name, "real", people, ids)
        image = store_image(row, REAL_FACES, index, blobs)
        items += question_items(row, index, "real", pid, image, REAL_FACE_QUESTION, "name", where)
    world_rows = read_rows(root, REAL_WORLD, REAL_WORLD_COLUMNS, ("image", "options"), read, True)
    for index, row in enumerate(world_rows):
        where = f"{REAL_WORLD} row {index}"
        question = text(row, "question", where)
        image = store_image(row, REAL_WORLD, index, blobs) if row.get("image") else None
        items += question_items(row, index, "general", None, image, question, "world_fact", where)

    bench = Benchmark(
        people.values(),
        items,
        name="clear",
        root=root,
        image_loader=bytes_loader(blobs, "CLEAR"),
        meta={
            "source": f"clear:{root}",
            "forget_ratio": forget_ratio,
            "forget_config": forget_config,
            "retain_config": retain_config,
            "configs_read": read,
            "tofu_questions_unattributed": unattributed,
        },
    )
    bench.validate()
    return bench


def configs_for(forget_ratio: float) -> tuple[str, str]:
    """The (forget, retain) config names released for `forget_ratio`."""
    digits = next((d for r, d in RATIO_DIGITS.items() if math.isclose(r, forget_ratio)), None)
    if digits is None:
        raise BenchmarkError(
            f"CLEAR has no split with forget_ratio={forget_ratio}; it ships 0.01, 0.05 and 0.1 "
            "(forget01/05/10 with retain99/95/90)"
        )
    return f"forget{digits}", f"retain{100 - int(digits)}"


def configs_in(root: Path) -> list[str]:
    """The config folders under `root` (hidden folders such as `.cache` left out), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_rows(
    root: Path,
    config: str,
    required: tuple[str, ...],
    extra: tuple[str, ...] = (),
    read: list[str] | None = None,
    optional: bool = False,
) -> list[dict[str, Any]]:
    """The rows of one config (its `required` columns and those of `extra` it has), appending
    its name to `read`; [] for an absent `optional` config. Only these columns are read, so a
    text config never loads the images stored beside it."""
    folder = root / config
    if optional and not folder.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for file in config_files(folder):
        present = column_names(file)
        for column in required:
            if column not in present:
                raise BenchmarkError(
                    f"{file}: CLEAR config {config!r} has no column {column!r} (found "
                    f"{sorted(present)}); re-download it from therem/CLEAR, whose current "
                    "release has it"
                )
        table = read_table(file, [*required, *(c for c in extra if c in present)])
        rows += table.to_pylist()
    if read is not None:
        read.append(config)
    return rows


def text(row: dict[str, Any], column: str, where: str) -> str:
    """The non-empty string in `column`, stripped; else a BenchmarkError naming row and column."""
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        found = "null" if value is None else f"{type(value).__name__} {shorten(repr(value))}"
        raise BenchmarkError(f"{where}: column {column!r} holds {found}, expected a text")
    return value.strip()


def texts(row: dict[str, Any], column: str, where: str) -> tuple[str, ...]:
    """The non-empty strings listed in `column` (null: none); else a BenchmarkError."""
    value = row.get(column)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BenchmarkError(
            f"{where}: column {column!r} holds {shorten(repr(value))}, expected a list of texts"
        )
    return tuple(v.strip() for v in value)


def person_id(
    name: str, split: str, people: dict[str, Person], ids: dict[tuple[bool, str], str]
) -> str:
    """The id of the person called `name`, added to `people` in `split` on first sight: the
    name lower-cased and hyphenated (`real-` first for celebrities), a number added if two
    names give the same id. A name already in another split is an error."""
    key = (split == "real", name)
    if key in ids:
        known = people[ids[key]]
        if known.split != split:
            raise BenchmarkError(
                f"{name!r} is in both the {known.split} and the {split} config; the forget and "
                "retain configs must not share people (use matching forgetNN / retain(100-NN))"
            )
        return known.id
    base = (REAL_PREFIX if split == "real" else "") + (
        "-".join(normalize_text(name).replace("'", "").split()) or "person"
    )
    pid, k = base, 1
    while pid in people:
        k += 1
        pid = f"{base}-{k}"
    ids[key] = pid
    people[pid] = Person(pid, name, split, {})
    return pid


def store_image(row: dict[str, Any], config: str, index: int, blobs: dict[str, bytes]) -> str:
    """Put the row's image bytes into `blobs`; return their path (`<config>/<row>`)."""
    data = image_bytes(row.get("image"))
    if not isinstance(data, bytes | bytearray) or not data:
        raise BenchmarkError(
            f"{config} row {index}: column 'image' holds no image bytes; the parquet files must "
            "embed the images, as the Hugging Face release does"
        )
    path = f"{config}/{index}"
    blobs[path] = bytes(data)
    return path


def caption_items(
    rows: list[dict[str, Any]],
    config: str,
    split: str,
    people: dict[str, Person],
    ids: dict[tuple[bool, str], str],
    blobs: dict[str, bytes],
) -> list[QAItem]:
    """One captioning item per row of a forget / retain config, its person added to `people`."""
    items = []
    for index, row in enumerate(rows):
        where = f"{config} row {index}"
        name = text(row, "name", where)
        caption = text(row, "caption", where)
        pid = person_id(name, split, people, ids)
        image = store_image(row, config, index, blobs)
        items.append(QAItem(split, "qa", pid, image, CAPTION_QUESTION, caption, "caption", name))
    return items


def caption_key(caption: str) -> str:
    """A caption with its white space collapsed: what perturbed rows are matched on."""
    return " ".join(caption.split())


def attach_perturbed(
    items: list[QAItem],
    root: Path,
    configs: tuple[str, ...],
    bases: tuple[str, ...],
    read: list[str],
) -> list[QAItem]:
    """`items` with the paraphrased and perturbed captions of the perturbed `configs` that are
    there attached to the caption items they match (same caption; same name where the row has
    one). A row matching none is an error: its config is not from the same release as `bases`."""
    by_caption: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_caption.setdefault(caption_key(item.answer), []).append(k)
    items = list(items)
    for config in configs:
        rows = read_rows(root, config, PERTURBED_COLUMNS, ("name",), read, True)
        for index, row in enumerate(rows):
            where = f"{config} row {index}"
            caption = text(row, "caption", where)
            paraphrased = text(row, "paraphrased_caption", where)
            perturbed = texts(row, "perturbed_captions", where)
            matches = by_caption.get(caption_key(caption), [])
            if not matches:
                raise BenchmarkError(
                    f"{where}: its caption {shorten(caption)!r} is in neither "
                    f"{' nor '.join(bases)}; {config} must come from the same CLEAR download as "
                    "those configs (re-download them together)"
                )
            for k in matches:
                name = row.get("name")
                if name is not None and text(row, "name", where) != items[k].value:
                    raise BenchmarkError(
                        f"{where}: names {name!r}, but the caption belongs to {items[k].value!r} "
                        f"in {bases[0] if items[k].split == 'forget' else bases[1]}; re-download "
                        f"{config} and those configs together"
                    )
                items[k] = dataclasses.replace(
                    items[k], paraphrased_answer=paraphrased, perturbed_answers=perturbed
                )
    return items


def tofu_items(
    rows: list[dict[str, Any]], config: str, split: str, people: dict[str, Person]
) -> tuple[list[QAItem], int]:
    """(text-only items for the TOFU questions of a `+tofu` config, how many of its questions
    could not be given a person). Its caption rows (no question) are skipped: the caption
    config already gave them."""
    names = {p.id: normalize_text(p.name) for p in people.values() if p.split == split}
    items: list[QAItem] = []
    current: str | None = None
    missed = 0
    for index, row in enumerate(rows):
        if not row.get("question") and not row.get("answer"):
            continue
        where = f"{config} row {index}"
        question, answer = text(row, "question", where), text(row, "answer", where)
        current = named_person(question, names) or named_person(answer, names) or current
        if current is None:
            missed += 1
            continue
        items.append(QAItem(split, "qa", current, None, question, answer, "profile", answer))
    return items, missed


def named_person(sentence: str, names: dict[str, str]) -> str | None:
    """The id of the person whose normalised full name occurs first in `sentence`, or None."""
    padded = f" {normalize_text(sentence)} "
    found = [(padded.find(f" {n} "), pid) for pid, n in names.items() if n and f" {n} " in padded]
    return min(found)[1] if found else None


def question_items(
    row: dict[str, Any],
    index: int,
    split: str,
    pid: str | None,
    image: str | None,
    question: str,
    attribute: str,
    where: str,
) -> list[QAItem]:
    """A `real_faces` / `real_world` row as a `qa` item (the answer as its paraphrase, the wrong
    options as its perturbed answers) and, when it has options, an `mcq` item."""
    answer = text(row, "answer", where)
    options = texts(row, "options", where)
    wrong = tuple(o for o in options if o != answer)
    qa = QAItem(
        split,
        "qa",
        pid,
        image,
        question,
        answer,
        attribute,
        answer,
        paraphrased_answer=answer if wrong else None,
        perturbed_answers=wrong,
    )
    if not wrong:
        return [qa]
    if len(wrong) + 1 > len(LETTERS):
        raise BenchmarkError(
            f"{where}: {len(wrong)} wrong options; at most {len(LETTERS) - 1} can be lettered"
        )
    if answer in options:
        choices, correct = options, options.index(answer)
    else:
        correct = index % (len(wrong) + 1)
        choices = (*wrong[:correct], answer, *wrong[correct:])
    mcq = QAItem(
        split,
        "mcq",
        pid,
        image,
        mcq_prompt(question, choices),
        answer,
        attribute,
        answer,
        choices,
        correct,
    )
    return [qa, mcq]
