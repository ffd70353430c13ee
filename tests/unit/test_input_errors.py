"""Broken inputs give a BenchmarkError that names the file and what is wrong, not a traceback:
non-UTF-8 dataset files, MLLMU-Bench parquet columns of the wrong type, and split options
given to a benchmark whose split is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asru_lab.data import BenchmarkError, load_benchmark
from asru_lab.data.user_format import load_user_dataset
from tests.mllmu_layout import BLUE, RED, row, write_config

PROFILES = [
    {"id": "p1", "name": "Ada Lind", "split": "forget", "facts": {"hobby": "chess"}},
    {"id": "p2", "name": "Bo Berg", "split": "retain", "facts": {"hobby": "golf"}},
]
QUESTIONS = [
    {
        "person_id": pid,
        "split": split,
        "image": None,
        "question": f"What is {name}'s hobby?",
        "answer": f"{name} plays {hobby}.",
        "attribute": "hobby",
    }
    for pid, name, split, hobby in (
        ("p1", "Ada Lind", "forget", "chess"),
        ("p2", "Bo Berg", "retain", "golf"),
    )
]


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A two-person, text-only user dataset that loads."""
    root = tmp_path / "data"
    root.mkdir()
    write_lines(root / "profiles.jsonl", PROFILES)
    write_lines(root / "qa.jsonl", QUESTIONS)
    assert len(load_user_dataset(root).items) == 2
    return root


# --- non-UTF-8 text -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["profiles.jsonl", "qa.jsonl"])
def test_non_utf8_jsonl_names_file_line_and_column(dataset: Path, name: str) -> None:
    path = dataset / name
    lines = path.read_bytes().splitlines(keepends=True)
    # Latin-1 "é" in the second line's text, as a spreadsheet export might write it
    lines[1] = lines[1].replace(b"Bo Berg", b"B\xe9o Berg")
    path.write_bytes(b"".join(lines))
    column = lines[1].index(b"\xe9") + 1
    byte = len(lines[0]) + column - 1
    with pytest.raises(BenchmarkError) as raised:
        load_user_dataset(dataset)
    message = str(raised.value)
    assert f"{name} line 2, column {column} (byte {byte} of the file)" in message
    assert "not valid UTF-8 (byte 0xe9)" in message and "save the file as UTF-8" in message


def test_column_counts_characters_and_a_byte_order_mark_is_accepted(dataset: Path) -> None:
    path = dataset / "profiles.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = b"\xef\xbb\xbf" + lines[0].replace(b"Ada Lind", "Åda Lind".encode())
    path.write_bytes(b"".join(lines))
    assert load_user_dataset(dataset).people["p1"].name == "Åda Lind"  # BOM dropped
    lines[0] = lines[0].replace(b"Lind", b"L\xffnd")
    path.write_bytes(b"".join(lines))
    # 0-based index in the decoded line, where the BOM takes index 0: the 1-based column
    expected = lines[0].decode("utf-8", errors="replace").index("\ufffd")
    with pytest.raises(BenchmarkError, match=rf"profiles.jsonl line 1, column {expected} "):
        load_user_dataset(dataset)


def test_non_utf8_meta_json_is_named(dataset: Path) -> None:
    (dataset / "meta.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(
        BenchmarkError, match=r"meta.json in .*data, column 14 \(byte 13 .*not valid UTF-8"
    ):
        load_user_dataset(dataset)


# --- MLLMU-Bench parquet of the wrong shape ----------------------------------------------------


def mllmu_with_forget_row(root: Path, forget_row: dict) -> Path:
    write_config(root, "forget_10", [forget_row])
    write_config(root, "retain_90", [row("2", BLUE)])
    write_config(root, "Test_Set", [row("1", RED, test=True)])
    write_config(root, "Retain_Set", [row("1", BLUE)])
    return root


def broken(change) -> dict:
    good = row("1", RED)
    change(good)
    return good


WRONG_TYPES = {
    "answer holds an int": (
        lambda r: r.update(answer=1987),
        r"column 'answer' of ID '1' holds int 1987, expected a string or null",
    ),
    "question holds a list": (
        lambda r: r.update(question=["What", "is", "it?"]),
        r"column 'question' of ID '1' holds list \['What'.*expected a string or null",
    ),
    "options are a string": (
        lambda r: r["Classification_Task"]["Image_Textual_Questions"][0].update(Options="A, B"),
        r"column 'Classification_Task' at Image_Textual_Questions\[0\].Options of ID '1' holds "
        r"str 'A, B', expected an object letter -> option text, or a list of option texts",
    ),
    "image is a path string": (
        lambda r: r.update(image="1.png"),
        r"column 'image' of ID '1' holds str '1.png', expected an image \{bytes, path\}",
    ),
    "image bytes are text": (
        lambda r: r.update(image={"bytes": "not bytes", "path": "1.png"}),
        r"column 'image' of ID '1' holds str 'not bytes', expected an image \{bytes, path\}",
    ),
    "ground truth is a number": (
        lambda r: [e.update(Ground_Truth=3) for e in r["Generation_Task"]],
        r"column 'Generation_Task' at \[0\].Ground_Truth of ID '1' holds int 3, expected a string",
    ),
    "mask task is an object": (
        lambda r: r.update(Mask_Task={"Question": "x __"}),
        r"column 'Mask_Task' of ID '1' holds dict .*expected a list of questions",
    ),
    "task list is JSON text of the wrong shape": (
        lambda r: r.update(Classification_Task=json.dumps([1, 2])),
        r"column 'Classification_Task' of ID '1' holds list \[1, 2\], expected an object",
    ),
}


