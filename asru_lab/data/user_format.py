"""The user dataset directory format (DESIGN §5): `profiles.jsonl`, `qa.jsonl`, `images/`.

`export_benchmark` writes any Benchmark in this format; `load_user_dataset` reads it back to an
equal Benchmark. One `qa.jsonl` line per question; its task is read from its fields: `options`
(+ `correct`) make a multiple-choice item, `cloze` a fill-in-the-blank item, neither a
generation item. An item's short ground truth (`value`) is derived from the person's facts (see
`derive_value`); an optional `value` field overrides it and is written only where the
derivation would not reproduce it. A generation item may carry `paraphrased_answer` (a string)
and `perturbed_answers` (a list of wrong answers): the truth ratio and forget quality need them.
Every file the directory names must lie inside it, links followed (`data.files`).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asru_lab.artifacts import atomic_dir
from asru_lab.data.files import check_image, dataset_file
from asru_lab.data.prompts import CLOZE_PREFIX
from asru_lab.data.schema import (
    ITEM_SPLITS,
    LETTERS,
    PERSON_SPLITS,
    Benchmark,
    BenchmarkError,
    Person,
    QAItem,
)
from asru_lab.progress import tqdm

PROFILES = "profiles.jsonl"
QA = "qa.jsonl"
META = "meta.json"
IMAGES = "images"
BLANK = "___"
# Two or more underscores mark the blank; they are normalised to BLANK.
BLANK_PATTERN = re.compile(r"_{2,}")
TRAILING_PUNCTUATION = ".!?,;: "
SAFE_IMAGE_PATH = re.compile(r"images/[A-Za-z0-9_.-]+\.png")
MISSING_IMAGE = (
    "; put the file there (paths are relative to the dataset directory) or set image to null "
    "for a text-only question"
)


# --- export ----------------------------------------------------------------------------------
def export_benchmark(
    bench: Benchmark, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write `bench` as a user dataset directory and return its path.

    The directory is built next to `out_dir` and moved into place, so a failed export never
    leaves a half-written dataset. An earlier export there is replaced; a folder holding other
    files is refused unless `overwrite=True`, and even then only the dataset's files are
    written (`artifacts.atomic_dir`). Every referenced image is saved as PNG under `images/`.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_dataset(bench, tmp)
    return out_dir


def write_dataset(bench: Benchmark, directory: Path) -> None:
    """Write profiles, questions, images and meta.json of `bench` into an empty `directory`."""
    image_paths = export_image_paths(bench)
    (directory / IMAGES).mkdir()
    for source, target in tqdm(image_paths.items(), desc="export images", unit="img"):
        bench.load_image(source).save(directory / target, format="PNG")
    with open(directory / PROFILES, "w", encoding="utf-8") as f:
        for person in bench.people.values():
            row = {
                "id": person.id,
                "name": person.name,
                "split": person.split,
                "facts": person.facts,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(directory / QA, "w", encoding="utf-8") as f:
        for item in bench.items:
            row = item_row(item, bench.people.get(item.person_id or ""), image_paths)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta: dict[str, Any] = {"name": bench.name, "fingerprint": bench.fingerprint()}
    if "forget_ratio" in bench.meta:
        meta["forget_ratio"] = bench.meta["forget_ratio"]
    if bench.declared_pools:
        meta["value_pools"] = {a: list(v) for a, v in bench.declared_pools.items()}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def export_image_paths(bench: Benchmark) -> dict[str, str]:
    """Map each image path used by `bench` to its file name in the export (`images/<x>.png`).

    Paths that already have that form (the synthetic benchmark's) are kept, so a round trip
    keeps item paths and the fingerprint unchanged; others are turned into safe unique names.
    """
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for item in bench.items:
        if item.image is None or item.image in mapping:
            continue
        if SAFE_IMAGE_PATH.fullmatch(item.image) and item.image not in taken:
            target = item.image
        else:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(item.image).with_suffix("").as_posix())
            stem = stem.strip("._") or "image"
            target, n = f"{IMAGES}/{stem}.png", 1
            while target in taken:
                target, n = f"{IMAGES}/{stem}-{n}.png", n + 1
        mapping[item.image] = target
        taken.add(target)
    return mapping


def item_row(item: QAItem, person: Person | None, image_paths: dict[str, str]) -> dict[str, Any]:
    """One `qa.jsonl` line for `item` (`value` only where it cannot be derived)."""
    row: dict[str, Any] = {
        "person_id": item.person_id,
        "split": item.split,
        "image": None if item.image is None else image_paths[item.image],
        "question": item.question,
        "answer": item.answer,
        "attribute": item.attribute,
    }
    if item.task == "mcq":
        row["options"] = list(item.options or ())
        row["correct"] = item.correct_letter
    elif item.task == "cloze":
        cloze = item.question.removeprefix(CLOZE_PREFIX)
        if not BLANK_PATTERN.search(cloze):
            raise BenchmarkError(
                f"cloze item has no blank '{BLANK}' to export: {item.question!r}; write the blank "
                f"as {BLANK} in its question"
            )
        row["cloze"] = cloze
    if item.paraphrased_answer is not None:
        row["paraphrased_answer"] = item.paraphrased_answer
    if item.perturbed_answers:
        row["perturbed_answers"] = list(item.perturbed_answers)
    options = item.options if item.task == "mcq" else None
    if derive_value(person, item.attribute, item.answer, options, item.correct) != item.value:
        row["value"] = item.value
    return row


# --- load ------------------------------------------------------------------------------------
def load_user_dataset(path: str | os.PathLike, *, forget_ratio: float | None = None) -> Benchmark:
    """Read a user dataset directory into a validated Benchmark (images opened lazily).

    The `split` field of `profiles.jsonl` decides who is forgotten: a `forget_ratio` other
    than None is refused (the parameter remains so that older calls get that explanation).
    """
    root = Path(path).expanduser()
    if forget_ratio is not None:
        raise fixed_split_error(root, {"forget_ratio": forget_ratio})
    if not root.is_dir():
        raise BenchmarkError(
            f"dataset directory not found: {root}; give a directory holding {PROFILES} and {QA} "
            "(asru-lab export-benchmark --out DIR writes an example)"
        )
    for required in (PROFILES, QA):
        if not os.path.lexists(root / required):
            hint = (
                f"; {root} looks like MLLMU-Bench, load it with 'mllmu:{root}'"
                if any((root / c).is_dir() for c in ("forget_10", "forget_5", "forget_15"))
                else ""
            )
            raise BenchmarkError(
                f"{required} is missing from {root}: a user dataset needs {PROFILES} (one person "
                f"per line) and {QA} (one question per line){hint}"
            )
    people = read_profiles(dataset_file(root, PROFILES, str(root), "file"))
    items, lines = read_questions(dataset_file(root, QA, str(root), "file"), people)
    check_images(root, items, lines)
    check_splits(people, items, root)
    meta = read_meta(root)
    known = [p for p in people.values() if p.split in ("forget", "retain")]
    n_forget = sum(p.split == "forget" for p in known)
    bench = Benchmark(
        people.values(),
        items,
        name=str(meta.get("name") or root.name),
        root=root,
        meta={
            "source": str(root),
            "forget_ratio": meta.get("forget_ratio", n_forget / len(known) if known else 0.0),
        },
        value_pools=meta.get("value_pools"),
    )
    try:
        bench.validate(
            lambda ks: f"{QA} line{'s' * (len(ks) > 1)} " + ", ".join(str(lines[k]) for k in ks)
        )
    except BenchmarkError as exc:
        raise BenchmarkError(f"{root}: {exc}") from exc
    return bench


def fixed_split_error(root: Path, given: dict[str, Any]) -> BenchmarkError:
    """The error for split options (`given`: name -> value) passed with a user dataset."""
    options = " and ".join(f"{k}={v!r}" for k, v in given.items())
    verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
    return BenchmarkError(
        f"{options} only {verb} to the synthetic benchmark: {root} is a user dataset, whose "
        f"{PROFILES} decides who is forgotten (each person's 'split'); leave {them} out (CLI: "
        "drop --forget-ratio / --seed) or change the splits in the file"
    )


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line of a UTF-8 JSONL file."""
    offset = 0  # of the line's first byte in the file
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decode_utf8(raw, f"{path.name} line {number}", offset, bom=number == 1)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(
                    f"{path.name} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object"
                ) from exc
            if not isinstance(row, dict):
                raise BenchmarkError(
                    f"{path.name} line {number}: expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


def decode_utf8(raw: bytes, where: str, offset: int = 0, *, bom: bool = False) -> str:
    """`raw` as UTF-8 text (a leading byte-order mark dropped if `bom`); else a BenchmarkError
    naming `where`, the column and the file byte offset (`offset`: that of `raw[0]`)."""
    start = len(codecs.BOM_UTF8) if bom and raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = start + exc.start
        column = len(raw[start:bad].decode("utf-8")) + 1
        raise BenchmarkError(
            f"{where}, column {column} (byte {offset + bad} of the file): not valid UTF-8 "
            f"(byte 0x{raw[bad]:02x}); save the file as UTF-8"
        ) from exc


def require(row: dict[str, Any], field: str, where: str, kind: type | tuple = str) -> Any:
    """`row[field]`, or a BenchmarkError naming the field and line if absent or mistyped."""
    if field not in row:
        raise BenchmarkError(f"{where}: required field '{field}' is missing")
    value = row[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkError(f"{where}: field '{field}' must be {names}, got {value!r}")
    return value


def read_profiles(path: Path) -> dict[str, Person]:
    """People by id from `profiles.jsonl`; duplicates and unknown splits are errors."""
    people: dict[str, Person] = {}
    first_line: dict[str, int] = {}
    for number, row in read_jsonl(path):
        where = f"{path.name} line {number}"
        pid = str(require(row, "id", where, (str, int)))
        name = require(row, "name", where)
        split = require(row, "split", where)
        if split not in PERSON_SPLITS:
            raise BenchmarkError(
                f"{where}: field 'split' is {split!r}; expected one of {', '.join(PERSON_SPLITS)}"
            )
        facts = row.get("facts") or {}
        if not isinstance(facts, dict):
            raise BenchmarkError(f"{where}: field 'facts' must be an object attribute -> value")
        if pid in people:
            other = people[pid]
            both = (
                f" (listed as {other.split!r} there and {split!r} here: a person is either "
                "forgotten or retained, not both)"
                if other.split != split
                else ""
            )
            raise BenchmarkError(
                f"{where}: person id {pid!r} was already listed on line {first_line[pid]}{both}; "
                "give each person one line with a unique id"
            )
        people[pid] = Person(pid, name, split, {str(k): str(v) for k, v in facts.items()})
        first_line[pid] = number
    if not people:
        raise BenchmarkError(f"{path.name} lists no people; add one JSON object per person")
    return people


def read_questions(path: Path, people: dict[str, Person]) -> tuple[list[QAItem], list[int]]:
    """Items from `qa.jsonl` and the line each was read from."""
    items: list[QAItem] = []
    lines: list[int] = []
    for number, row in read_jsonl(path):
        items.append(parse_item(row, f"{path.name} line {number}", people))
        lines.append(number)
    if not items:
        raise BenchmarkError(f"{path.name} holds no questions; add one JSON object per question")
    return items, lines


def parse_item(row: dict[str, Any], where: str, people: dict[str, Person]) -> QAItem:
    """One QAItem from a `qa.jsonl` object; `where` names the file and line for errors."""
    if "person_id" not in row:
        raise BenchmarkError(f"{where}: required field 'person_id' is missing (null if none)")
    person_id = None if row["person_id"] is None else str(row["person_id"])
    if person_id is not None and person_id not in people:
        raise BenchmarkError(
            f"{where}: person_id {person_id!r} is not in {PROFILES}; add that person there or "
            "fix the id"
        )
    split = require(row, "split", where)
    if split not in ITEM_SPLITS:
        raise BenchmarkError(
            f"{where}: field 'split' is {split!r}; expected one of {', '.join(ITEM_SPLITS)}"
        )
    image = row.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise BenchmarkError(f"{where}: field 'image' must be a relative path or null")
    answer = require(row, "answer", where)
    attribute = require(row, "attribute", where)
    options: tuple[str, ...] | None = None
    correct: int | None = None
    cloze = row.get("cloze")
    if row.get("options") is not None:
        task = "mcq"
        options, correct = parse_options(row, where)
    elif cloze is not None:
        task = "cloze"
        if not isinstance(cloze, str) or not BLANK_PATTERN.search(cloze):
            raise BenchmarkError(
                f"{where}: field 'cloze' must be a sentence with the blank written as {BLANK}, "
                f"got {cloze!r}"
            )
        cloze = BLANK_PATTERN.sub(BLANK, cloze)
    else:
        task = "qa"
    if task == "cloze" and "question" not in row:
        question = CLOZE_PREFIX + cloze
    else:
        question = require(row, "question", where)
    person = people.get(person_id) if person_id is not None else None
    value = row.get("value")
    if value is None:
        value = derive_value(person, attribute, answer, options, correct)
    elif not isinstance(value, str):
        raise BenchmarkError(f"{where}: field 'value' must be a string, got {value!r}")
    paraphrased, perturbed = parse_truth_ratio_answers(row, where, task)
    return QAItem(
        split,
        task,
        person_id,
        image,
        question,
        answer,
        attribute,
        value,
        options,
        correct,
        paraphrased_answer=paraphrased,
        perturbed_answers=perturbed,
    )


def parse_truth_ratio_answers(
    row: dict[str, Any], where: str, task: str
) -> tuple[str | None, tuple[str, ...]]:
    """The optional `paraphrased_answer` (a string) and `perturbed_answers` (a list of strings)
    of a generation question: what the truth ratio and forget quality need."""
    paraphrased = row.get("paraphrased_answer")
    perturbed = row.get("perturbed_answers")
    if (paraphrased is not None or perturbed is not None) and task != "qa":
        raise BenchmarkError(
            f"{where}: paraphrased_answer / perturbed_answers belong to open questions (no "
            "options, no cloze); remove them from this item"
        )
    if paraphrased is not None and (not isinstance(paraphrased, str) or not paraphrased):
        raise BenchmarkError(
            f"{where}: field 'paraphrased_answer' must be a non-empty string, got {paraphrased!r}"
        )
    if perturbed is not None and (
        not isinstance(perturbed, list)
        or not perturbed
        or not all(isinstance(a, str) and a for a in perturbed)
    ):
        raise BenchmarkError(
            f"{where}: field 'perturbed_answers' must be a non-empty list of non-empty strings "
            f"(wrong answers), got {perturbed!r}"
        )
    return paraphrased, tuple(perturbed or ())


def parse_options(row: dict[str, Any], where: str) -> tuple[tuple[str, ...], int]:
    """(options, index of the correct one); `correct` may be a letter, an index or the text."""
    options = row["options"]
    if (
        not isinstance(options, list)
        or not 2 <= len(options) <= len(LETTERS)
        or not all(isinstance(o, str) for o in options)
    ):
        raise BenchmarkError(
            f"{where}: field 'options' must be a list of 2 to {len(LETTERS)} option texts, "
            f"got {options!r}"
        )
    if "correct" not in row:
        raise BenchmarkError(
            f"{where}: required field 'correct' is missing (multiple-choice items need the letter, "
            "index or text of the right option)"
        )
    correct = row["correct"]
    letters = LETTERS[: len(options)]
    if isinstance(correct, bool):
        index = None
    elif isinstance(correct, int):
        index = correct if 0 <= correct < len(options) else None
    elif (
        isinstance(correct, str)
        and correct.strip().upper() in letters
        and len(correct.strip()) == 1
    ):
        index = letters.index(correct.strip().upper())
    elif isinstance(correct, str) and correct in options:
        index = options.index(correct)
    else:
        index = None
    if index is None:
        raise BenchmarkError(
            f"{where}: field 'correct' is {correct!r}; give a letter {'/'.join(letters)}, an index "
            f"0-{len(options) - 1} or one of the option texts"
        )
    return tuple(options), index


def derive_value(
    person: Person | None,
    attribute: str,
    answer: str,
    options: tuple[str, ...] | None = None,
    correct: int | None = None,
) -> str:
    """The short ground truth of an item, derived as the loader does.

    The person's fact for `attribute` (their name for `name`); else the correct option of a
    multiple-choice item; else the answer without trailing punctuation, lower-cased (matching
    is case-insensitive), e.g. "Olive." -> "olive".
    """
    if person is not None and attribute == "name":
        return person.name
    if person is not None and attribute in person.facts:
        return person.facts[attribute]
    if options is not None and correct is not None:
        return options[correct]
    return answer.strip().rstrip(TRAILING_PUNCTUATION).lower()


def check_images(root: Path, items: list[QAItem], lines: list[int]) -> None:
    """Every referenced image is a file inside `root` (`data.files.dataset_file`) whose header
    is within the pixel budget and whose structure is intact; errors name the qa.jsonl line."""
    first_line: dict[str, int] = {}
    for item, number in zip(items, lines, strict=True):
        if item.image is not None:
            first_line.setdefault(item.image, number)
    for image, number in tqdm(first_line.items(), desc="check images", unit="img", leave=False):
        where = f"{QA} line {number}"
        full = dataset_file(root, image, where, hint=MISSING_IMAGE)
        check_image(full, f"{where}: image {image!r}")


def check_splits(people: dict[str, Person], items: list[QAItem], root: Path) -> None:
    """Forget/retain items match their people's split; forget (and listed retain) are non-empty."""
    for item in items:
        if item.split not in ("forget", "retain"):
            continue
        person = people.get(item.person_id) if item.person_id is not None else None
        if person is None or person.split != item.split:
            who = "no person" if person is None else f"{person.id!r} (split {person.split!r})"
            raise BenchmarkError(
                f"{root}: a {item.split!r} question is about {who}: {item.question!r}; "
                f"{item.split} questions must be about people whose profile split is {item.split!r}"
            )
    counts = Counter(item.split for item in items)
    if not counts["forget"]:
        raise BenchmarkError(
            f"{root}: the forget split is empty: {QA} has no question with split 'forget'; "
            f"mark the people to forget with split 'forget' in {PROFILES} and add their questions"
        )
    for split in ("forget", "retain"):
        listed = [p.id for p in people.values() if p.split == split]
        if listed and not counts[split]:
            raise BenchmarkError(
                f"{root}: the {split} split is empty: {PROFILES} lists {len(listed)} {split} "
                f"people (e.g. {listed[0]!r}) but {QA} has no question with split {split!r}"
            )


def read_meta(root: Path) -> dict[str, Any]:
    """`meta.json` if present (name, fingerprint, forget_ratio, value_pools), else {}."""
    if not os.path.lexists(root / META):
        return {}
    path = dataset_file(root, META, str(root), "file")
    try:
        meta = json.loads(decode_utf8(path.read_bytes(), f"{META} in {root}", bom=True))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(
            f"{META} in {root} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it"
        ) from exc
    if not isinstance(meta, dict):
        raise BenchmarkError(f"{META} in {root} must be a JSON object; fix or delete it")
    ratio = meta.get("forget_ratio")
    if ratio is not None and not (isinstance(ratio, int | float) and math.isfinite(ratio)):
        raise BenchmarkError(f"{META} in {root}: forget_ratio must be a number, got {ratio!r}")
    pools = meta.get("value_pools")
    if pools is not None and not (
        isinstance(pools, dict)
        and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in pools.values())
    ):
        raise BenchmarkError(
            f"{META} in {root}: value_pools must map each attribute to a list of strings"
        )
    return meta
