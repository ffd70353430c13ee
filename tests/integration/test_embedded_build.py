"""`build-embedded` is deterministic, and its fast collator matches the real processor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from asru_lab.data.synthetic import SyntheticConfig, build_world
from asru_lab.generation import encode
from asru_lab.models.embedded import TinyDims
from asru_lab.models.loading import load_model
from asru_lab.runs.build_embedded import BuildConfig, Collator, TrainingSampler, build_embedded

SMALL = BuildConfig(
    steps=4,
    batch_size=8,
    eval_every=0,
    dims=TinyDims(hidden=64, layers=2, intermediate=128, heads=2, kv_heads=1, vision_hidden=32),
    benchmark=SyntheticConfig(n_known=8, n_strangers=6, n_unseen=3),
)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    a = tmp_path_factory.mktemp("build_a")
    b = tmp_path_factory.mktemp("build_b")
    return build_embedded(a, SMALL, progress=False), a, build_embedded(b, SMALL, progress=False), b


def test_same_seed_gives_the_same_weights(two_builds):
    _, a, _, b = two_builds
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_a_different_seed_gives_different_weights(tmp_path, two_builds):
    _, a, _, _ = two_builds
    other = BuildConfig(**{**SMALL.__dict__, "seed": 1})
    build_embedded(tmp_path / "c", other, progress=False)
    wa, wc = load_file(a / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_build_output_loads_and_records_its_config(two_builds):
    _, a, _, _ = two_builds
    lm = load_model(a)
    assert lm.adapter.family == "qwen3_vl" and lm.num_layers == 2
    assert lm.info["build"]["config"]["steps"] == 4
    assert (a / "build.json").is_file()


def test_collator_matches_the_processor(two_builds):
    lm, _, _, _ = two_builds
    world = build_world(SMALL.benchmark)
    sampler = TrainingSampler(world, SMALL.task_weights, seed=3)
    path = sampler.image_paths()[0]
    pixels = lm.processor.image_processor([world.render(path)], return_tensors="pt")
    collate = Collator(lm.processor, {path: pixels["pixel_values"]}, tokens_per_image=16)
    examples = [(path, "Who is this person?", "This is X."), (None, "Where was Y born?", "Z.")]
    batch = collate(examples)
    ref = encode(lm, [world.render(path), None], [q for _, q, _ in examples])
    for row, (_, _, answer) in enumerate(examples):
        n_answer = len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
        ours = batch["input_ids"][row][batch["attention_mask"][row].bool()][:-n_answer]
        theirs = ref["input_ids"][row][ref["attention_mask"][row].bool()]
        assert ours.tolist() == theirs.tolist()
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert len(labelled) == n_answer
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], ref["image_grid_thw"])
