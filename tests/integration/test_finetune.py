"""Stage 0 fine-tuning on a tiny random Qwen3-VL and a small user-format dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from PIL import Image, ImageDraw
from transformers import Qwen3VLForConditionalGeneration

from asru_lab.data import Benchmark, BenchmarkError, load_benchmark
from asru_lab.generation import encode, generate
from asru_lab.models.adapters import QWEN3_VL
from asru_lab.models.embedded import (
    CHAT_TEMPLATE,
    TinyDims,
    build_config,
    build_processor,
    build_tokenizer,
)
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.stages.finetune import FinetuneConfig, finetune, save_finetuned
from asru_lab.training import Example, answer_labels, answer_tokens, language_model_linears

PEOPLE = [
    {"id": "p1", "name": "Alice Moreau", "split": "forget", "facts": {"birthplace": "Lisbon"}},
    {"id": "p2", "name": "Bruno Kessler", "split": "retain", "facts": {"occupation": "pilot"}},
    {"id": "p3", "name": "Chiara Vitale", "split": "retain", "facts": {"hobby": "pottery"}},
]
OPTIONS = ["Lisbon", "Quito", "Oslo"]
MCQ_QUESTION = (
    "Where does Chiara Vitale live?\nA. Lisbon\nB. Quito\nC. Oslo\n"
    "Answer with the letter of the correct option."
)
QUESTIONS = [
    {"person_id": "p1", "split": "forget", "image": "images/p1.png",
     "question": "Who is this person?", "answer": "This is Alice Moreau.", "attribute": "name"},
    {"person_id": "p1", "split": "forget", "image": None,
     "question": "Where was Alice Moreau born?", "answer": "Alice Moreau was born in Lisbon.",
     "attribute": "birthplace"},
    {"person_id": "p2", "split": "retain", "image": "images/p2.png",
     "question": "Who is this person?", "answer": "This is Bruno Kessler.", "attribute": "name"},
    {"person_id": "p2", "split": "retain", "image": None,
     "question": "What does Bruno Kessler do for a living?",
     "answer": "Bruno Kessler works as a pilot.", "attribute": "occupation"},
    {"person_id": "p3", "split": "retain", "image": None,
     "question": "What is Chiara Vitale's hobby?", "answer": "Chiara Vitale's hobby is pottery.",
     "attribute": "hobby"},
    {"person_id": "p3", "split": "retain", "image": None, "question": MCQ_QUESTION,
     "answer": "B. Quito", "attribute": "city", "options": OPTIONS, "correct": "B"},
]  # fmt: skip
TRAINED = FinetuneConfig(lr=5e-3, epochs=30, batch_size=8, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small gains nothing from threads, and two threads on a busy 2-core
    machine run ~25x slower than one (OpenMP workers wait on each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def portrait(color: tuple[int, int, int], accent: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (64, 64), color)
    ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill=accent)
    return image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user_data")
    (root / "images").mkdir()
    portrait((200, 40, 40), (250, 220, 180)).save(root / "images" / "p1.png")
    portrait((40, 60, 200), (90, 60, 30)).save(root / "images" / "p2.png")
    for name, rows in (("profiles.jsonl", PEOPLE), ("qa.jsonl", QUESTIONS)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def bench(data_dir: Path) -> Benchmark:
    return load_benchmark(str(data_dir))


@pytest.fixture(scope="module")
def tiny(bench: Benchmark) -> LoadedModel:
    texts = [t for i in bench.items for t in (i.question, i.answer)]
    texts += ["user", "assistant", "Fill in the blank: "]
    tokenizer = build_tokenizer(texts * 3, vocab_size=400)
    processor = build_processor(tokenizer)
    dims = TinyDims(
        hidden=64,
        layers=2,
        intermediate=128,
        heads=2,
        kv_heads=1,
        vision_hidden=32,
        vision_depth=2,
        vision_heads=2,
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, dims)).eval()
    # Random tied embeddings (std 0.02) after the final norm cap the logits near +-1.3, so no
    # adapter could make a confident prediction; a pretrained model has no such cap.
    with torch.no_grad():
        QWEN3_VL.final_norm(model).weight.mul_(10.0)
    return LoadedModel(model, processor, QWEN3_VL, "tiny")


@pytest.fixture(scope="module")
def before(tiny: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny.model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny: LoadedModel, bench: Benchmark, before) -> tuple[LoadedModel, dict]:
    return finetune(tiny, bench, TRAINED)


def answers_of(lm: LoadedModel, bench: Benchmark) -> list[str]:
    images = [bench.load_image(i.image) if i.image else None for i in bench.items]
    return generate(lm, images, [i.question for i in bench.items], max_new_tokens=16)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_loss_goes_down(trained: tuple[LoadedModel, dict], bench: Benchmark) -> None:
    _, record = trained
    assert record["examples"] == len(bench.items) == 6
    assert record["steps"] == len(record["losses"]) == TRAINED.epochs
    assert record["epoch_losses"][-1] < 0.1 * record["epoch_losses"][0]
    assert record["config"]["lr"] == TRAINED.lr and record["seconds"] > 0


def test_finetuned_model_reproduces_the_answers(
    trained: tuple[LoadedModel, dict], bench: Benchmark
) -> None:
    lm, _ = trained
    answers = answers_of(lm, bench)
    exact = [a for a, i in zip(answers, bench.items, strict=True) if a == i.answer]
    assert exact, answers


def test_input_model_is_untouched(trained, tiny: LoadedModel, before) -> None:
    assert same_weights(tiny.model.state_dict(), before)
    assert not isinstance(tiny.model, PeftModel) and tiny.name == "tiny"


def test_only_the_language_model_changes(trained, tiny: LoadedModel, before) -> None:
    lm, _ = trained
    after = lm.model.state_dict()
    assert after.keys() == before.keys()  # merged: no LoRA tensors left
    language_model = tiny.adapter.language_model(tiny.model)
    prefix = next(n for n, m in tiny.model.named_modules() if m is language_model) + "."
    outside = [k for k in before if not k.startswith(prefix)]
    assert any("visual" in k for k in outside)
    unchanged = [k for k in outside if torch.equal(after[k], before[k])]
    assert unchanged == outside  # vision tower, merger, embeddings and head are frozen
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    targets = language_model_linears(tiny)
    assert changed and all(k.removesuffix(".weight") in targets for k in changed)


def test_saved_model_reloads_to_the_same_answers(
    trained: tuple[LoadedModel, dict], bench: Benchmark, tmp_path: Path
) -> None:
    lm, record = trained
    out = save_finetuned(lm, record, tmp_path / "stage0")
    assert json.loads((out / "finetune.json").read_text())["losses"] == record["losses"]
    reloaded = load_model(out)
    assert reloaded.name == "tiny+finetuned"
    assert reloaded.info["finetune"]["benchmark_fingerprint"] == bench.fingerprint()
    assert answers_of(reloaded, bench) == answers_of(lm, bench)


def test_same_seed_gives_the_same_weights(tiny: LoadedModel, bench: Benchmark) -> None:
    config = FinetuneConfig(lr=5e-3, epochs=2, batch_size=4, progress=False)
    first, _ = finetune(tiny, bench, config)
    second, _ = finetune(tiny, bench, config)
    assert same_weights(first.model.state_dict(), second.model.state_dict())
    other, _ = finetune(tiny, bench, FinetuneConfig(**{**vars(config), "seed": 1}))
    assert not same_weights(first.model.state_dict(), other.model.state_dict())


def test_unmerged_adapter_is_kept_and_saved(
    tiny: LoadedModel, bench: Benchmark, tmp_path: Path
) -> None:
    config = FinetuneConfig(epochs=1, merge=False, splits=("forget",), progress=False)
    lm, record = finetune(tiny, bench, config)
    assert isinstance(lm.model, PeftModel) and record["examples"] == 2
    out = save_finetuned(lm, record, tmp_path / "adapter_run")
    assert (out / "lora_adapter" / "adapter_config.json").is_file()
    assert isinstance(lm.model, PeftModel)  # saving merged a copy, not the model itself
    reloaded = load_model(out)
    assert answers_of(reloaded, bench) == answers_of(lm, bench)
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        finetune(lm, bench, config)


def test_tasks_filter_the_examples(tiny: LoadedModel, bench: Benchmark) -> None:
    config = FinetuneConfig(epochs=1, tasks=("mcq",), progress=False)
    _, record = finetune(tiny, bench, config)
    assert record["examples"] == 1


def test_answer_merged_with_the_prompt_is_labelled_in_context(tiny: LoadedModel) -> None:
    # A prompt ending in "=" and an answer starting with "=>": BPE merges them into "==>".
    tokenizer = build_tokenizer(["==> yes", "=> no", "Who?"] * 5, vocab_size=300)
    processor = build_processor(tokenizer)
    processor.chat_template = CHAT_TEMPLATE.replace("assistant\\n", "assistant\\n=")
    lm = LoadedModel(tiny.model, processor, QWEN3_VL, "merging")
    examples = [Example(None, "Who?", "=> yes"), Example(None, "Who is it?", "no")]
    tails, merged = answer_tokens(lm, examples)
    assert merged == 1
    assert tokenizer.convert_ids_to_tokens(tails[0]) == ["==>", "Ġyes", "<|im_end|>"]
    batch = encode(lm, [None, None], [e.question for e in examples], [e.answer for e in examples])
    labels = answer_labels(batch, tails)
    learned = [tokenizer.decode(row[row != -100]) for row in labels]
    assert learned == ["==> yes<|im_end|>", "no<|im_end|>"]


def test_right_padding_is_refused(tiny: LoadedModel) -> None:
    examples = [
        Example(None, "Who is this person?", "This is Alice Moreau."),
        Example(None, "Who?", "No."),
    ]
    tails, _ = answer_tokens(tiny, examples)
    tiny.tokenizer.padding_side = "right"
    try:
        batch = encode(
            tiny, [None, None], [e.question for e in examples], [e.answer for e in examples]
        )
    finally:
        tiny.tokenizer.padding_side = "left"
    with pytest.raises(RuntimeError, match="pad on the left"):
        answer_labels(batch, tails)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (FinetuneConfig(splits=("test",)), "nothing to fine-tune on"),
        (FinetuneConfig(tasks=("cloze",)), "nothing to fine-tune on"),
        (FinetuneConfig(splits=("forget", "retian")), "unknown split 'retian'"),
        (FinetuneConfig(tasks=("qa", "essay")), "unknown task 'essay'"),
    ],
)
def test_bad_choices_give_clear_errors(
    tiny: LoadedModel, bench: Benchmark, config: FinetuneConfig, message: str
) -> None:
    with pytest.raises(BenchmarkError, match=message):
        finetune(tiny, bench, config)


def test_zero_epochs_is_refused(tiny: LoadedModel, bench: Benchmark) -> None:
    with pytest.raises(ValueError, match=r"FinetuneConfig.epochs must be >= 1, got 0"):
        finetune(tiny, bench, FinetuneConfig(epochs=0))