@pytest.mark.parametrize("case", WRONG_TYPES, ids=list(WRONG_TYPES))
def test_mllmu_column_of_the_wrong_type_names_file_column_and_types(
    tmp_path: Path, case: str
) -> None:
    change, message = WRONG_TYPES[case]
    root = mllmu_with_forget_row(tmp_path / "MLLMU-Bench", broken(change))
    with pytest.raises(BenchmarkError, match=message) as raised:
        load_benchmark(f"mllmu:{root}")
    assert "forget_10/data/train-00000-of-00001.parquet: column" in str(raised.value)


def test_mllmu_options_as_a_list_are_accepted(tmp_path: Path) -> None:
    options = ["baker", "cartographer", "pilot", "nurse"]
    first = row("1", RED)
    first["Classification_Task"]["Image_Textual_Questions"][0]["Options"] = options
    root = mllmu_with_forget_row(tmp_path / "MLLMU-Bench", first)
    mcq = [i for i in load_benchmark(f"mllmu:{root}").split("forget") if i.task == "mcq"][0]
    assert mcq.options == tuple(options) and mcq.value == "cartographer"


def test_mllmu_id_column_of_lists_is_refused(tmp_path: Path) -> None:
    root = mllmu_with_forget_row(tmp_path / "MLLMU-Bench", broken(lambda r: r.update(ID=["1"])))
    with pytest.raises(
        BenchmarkError, match=r"column 'ID' holds list<.*string>, expected strings or integers"
    ):
        load_benchmark(f"mllmu:{root}")


def test_mllmu_text_that_is_not_utf8_names_the_column(tmp_path: Path) -> None:
    root = mllmu_with_forget_row(tmp_path / "MLLMU-Bench", row("1", RED))
    file = root / "forget_10" / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(file)
    raw = pa.array([b"Who is \xff?"], pa.binary())
    bad = pa.Array.from_buffers(pa.string(), 1, raw.buffers())  # unchecked, as a bad writer would
    pq.write_table(table.set_column(table.column_names.index("question"), "question", bad), file)
    with pytest.raises(BenchmarkError, match=r"parquet: column 'question' holds invalid data"):
        load_benchmark(f"mllmu:{root}")


# --- split options that do not apply -------------------------------------------------------


def test_forget_ratio_or_seed_with_a_user_dataset_is_refused(dataset: Path) -> None:
    with pytest.raises(BenchmarkError, match=r"forget_ratio=0.2 only applies to the synthetic"):
        load_benchmark(dataset, forget_ratio=0.2)
    with pytest.raises(BenchmarkError, match=r"^seed=3 only applies .*profiles.jsonl decides"):
        load_benchmark(dataset, seed=3)
    with pytest.raises(BenchmarkError, match=r"forget_ratio=0.1 and seed=0 only apply"):
        load_benchmark(dataset, forget_ratio=0.1, seed=0)
    with pytest.raises(BenchmarkError, match=r"forget_ratio=0.1 only applies"):
        load_user_dataset(dataset, forget_ratio=0.1)
    assert load_benchmark(dataset).meta["forget_ratio"] == 0.5  # its own split


def test_seed_with_mllmu_is_refused_forget_ratio_picks_the_set(tmp_path: Path) -> None:
    root = mllmu_with_forget_row(tmp_path / "MLLMU-Bench", row("1", RED))
    with pytest.raises(BenchmarkError, match=r"seed=0 only applies .*MLLMU-Bench's forget sets"):
        load_benchmark(f"mllmu:{root}", seed=0)
    assert load_benchmark(f"mllmu:{root}").meta["forget_config"] == "forget_10"
    with pytest.raises(BenchmarkError, match="config folder 'forget_5' is missing"):
        load_benchmark(f"mllmu:{root}", forget_ratio=0.05)


def test_synthetic_takes_both_and_defaults_to_a_tenth_and_seed_0() -> None:
    default = load_benchmark()
    assert default.meta["forget_ratio"] == 0.1
    assert default.fingerprint() == load_benchmark(forget_ratio=0.1, seed=0).fingerprint()
    other = load_benchmark("synthetic", forget_ratio=0.1, seed=1)
    assert other.fingerprint() != default.fingerprint()
