"""A dataset is someone else's files: it may only name files inside itself, its images are
checked against a pixel budget before decoding, empty or repeated questions are refused, and a
prompt too long for the model is refused before any forward pass (issue #29)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import PIL.Image
import pytest
from PIL import Image

import asru_lab.data.schema as schema
from asru_lab.cli import main
from asru_lab.data import BenchmarkError, export_benchmark, load_benchmark
from asru_lab.data.mllmu import load_mllmu
from asru_lab.data.user_format import load_user_dataset
from asru_lab.generation import (
    PromptTooLongError,
    Turn,
    encode_items,
    generate,
    generate_chats,
)
from tests.mllmu_layout import BLUE, RED, row, write_config, write_mllmu
from tests.user_dataset import PEOPLE, qa

OUTSIDE_COLOR = (201, 7, 7)


def write(root: Path, rows: list[dict], people: list[dict] = PEOPLE) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "images" / "a.png")
    (root / "profiles.jsonl").write_text("".join(json.dumps(p) + "\n" for p in people))
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def with_image(root: Path, image: str) -> Path:
    """A dataset whose line 2 shows `image`."""
    return write(root, [qa(), qa("p2", "retain", image=image, answer="Rowing.")])


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the dataset holding a PNG nobody may show the model."""
    folder = tmp_path / "outside"
    folder.mkdir()
    Image.new("RGB", (8, 8), OUTSIDE_COLOR).save(folder / "secret.png")
    return folder


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path PIL is asked to open during the test."""
    seen: list[str] = []
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        seen.append(os.fspath(fp) if isinstance(fp, str | os.PathLike) else "<bytes>")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return seen


def png_declaring(width: int, height: int) -> bytes:
    """A few-byte PNG whose header declares `width` x `height` pixels (its data is garbage: only
    decoding it would notice)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- paths stay inside the dataset -----------------------------------------------------------
def link(target: str | Path, at: str):
    return lambda root, outside: os.symlink(Path(str(target).format(outside=outside)), root / at)


