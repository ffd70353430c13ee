"""The user dataset directory format: export, reload, and clear errors for broken datasets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asru_lab.artifacts import OutputError
from asru_lab.data import (
    Benchmark,
    BenchmarkError,
    export_benchmark,
    load_benchmark,
    load_synthetic,
)
from asru_lab.data.user_format import load_user_dataset
from tests.user_dataset import PEOPLE, qa

PER_GROUP = 4


@pytest.fixture(scope="module")
def small_bench() -> Benchmark:
    """The synthetic benchmark cut to a few items of every (split, task) pair."""
    bench = load_synthetic()
    taken: dict[tuple[str, str], int] = {}
    items = []
    for item in bench.items:
        key = (item.split, item.task)
        if taken.get(key, 0) < PER_GROUP:
            taken[key] = taken.get(key, 0) + 1
            items.append(item)
    small = bench.subset(items)
    assert small.split("forget") and small.split("retain")
    return small


@pytest.fixture(scope="module")
def exported(small_bench: Benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_benchmark(small_bench, tmp_path_factory.mktemp("export") / "bench")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- export and round trip -------------------------------------------------------------------
def test_export_writes_the_documented_fields(exported: Path, small_bench: Benchmark) -> None:
    assert {p.name for p in exported.iterdir()} == {
        ".asru_lab_output.json",  # the marker: an asru_lab output folder (artifacts.py)
        "profiles.jsonl",
        "qa.jsonl",
        "images",
        "meta.json",
    }
    profiles = read_lines(exported / "profiles.jsonl")
    assert len(profiles) == len(small_bench.people)
    assert set(profiles[0]) == {"id", "name", "split", "facts"}
    assert {"birthplace", "occupation", "birth_year", "hobby"} <= set(profiles[0]["facts"])
    rows = read_lines(exported / "qa.jsonl")
    assert len(rows) == len(small_bench.items)
    base = {"person_id", "split", "image", "question", "answer", "attribute"}
    mcq = next(r for r in rows if "options" in r)
    assert set(mcq) == base | {"options", "correct"}
    assert mcq["correct"] in "ABCD" and len(mcq["options"]) == 4
    cloze = next(r for r in rows if "cloze" in r)
    assert set(cloze) == base | {"cloze"}
    assert "___" in cloze["cloze"] and cloze["question"].endswith(cloze["cloze"])
    # The synthetic benchmark's values are all derivable: no extra field is needed, except the
    # truth ratio's answers on the known people's open questions.
    truth_ratio = {"paraphrased_answer", "perturbed_answers"}
    assert all(set(r) <= base | {"options", "correct", "cloze"} | truth_ratio for r in rows)
    known_qa = [r for r in rows if r["split"] in ("forget", "retain") and set(r) >= base]
    known_qa = [r for r in known_qa if not {"options", "cloze"} & set(r)]
    assert known_qa and all(set(r) == base | truth_ratio for r in known_qa)
    assert all(len(r["perturbed_answers"]) == 5 for r in known_qa)
    for row in rows:
        if row["image"] is not None:
            assert (exported / row["image"]).is_file()
    meta = json.loads((exported / "meta.json").read_text())
    assert meta == {
        "name": "synthetic",
        "fingerprint": small_bench.fingerprint(),
        "forget_ratio": 0.1,
        "value_pools": {a: list(v) for a, v in small_bench.declared_pools.items()},
    }


def test_round_trip_gives_the_same_benchmark(exported: Path, small_bench: Benchmark) -> None:
    loaded = load_user_dataset(exported)
    assert loaded.people == small_bench.people
    assert loaded.items == small_bench.items
    assert loaded.fingerprint() == small_bench.fingerprint()
    assert loaded.name == "synthetic" and loaded.meta["forget_ratio"] == 0.1
    # the judge sees the same hallucination pools in the export as in the original
    assert loaded.value_pools() == small_bench.value_pools()
    images = [i.image for i in small_bench.items if i.image is not None]
    for path in images[:: max(1, len(images) // 4)]:
        a = np.asarray(loaded.load_image(path))
        b = np.asarray(small_bench.load_image(path))
        assert a.shape == b.shape and (a == b).all()


def test_load_benchmark_dispatches_on_source(exported: Path) -> None:
    assert load_benchmark(str(exported)).fingerprint() == load_user_dataset(exported).fingerprint()
    with pytest.raises(BenchmarkError, match="forget_ratio=0.3 only applies to the synthetic"):
        load_benchmark(exported, forget_ratio=0.3)  # the profiles decide the split
    assert load_benchmark().name == "synthetic"
    assert load_benchmark("synthetic", forget_ratio=0.2, seed=1).meta["forget_ratio"] == 0.2
    with pytest.raises(BenchmarkError, match="unknown benchmark source 'nowhere/at/all'"):
        load_benchmark("nowhere/at/all")


def test_export_refuses_a_non_empty_directory(small_bench: Benchmark, tmp_path: Path) -> None:
    bench = small_bench.subset(small_bench.split("forget")[:2] + small_bench.split("retain")[:2])
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"did not write \(notes\.txt\).*overwrite=True"):
        export_benchmark(bench, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    export_benchmark(bench, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"  # written beside, never over
    assert load_user_dataset(target).items == bench.items
    smaller = bench.subset(bench.split("forget")[:1] + bench.split("retain")[:1])
    export_benchmark(smaller, target, overwrite=True)  # again: replaces its own export only
    assert (target / "notes.txt").read_text() == "keep me"
    assert load_user_dataset(target).items == smaller.items
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_non_synthetic_values_survive_a_round_trip(small_bench: Benchmark, tmp_path: Path) -> None:
    forget = small_bench.split("forget", "qa")[0]
    odd = replace(forget, attribute="motto", value="Carpe Diem")
    bench = small_bench.subset([odd, *small_bench.split("retain")[:1]])
    out = export_benchmark(bench, tmp_path / "odd")
    assert read_lines(out / "qa.jsonl")[0]["value"] == "Carpe Diem"
    assert load_user_dataset(out).items == bench.items


# --- hand-written datasets -------------------------------------------------------------------
def write(root: Path, people: list[dict] | None = None, rows: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (120, 125, 40)).save(root / "images" / "a.png")
    people = PEOPLE if people is None else people
    rows = [qa(), qa("p2", "retain", answer="Rowing.")] if rows is None else rows
    (root / "profiles.jsonl").write_text("".join(json.dumps(p) + "\n" for p in people))
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_values_are_derived_from_facts_names_and_answers(tmp_path: Path) -> None:
    rows = [
        qa(),
        qa(attribute="name", question="Who is this?", answer="This is Ada Lind."),
        qa("p2", "retain", attribute="background", answer="Olive."),
        qa(None, "general", attribute="background", answer="Olive!"),
        qa(options=["rowing", "chess", "golf"], correct="B"),
        qa(options=["rowing", "chess", "golf"], correct=1, attribute="sport", question="Sport?"),
        qa(options=["rowing", "chess", "golf"], correct="golf", attribute="sport", question="Or?"),
        qa(cloze="Their hobby is __.", question=None, answer="chess"),
    ]
    del rows[-1]["question"]
    bench = load_user_dataset(write(tmp_path / "d", rows=rows))
    values = [i.value for i in bench.items]
    assert values == ["chess", "Ada Lind", "olive", "olive", "chess", "chess", "golf", "chess"]
    assert [i.task for i in bench.items] == ["qa"] * 4 + ["mcq"] * 3 + ["cloze"]
    assert [i.correct for i in bench.items[4:7]] == [1, 1, 2]
    assert bench.items[-1].question == "Fill in the blank: Their hobby is ___."
    assert bench.meta["forget_ratio"] == 0.5  # computed from the profiles without meta.json
    assert bench.load_image("images/a.png").size == (8, 8)


def test_missing_directory_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="dataset directory not found"):
        load_user_dataset(tmp_path / "absent")
    root = write(tmp_path / "d")
    (root / "qa.jsonl").unlink()
    with pytest.raises(BenchmarkError, match="qa.jsonl is missing"):
        load_user_dataset(root)
    (root / "profiles.jsonl").unlink()
    with pytest.raises(BenchmarkError, match="profiles.jsonl is missing"):
        load_user_dataset(root)


def test_malformed_line_gives_file_and_line_number(tmp_path: Path) -> None:
    root = write(tmp_path / "d")
    with open(root / "qa.jsonl", "a") as f:
        f.write('{"person_id": "p1", "split": \n')
    with pytest.raises(BenchmarkError, match=r"qa.jsonl line 3: not valid JSON"):
        load_user_dataset(root)
    root = write(tmp_path / "e")
    (root / "profiles.jsonl").write_text(json.dumps(PEOPLE[0]) + "\n[1, 2]\n")
    with pytest.raises(BenchmarkError, match=r"profiles.jsonl line 2: expected a JSON object"):
        load_user_dataset(root)


@pytest.mark.parametrize(
    ("which", "field"),
    [
        ("qa", "answer"),
        ("qa", "attribute"),
        ("qa", "split"),
        ("qa", "person_id"),
        ("profile", "name"),
    ],
)
def test_missing_field_is_named_with_its_line(tmp_path: Path, which: str, field: str) -> None:
    people = [dict(p) for p in PEOPLE]
    rows = [qa(), qa("p2", "retain")]
    (people if which == "profile" else rows)[1].pop(field)
    root = write(tmp_path / "d", people, rows)
    file = "profiles.jsonl" if which == "profile" else "qa.jsonl"
    with pytest.raises(
        BenchmarkError, match=rf"{file} line 2: required field '{field}' is missing"
    ):
        load_user_dataset(root)


def test_mcq_without_a_valid_correct_option_is_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "d", rows=[qa(options=["a", "b"], correct="C"), qa("p2", "retain")])
    with pytest.raises(BenchmarkError, match=r"line 1: field 'correct' is 'C'"):
        load_user_dataset(root)


def test_missing_or_broken_image_is_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "d", rows=[qa(), qa("p2", "retain", image="images/none.png")])
    with pytest.raises(BenchmarkError, match=r"qa.jsonl line 2: image 'images/none.png' not found"):
        load_user_dataset(root)
    (root / "images" / "none.png").write_bytes(b"this is not a png")
    with pytest.raises(BenchmarkError, match=r"line 2: image 'images/none.png' is not a readable"):
        load_user_dataset(root)


def test_empty_forget_or_retain_split_is_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "d", rows=[qa("p2", "retain")])
    with pytest.raises(BenchmarkError, match="the forget split is empty"):
        load_user_dataset(root)
    root = write(tmp_path / "e", rows=[qa()])
    with pytest.raises(BenchmarkError, match=r"the retain split is empty.*1 retain people"):
        load_user_dataset(root)


def test_duplicate_and_double_split_people_are_refused(tmp_path: Path) -> None:
    same = [*PEOPLE, PEOPLE[1]]
    with pytest.raises(
        BenchmarkError, match=r"line 3: person id 'p2' was already listed on line 2"
    ):
        load_user_dataset(write(tmp_path / "d", people=same))
    both = [*PEOPLE, {**PEOPLE[0], "split": "retain"}]
    with pytest.raises(BenchmarkError, match=r"'forget' there and 'retain' here"):
        load_user_dataset(write(tmp_path / "e", people=both))
    root = write(tmp_path / "f", rows=[qa(), qa("p2", "retain"), qa("p1", "retain")])
    with pytest.raises(BenchmarkError, match=r"'retain' question is about 'p1' \(split 'forget'\)"):
        load_user_dataset(root)


def test_unknown_person_id_is_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "d", rows=[qa(), qa("p9", "retain")])
    with pytest.raises(BenchmarkError, match=r"line 2: person_id 'p9' is not in profiles.jsonl"):
        load_user_dataset(root)


def test_truth_ratio_answers_are_read_and_checked(tmp_path: Path) -> None:
    wrong = ["Their hobby is golf.", "Their hobby is rowing."]
    rows = [qa(paraphrased_answer="They enjoy chess.", perturbed_answers=wrong), qa("p2", "retain")]
    item = load_user_dataset(write(tmp_path / "d", rows=rows)).items[0]
    assert item.paraphrased_answer == "They enjoy chess."
    assert item.perturbed_answers == tuple(wrong) and item.has_truth_ratio
    bad = {
        "e": ({"perturbed_answers": "golf"}, "'perturbed_answers' must be a non-empty list"),
        "f": ({"perturbed_answers": []}, "'perturbed_answers' must be a non-empty list"),
        "g": ({"paraphrased_answer": 3}, "'paraphrased_answer' must be a non-empty string"),
        "h": (
            {"options": ["chess", "golf"], "correct": "A", "perturbed_answers": wrong},
            "belong to open questions",
        ),
    }
    for folder, (extra, message) in bad.items():
        with pytest.raises(BenchmarkError, match=rf"qa.jsonl line 1: .*{message}"):
            load_user_dataset(write(tmp_path / folder, rows=[qa(**extra), qa("p2", "retain")]))
