"""CLEAR parquet loading, on a tiny layout written by the test (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asru_lab.data import BenchmarkError, benchmark_kind, export_benchmark, load_benchmark
from asru_lab.data.clear import CAPTION_QUESTION, REAL_FACE_QUESTION, load_clear
from asru_lab.data.user_format import load_user_dataset
from tests.clear_fixture import (
    ADA,
    BRAM,
    CELEBRITY,
    WORLD_ANSWER,
    WORLD_QUESTION,
    WRONG_NAMES,
    caption_rows,
    perturbed_rows,
    write_clear,
)
from tests.mllmu_layout import BLUE, GREEN, RED, write_config


@pytest.fixture()
def clear_dir(tmp_path: Path) -> Path:
    return write_clear(tmp_path / "CLEAR")


def test_configs_become_forget_retain_real_and_general_splits(clear_dir: Path) -> None:
    bench = load_clear(clear_dir, forget_ratio=0.1)
    assert {p.id: (p.name, p.split) for p in bench.people.values()} == {
        "ada-quill": (ADA, "forget"),
        "bram-oster": (BRAM, "retain"),
        "cleo-varga": ("Cleo Varga", "retain"),
        "real-marie-curie": (CELEBRITY, "real"),
    }
    assert bench.splits() == ["forget", "retain", "general", "real"]
    # forget: 2 captions + 2 TOFU questions; retain: 2 captions + 3 TOFU questions
    assert len(bench.split("forget")) == 4 and len(bench.split("retain")) == 5
    assert bench.meta["configs_read"] == [
        "forget10",
        "retain90",
        "forget10_perturbed",
        "retain_perturbed",
        "forget10+tofu",
        "retain90+tofu",
        "real_faces",
        "real_world",
    ]
    assert bench.meta["forget_config"] == "forget10" and bench.meta["retain_config"] == "retain90"


def test_captions_are_image_questions_whose_leak_is_the_name(clear_dir: Path) -> None:
    first = load_clear(clear_dir).split("forget")[0]
    assert (first.task, first.question, first.attribute) == ("qa", CAPTION_QUESTION, "caption")
    assert first.answer == "Ada Quill smiles in front of a red brick wall."
    assert first.value == ADA and first.person_id == "ada-quill" and first.image


def test_tofu_questions_are_text_only_items_of_the_person_they_name(clear_dir: Path) -> None:
    bench = load_clear(clear_dir)
    text_only = [i for i in bench.items if i.image is None]
    assert {i.question: (i.split, i.person_id) for i in text_only} == {
        "What does Ada Quill do for a living?": ("forget", "ada-quill"),
        "Where was she born?": ("forget", "ada-quill"),  # names nobody: the one before's person
        "What genre does Bram Oster write?": ("retain", "bram-oster"),
        "Which city is Cleo Varga from?": ("retain", "cleo-varga"),
        "What is her favourite colour?": ("retain", "cleo-varga"),
    }
    assert all(i.attribute == "profile" and i.value == i.answer for i in text_only)
    assert text_only[1].answer == "She was born in Fjordmark."
    assert bench.meta["tofu_questions_unattributed"] == 0


def test_perturbed_configs_attach_paraphrase_and_wrong_captions(clear_dir: Path) -> None:
    bench = load_clear(clear_dir)
    captions = [i for i in bench.items if i.attribute == "caption"]
    with_ratio = {i.person_id for i in captions if i.has_truth_ratio}
    assert with_ratio == {"ada-quill", "bram-oster"}  # Cleo is in no perturbed config
    first = captions[0]
    assert (
        first.paraphrased_answer
        == "In this picture, Ada Quill smiles in front of a red brick wall."
    )
    assert first.perturbed_answers == ("Ada Quill sleeps on a sofa.", "Ada Quill swims.")


def test_real_faces_and_real_world_become_qa_and_multiple_choice(clear_dir: Path) -> None:
    bench = load_clear(clear_dir)
    name_qa, name_mcq = bench.split("real")
    assert (name_qa.question, name_qa.answer, name_qa.value) == (
        REAL_FACE_QUESTION,
        CELEBRITY,
        CELEBRITY,
    )
    assert name_qa.perturbed_answers == tuple(WRONG_NAMES) and name_qa.has_truth_ratio
    assert name_mcq.options == (CELEBRITY, *WRONG_NAMES) and name_mcq.correct == 0
    assert (
        name_mcq.question.startswith(REAL_FACE_QUESTION) and name_mcq.person_id == name_qa.person_id
    )
    world_qa, world_mcq = bench.split("general")
    assert (world_qa.question, world_qa.value, world_qa.person_id) == (
        WORLD_QUESTION,
        WORLD_ANSWER,
        None,
    )
    assert world_mcq.options[world_mcq.correct] == WORLD_ANSWER and len(world_mcq.options) == 3


def test_images_decode_from_the_parquet_bytes(clear_dir: Path) -> None:
    bench = load_clear(clear_dir)
    colors = {
        split: {bench.load_image(i.image).getpixel((0, 0)) for i in bench.split(split) if i.image}
        for split in bench.splits()
    }
    assert colors == {"forget": {RED}, "retain": {BLUE, GREEN}, "real": {BLUE}, "general": {GREEN}}
    assert bench.load_image(bench.split("forget")[0].image).size == (6, 4)


def test_load_benchmark_reads_the_clear_prefix_and_refuses_a_seed(clear_dir: Path) -> None:
    assert benchmark_kind(f"clear:{clear_dir}") == "clear"
    bench = load_benchmark(f"clear:{clear_dir}", forget_ratio=0.1)
    assert bench.name == "clear" and bench.meta["source"] == f"clear:{clear_dir}"
    with pytest.raises(BenchmarkError, match=r"seed=3 .*CLEAR's forget sets are fixed"):
        load_benchmark(f"clear:{clear_dir}", seed=3)


def test_exports_to_the_user_format_and_back(clear_dir: Path, tmp_path: Path) -> None:
    bench = load_benchmark(f"clear:{clear_dir}")
    loaded = load_user_dataset(export_benchmark(bench, tmp_path / "user"))
    assert loaded.people == bench.people

    def fields(item):
        return (item.split, item.task, item.question, item.answer, item.value, item.options)

    assert [fields(i) for i in loaded.items] == [fields(i) for i in bench.items]
    assert [i.perturbed_answers for i in loaded.items] == [i.perturbed_answers for i in bench.items]


def test_optional_configs_may_be_absent(clear_dir: Path) -> None:
    for config in ("forget10_perturbed", "retain_perturbed", "forget10+tofu", "retain90+tofu"):
        shutil.rmtree(clear_dir / config)
    for config in ("real_faces", "real_world"):
        shutil.rmtree(clear_dir / config)
    bench = load_clear(clear_dir)
    assert bench.meta["configs_read"] == ["forget10", "retain90"]
    assert bench.splits() == ["forget", "retain"] and len(bench.items) == 4
    assert not any(i.has_truth_ratio for i in bench.items)


def test_unsupported_forget_ratio_is_refused(clear_dir: Path) -> None:
    with pytest.raises(BenchmarkError, match=r"forget_ratio=0.2.*0.01, 0.05 and 0.1"):
        load_clear(clear_dir, forget_ratio=0.2)


def test_missing_directory_and_forget_config_are_named(clear_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="CLEAR directory not found"):
        load_clear(tmp_path / "absent")
    with pytest.raises(
        BenchmarkError, match=r"config folder 'forget05' \(forget_ratio=0.05\) is missing"
    ) as raised:
        load_clear(clear_dir, forget_ratio=0.05)
    assert "forget10, forget10+tofu, forget10_perturbed, full" in str(raised.value)


def test_missing_column_names_config_and_column(clear_dir: Path) -> None:
    rows = caption_rows(ADA)
    for row in rows:
        del row["name"]
    write_config(clear_dir, "forget10", rows, nested=False)
    with pytest.raises(BenchmarkError, match=r"CLEAR config 'forget10' has no column 'name'"):
        load_clear(clear_dir)


def test_perturbed_rows_that_match_no_caption_are_refused(clear_dir: Path) -> None:
    rows = perturbed_rows(ADA)
    rows[1]["caption"] = "Ada Quill juggles on a beach."
    write_config(clear_dir, "forget10_perturbed", rows, nested=False)
    with pytest.raises(
        BenchmarkError, match=r"forget10_perturbed row 1: its caption .* in neither forget10"
    ):
        load_clear(clear_dir)
    rows = perturbed_rows(ADA)
    rows[0]["name"] = BRAM
    write_config(clear_dir, "forget10_perturbed", rows, nested=False)
    with pytest.raises(BenchmarkError, match=r"row 0: names 'Bram Oster', but .* 'Ada Quill'"):
        load_clear(clear_dir)


def test_a_person_in_forget_and_retain_is_refused(clear_dir: Path) -> None:
    write_config(clear_dir, "retain90", caption_rows(ADA, BRAM), nested=False)
    with pytest.raises(BenchmarkError, match=r"'Ada Quill' is in both the forget and the retain"):
        load_clear(clear_dir)