PATH_CASES = {
    "absolute path": ("{outside}/secret.png", None, "is an absolute path"),
    "dot-dot": ("../outside/secret.png", None, "goes up with '..'"),
    "dot-dot into /etc": ("images/../../../../../../etc/passwd", None, "goes up with '..'"),
    "link to /etc/passwd": ("images/p.png", link("/etc/passwd", "images/p.png"), "outside"),
    "link to environ": ("images/e.png", link("/proc/self/environ", "images/e.png"), "outside"),
    "link to outside png": (
        "images/s.png",
        link("{outside}/secret.png", "images/s.png"),
        "outside",
    ),
    "linked folder": ("imgs/secret.png", link("{outside}", "imgs"), "outside"),
    # variants: a link to a link inside that leaves, and a link going up from a subfolder
    "chain of links": (
        "images/c.png",
        lambda root, outside: (
            os.symlink(outside / "secret.png", root / "images" / "hop.png"),
            os.symlink("hop.png", root / "images" / "c.png"),
        ),
        "outside",
    ),
    "relative link up": (
        "images/r.png",
        link("../../outside/secret.png", "images/r.png"),
        "outside",
    ),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_an_image_outside_the_dataset_is_refused_unread(
    tmp_path: Path, outside: Path, opened: list[str], case: str
) -> None:
    image, prepare, reason = PATH_CASES[case]
    image = image.format(outside=outside)
    root = with_image(tmp_path / "data", image)
    if prepare:
        prepare(root, outside)
    with pytest.raises(BenchmarkError, match=r"qa.jsonl line 2: image .*" + reason) as err:
        load_user_dataset(root)
    assert repr(image) in str(err.value)
    # nothing outside the dataset was opened as an image (today's code showed it to the model)
    inside = os.path.realpath(root)
    assert all(p.startswith(inside) or p == "<bytes>" for p in opened), opened


def test_links_that_stay_inside_the_dataset_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with_image(root, "alias/b.png")
    (root / "pictures").mkdir()
    Image.new("RGB", (8, 8), BLUE).save(root / "pictures" / "b.png")
    os.symlink("pictures", root / "alias")  # a folder link inside the dataset
    os.symlink(root, tmp_path / "via-link")  # the dataset reached through a link
    bench = load_user_dataset(tmp_path / "via-link")
    assert bench.load_image("alias/b.png").getpixel((0, 0)) == BLUE


@pytest.mark.parametrize("name", ["profiles.jsonl", "qa.jsonl", "meta.json"])
def test_a_dataset_file_linked_outside_is_refused(tmp_path: Path, name: str) -> None:
    root = with_image(tmp_path / "data", "images/a.png")
    elsewhere = tmp_path / f"elsewhere-{name}"
    elsewhere.write_bytes((root / name).read_bytes() if (root / name).exists() else b"{}")
    (root / name).unlink(missing_ok=True)
    os.symlink(elsewhere, root / name)
    with pytest.raises(BenchmarkError, match=rf"file '{name}' leads outside the dataset"):
        load_user_dataset(root)


def test_a_fifo_or_a_folder_named_as_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    root = with_image(tmp_path / "data", "images/pipe.png")
    os.mkfifo(root / "images" / "pipe.png")  # opening it would wait forever for a writer
    with pytest.raises(BenchmarkError, match=r"line 2: image 'images/pipe.png' is not a regular"):
        load_user_dataset(root)
    root = with_image(tmp_path / "data2", "images")
    with pytest.raises(BenchmarkError, match=r"line 2: image 'images' is not a regular file"):
        load_user_dataset(root)


def test_a_nul_character_in_a_path_is_refused(tmp_path: Path) -> None:
    root = with_image(tmp_path / "data", "images/a.png\u0000.txt")
    with pytest.raises(BenchmarkError, match=r"line 2: image .* holds a NUL character"):
        load_user_dataset(root)


def test_an_image_swapped_for_a_link_after_loading_is_not_shown(
    tmp_path: Path, outside: Path
) -> None:
    root = with_image(tmp_path / "data", "images/b.png")
    Image.new("RGB", (8, 8), BLUE).save(root / "images" / "b.png")
    bench = load_user_dataset(root)
    (root / "images" / "b.png").unlink()
    os.symlink(outside / "secret.png", root / "images" / "b.png")
    with pytest.raises(BenchmarkError, match="leads outside the dataset directory"):
        bench.load_image("images/b.png")


def test_export_never_copies_a_file_from_outside(tmp_path: Path, outside: Path) -> None:
    root = with_image(tmp_path / "data", "images/b.png")
    Image.new("RGB", (8, 8), BLUE).save(root / "images" / "b.png")
    bench = load_user_dataset(root)
    (root / "images" / "b.png").unlink()
    os.symlink(outside / "secret.png", root / "images" / "b.png")
    out = tmp_path / "export"
    with pytest.raises(BenchmarkError, match="image 'images/b.png' leads outside"):
        export_benchmark(bench, out)
    assert not out.exists()
    assert main(["export-benchmark", "--data", str(root), "--out", str(out)]) == 2
    assert not out.exists()
    # an absolute path put into the dataset's items in code (it was exported as
    # images/<the absolute path>.png)
    crafted = bench.subset([replace(i, image=str(outside / "secret.png")) for i in bench.items])
    with pytest.raises(BenchmarkError, match="is an absolute path"):
        export_benchmark(crafted, out)
    assert not out.exists()


# --- a pixel budget read from the header ------------------------------------------------------
def test_a_small_png_declaring_12000_squared_pixels_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    root = with_image(tmp_path / "data", "images/big.png")
    (root / "images" / "big.png").write_bytes(png_declaring(12_000, 12_000))
    with pytest.raises(
        BenchmarkError,
        match=r"line 2: image 'images/big.png' declares 12000 x 12000 pixels \(144 M\), over the "
        r"budget of 67 M pixels \(8192 x 8192\)",
    ):
        load_user_dataset(root)
    out = tmp_path / "out"
    assert main(["export-benchmark", "--data", str(root), "--out", str(out)]) == 2
    assert not out.exists()


def test_a_huge_image_swapped_in_after_loading_is_refused_when_opened(tmp_path: Path) -> None:
    root = with_image(tmp_path / "data", "images/b.png")
    Image.new("RGB", (8, 8), BLUE).save(root / "images" / "b.png")
    bench = load_user_dataset(root)
    (root / "images" / "b.png").write_bytes(png_declaring(9000, 9000))
    with pytest.raises(BenchmarkError, match=r"image 'images/b.png' .* declares 9000 x 9000"):
        bench.load_image("images/b.png")


def test_pil_s_own_bomb_refusal_becomes_the_budget_error(tmp_path: Path) -> None:
    # over twice PIL's limit, PIL refuses while opening, before the size can be read
    root = with_image(tmp_path / "data", "images/bomb.png")
    (root / "images" / "bomb.png").write_bytes(png_declaring(30_000, 30_000))
    with pytest.raises(BenchmarkError, match=r"line 2: image 'images/bomb.png' is too large"):
        load_user_dataset(root)


def test_a_jpeg_declaring_a_huge_size_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 10_000, 9_000)  # height, width
    root = with_image(tmp_path / "data", "images/big.jpg")
    (root / "images" / "big.jpg").write_bytes(bytes(data))
    with pytest.raises(BenchmarkError, match=r"declares 9000 x 10000 pixels"):
        load_user_dataset(root)


