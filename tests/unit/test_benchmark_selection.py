"""Items in, batches out: the selections and images every stage asks a Benchmark for."""

from __future__ import annotations

import pytest
from PIL import Image

from asru_lab.data.prompts import CLOZE_PREFIX, MCQ_SUFFIX, mcq_prompt
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem


def item(split, task, image, value="Lyon", attribute="birthplace", pid="p1"):
    options = ("Lyon", "Oslo", "Lima", "Kyiv") if task == "mcq" else None
    return QAItem(
        split, task, pid, image, f"{task} about {pid}?", f"born in {value}", attribute, value,
        options, 0 if options else None,
    )  # fmt: skip


@pytest.fixture
def bench() -> Benchmark:
    people = [Person("p1", "Ada Vale", "forget", {"birthplace": "Lyon"}),
              Person("p2", "Bo Lind", "retain", {"birthplace": "Oslo"})]  # fmt: skip
    items = [
        item("forget", "qa", "a.png"),
        item("forget", "qa", None),
        item("forget", "mcq", "a.png"),
        item("forget", "cloze", None),
        item("retain", "qa", "b.png", "Oslo", pid="p2"),
    ]
    colours = {"a.png": "red", "b.png": "blue"}
    return Benchmark(
        people,
        items,
        name="tiny",
        image_loader=lambda path: Image.new("RGB", (4, 4), colours[path]),
        value_pools={"birthplace": ("Quito",)},
    )


def test_questions_select_split_tasks_and_images_in_order(bench):
    forget = bench.split("forget")
    assert bench.questions("forget") == forget
    assert bench.questions("forget", "qa") == forget[:2]
    assert bench.questions("forget", ("mcq", "cloze")) == forget[2:]
    assert bench.questions("forget", "qa", image_only=True) == forget[:1]
    assert bench.questions("forget", ["qa", "mcq"], image_only=True) == [forget[0], forget[2]]
    assert bench.questions("test") == []


def test_an_unknown_task_or_split_is_named(bench):
    with pytest.raises(BenchmarkError, match="unknown task 'essay'"):
        bench.questions("forget", "essay")
    with pytest.raises(BenchmarkError, match="unknown split 'forgotten'"):
        bench.questions("forgotten")


def test_images_open_each_items_picture_or_none(bench):
    images = bench.images(bench.split("forget"))
    assert [None if i is None else i.getpixel((0, 0)) for i in images] == [
        (255, 0, 0),
        None,
        (255, 0, 0),
        None,
    ]


def test_value_pools_join_declared_values_people_and_items(bench):
    pools = bench.value_pools()
    assert pools["birthplace"] == {"Quito", "Lyon", "Oslo"}
    assert pools["name"] == {"Ada Vale", "Bo Lind"}
    # a subset keeps what the benchmark declared
    assert bench.subset(bench.split("retain")).value_pools()["birthplace"] == {
        "Quito",
        "Oslo",
        "Lyon",
    }


def test_every_loader_phrases_prompts_one_way():
    prompt = mcq_prompt("Where was she born?", ["Lyon", "Oslo"])
    assert prompt == f"Where was she born?\nA. Lyon\nB. Oslo\n{MCQ_SUFFIX}"
    assert CLOZE_PREFIX.endswith(": ")


def test_encode_items_is_encode_with_each_items_image_and_question(lm):
    import asru_lab as al
    from asru_lab.generation import encode, encode_items

    real = al.load_benchmark()
    items = real.questions("forget", "qa")[:2] + real.questions("forget", "qa", image_only=True)[:1]
    answers = [i.answer for i in items]
    got = encode_items(lm, real, items, answers)
    images = [real.load_image(i.image) if i.image else None for i in items]
    want = encode(lm, images, [i.question for i in items], answers)
    assert got.keys() == want.keys()
    assert all((got[k] == want[k]).all() for k in want)
