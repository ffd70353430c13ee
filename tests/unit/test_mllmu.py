"""MLLMU-Bench parquet loading, on a tiny layout written by the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asru_lab.data import BenchmarkError, export_benchmark, load_benchmark
from asru_lab.data.mllmu import load_mllmu
from asru_lab.data.user_format import load_user_dataset
from tests.mllmu_layout import BLUE, GREEN, RED, row, write_config, write_mllmu


@pytest.fixture()
def mllmu_dir(tmp_path: Path) -> Path:
    return write_mllmu(tmp_path / "MLLMU-Bench")


def test_configs_become_forget_retain_test_and_real_splits(mllmu_dir: Path) -> None:
    bench = load_mllmu(mllmu_dir, forget_ratio=0.1)
    assert {p.id: p.split for p in bench.people.values()} == {
        "1": "forget",
        "2": "retain",
        "3": "retain",
        "real-1": "real",
    }
    assert bench.people["2"].name == "person 2"
    assert bench.splits() == ["forget", "retain", "test", "real"]
    # Per row: profile QA, 2 MCQ, 2 generation QA, 1 cloze.
    assert len(bench.split("forget")) == 6 and len(bench.split("retain")) == 12
    assert {i.person_id for i in bench.split("test")} == {"1"}  # filtered to the forget people
    assert {i.person_id for i in bench.split("real")} == {"real-1"}
    assert bench.meta["forget_config"] == "forget_10"


def test_tasks_are_mapped_to_qa_mcq_and_cloze(mllmu_dir: Path) -> None:
    forget = load_mllmu(mllmu_dir).split("forget")
    profile, mcq_image, mcq_text, gen_image, gen_text, cloze = forget
    assert profile.task == "qa" and profile.image is not None
    assert profile.answer == "Person 1 is a cartographer from Fjordmark."
    assert mcq_image.task == "mcq" and mcq_image.image is not None
    assert mcq_image.options == ("baker", "cartographer", "pilot", "nurse")
    assert mcq_image.correct == 1 and mcq_image.value == "cartographer"
    assert "B. cartographer" in mcq_image.question and mcq_image.answer == "cartographer"
    assert mcq_text.image is None and mcq_text.correct == 0
    assert (gen_image.task, gen_image.value) == ("qa", "cartographer") and gen_image.image
    assert gen_text.image is None and gen_text.value == "Fjordmark"
    assert cloze.task == "cloze" and cloze.image is None and cloze.value == "cartographer"
    assert cloze.question == "Fill in the blank: Person 1 works as a ___."


def test_images_decode_from_the_parquet_bytes(mllmu_dir: Path) -> None:
    bench = load_mllmu(mllmu_dir)
    forget_image = bench.load_image(bench.split("forget")[0].image)
    assert forget_image.size == (6, 4) and forget_image.getpixel((0, 0)) == RED
    test_colors = {
        bench.load_image(i.image).getpixel((0, 0)) for i in bench.split("test") if i.image
    }
    assert test_colors == {RED, GREEN}  # image questions take the row's images in turn


def test_exports_to_the_user_format_and_back(mllmu_dir: Path, tmp_path: Path) -> None:
    bench = load_benchmark(f"mllmu:{mllmu_dir}", forget_ratio=0.1)
    loaded = load_user_dataset(export_benchmark(bench, tmp_path / "user"))
    assert loaded.people == bench.people
    assert [
        (i.split, i.task, i.question, i.answer, i.value, i.options, i.correct) for i in loaded.items
    ] == [
        (i.split, i.task, i.question, i.answer, i.value, i.options, i.correct) for i in bench.items
    ]


def test_unsupported_forget_ratio_is_refused(mllmu_dir: Path) -> None:
    with pytest.raises(BenchmarkError, match=r"forget_ratio=0.2.*0.05, 0.1 and 0.15"):
        load_mllmu(mllmu_dir, forget_ratio=0.2)


def test_missing_folder_files_and_columns_are_named(mllmu_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="MLLMU-Bench directory not found"):
        load_mllmu(tmp_path / "absent")
    with pytest.raises(BenchmarkError, match="config folder 'forget_5' is missing"):
        load_mllmu(mllmu_dir, forget_ratio=0.05)
    (mllmu_dir / "forget_5").mkdir()
    with pytest.raises(BenchmarkError, match="no parquet files under .*forget_5"):
        load_mllmu(mllmu_dir, forget_ratio=0.05)
    broken = row("1", RED)
    del broken["Mask_Task"]
    write_config(mllmu_dir, "forget_10", [broken])
    with pytest.raises(BenchmarkError, match="column 'Mask_Task' is missing"):
        load_mllmu(mllmu_dir)


def test_people_in_both_forget_and_retain_are_refused(mllmu_dir: Path) -> None:
    write_config(mllmu_dir, "retain_90", [row("1", BLUE)], nested=False)
    with pytest.raises(BenchmarkError, match="ID '1' is also in the forget split"):
        load_mllmu(mllmu_dir)