def test_a_truncated_image_is_a_clear_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="PNG")
    root = with_image(tmp_path / "data", "images/cut.png")
    (root / "images" / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BenchmarkError, match=r"line 2: image 'images/cut.png' is not a readable"):
        load_user_dataset(root)


def test_a_parquet_image_declaring_a_huge_size_is_refused_at_load(tmp_path: Path) -> None:
    root = write_mllmu(tmp_path / "mllmu")
    big = row("1", RED)
    big["image"] = {"bytes": png_declaring(12_000, 12_000), "path": "1.png"}
    write_config(root, "forget_10", [big])
    with pytest.raises(
        BenchmarkError, match=r"MLLMU-Bench image 'forget_10/0/0' declares 12000 x 12000"
    ):
        load_mllmu(root)


def test_the_image_cache_holds_a_bounded_number_of_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    bench = load_user_dataset(with_image(tmp_path / "data", "images/a.png"))
    monkeypatch.setattr(schema, "CACHE_PIXELS", 100)  # one 8 x 8 image fits, not two
    opened.clear()
    bench.load_image("images/a.png")
    bench.load_image("images/a.png")
    assert len(opened) == 1  # cached
    other = load_user_dataset(tmp_path / "data")
    monkeypatch.setattr(schema, "CACHE_PIXELS", 10)
    opened.clear()
    other.load_image("images/a.png")
    other.load_image("images/a.png")
    assert len(opened) == 2  # too large to keep: opened again


# --- empty and repeated questions -------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([qa(question="")], r"qa.jsonl line 1: the question is empty"),
        ([qa(question=" \t\n ")], r"qa.jsonl line 1: the question is empty"),
        ([qa(answer="")], r"qa.jsonl line 1: the answer is empty"),
        # variants: an answer with no words, a fact that is empty
        ([qa(attribute="colour", answer=".")], r"line 1: its short ground truth is empty"),
        ([qa(attribute="sport", answer="x", value=" ")], r"line 1: its short ground truth"),
    ],
)
def test_an_empty_question_or_answer_is_refused(tmp_path: Path, rows, message) -> None:
    root = write(tmp_path / "data", [*rows, qa("p2", "retain", answer="Rowing.")])
    with pytest.raises(BenchmarkError, match=message):
        load_user_dataset(root)


def test_an_empty_fact_is_refused(tmp_path: Path) -> None:
    people = [{**PEOPLE[0], "facts": {"hobby": ""}}, PEOPLE[1]]
    root = write(tmp_path / "data", [qa(), qa("p2", "retain")], people)
    with pytest.raises(BenchmarkError, match=r"line 1: its short ground truth is empty"):
        load_user_dataset(root)


@pytest.mark.parametrize(
    "copies",
    [
        [qa(), qa(), qa()],
        # variants: other case and spacing; the same image spelled another way
        [qa(), qa(question="what is  this person's HOBBY?")],
        [qa(), qa(image="images/./a.png")],
        [qa(options=["chess", "golf"], correct="A"), qa(options=["chess", "golf"], correct=0)],
    ],
)
def test_the_same_question_asked_again_is_refused(tmp_path: Path, copies: list[dict]) -> None:
    root = write(tmp_path / "data", [qa("p2", "retain"), *copies])
    lines = ", ".join(str(n) for n in range(2, 2 + len(copies)))
    with pytest.raises(BenchmarkError, match=rf"qa.jsonl lines {lines} ask the same"):
        load_user_dataset(root)


def test_one_wording_about_other_images_people_or_tasks_is_not_a_repeat(tmp_path: Path) -> None:
    root = write(
        tmp_path / "data",
        [
            qa(),
            qa(image="images/b.png"),
            qa(image=None),
            qa(options=["chess", "golf"], correct="A"),
            qa(options=["golf", "chess"], correct="B"),
            qa("p2", "retain"),
        ],
    )
    Image.new("RGB", (8, 8), BLUE).save(root / "images" / "b.png")
    assert len(load_user_dataset(root).items) == 6


def test_shipped_benchmark_and_fixtures_have_no_empty_or_repeated_question(tmp_path: Path) -> None:
    from tests.clear_fixture import write_clear

    for forget_ratio, seed in ((0.05, 0), (0.1, 1)):  # validate() runs in every loader
        load_benchmark(forget_ratio=forget_ratio, seed=seed)
    load_mllmu(write_mllmu(tmp_path / "mllmu"))
    load_benchmark(f"clear:{write_clear(tmp_path / 'clear')}")


def test_a_parquet_benchmark_repeating_a_question_is_refused(tmp_path: Path) -> None:
    root = write_mllmu(tmp_path / "mllmu")
    twice = row("1", RED)
    twice["Generation_Task"] = twice["Generation_Task"] * 2
    write_config(root, "forget_10", [twice])
    with pytest.raises(BenchmarkError, match=r"items 4, 6 ask the same qa question 2 times"):
        load_mllmu(root)
    blank = row("1", RED)
    blank["Generation_Task"][0]["Ground_Truth"] = "   "
    write_config(root, "forget_10", [blank])
    with pytest.raises(BenchmarkError, match=r"item 4: the answer is empty"):
        load_mllmu(root)


# --- prompts the model cannot take ------------------------------------------------------------
LONG = "Where was this person born? " * 7_000  # 56 k tokens


def test_a_56k_token_question_is_refused_before_the_forward_pass(lm) -> None:
    with pytest.raises(
        PromptTooLongError,
        match=r"the question 'Where was this person born\? .*' makes a prompt of 56012 "
        r"tokens; .* at most 512 \(the smaller of its max_position_embeddings and asru_lab's cap",
    ):
        generate(lm, None, LONG)


def test_a_question_short_in_characters_but_long_in_tokens_is_refused(lm) -> None:
    emoji = "\U0001f600" * 200  # 200 characters, 800 bytes: several tokens each
    with pytest.raises(PromptTooLongError, match=r"makes a prompt of 8\d\d tokens"):
        generate(lm, None, emoji)


def test_a_long_answer_in_training_data_is_refused_naming_the_item(lm, bench) -> None:
    item = bench.split("forget", "qa")[0]
    with pytest.raises(PromptTooLongError, match=rf"the forget item about '{item.person_id}'"):
        encode_items(lm, bench, [item], ["Lisbon. " * 600])


def test_a_long_training_example_is_refused(lm, bench) -> None:
    from asru_lab.training import Example

    example = Example(None, "Where was Ada Lind born?", "In Lisbon. " * 300)
    with pytest.raises(PromptTooLongError, match=r"the question 'Where was Ada Lind born\?'"):
        encode_items(lm, bench, [example], [example.answer])


def test_the_cap_applies_below_the_model_s_own_limit(lm, monkeypatch) -> None:
    import asru_lab.generation as generation

    monkeypatch.setattr(generation, "PROMPT_TOKEN_LIMIT", 40)
    with pytest.raises(PromptTooLongError, match=r"given at most 40 .*cap of 40"):
        generate_chats(lm, [[Turn("Where was this person born? " * 10)]], [[]])
    assert generate(lm, None, "Hi?", max_new_tokens=1) is not None


def test_evaluate_on_a_dataset_with_a_huge_question_exits_with_one_line(
    tmp_path: Path, capsys
) -> None:
    root = write(tmp_path / "data", [qa(question=LONG), qa("p2", "retain")])
    code = main(["evaluate", "--data", str(root), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "tokens" in err and "at most 512" in err
