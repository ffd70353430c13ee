"""Random-weight Qwen3-VL at real sizes: the published dimensions, parameter counts computed
without building, seeded weights, `make-model` round trips, the real processor's image tokens,
and clear errors for sizes that cannot exist."""

from __future__ import annotations

import pytest
import torch

import asru_lab as al
from asru_lab.cli import main
from asru_lab.generation import encode
from asru_lab.models.sizes import (
    QWEN_VOCAB,
    SIZES,
    SizeError,
    build_processor,
    build_random_model,
    get_size,
    image_tokens,
)


@pytest.fixture(scope="module")
def small() -> al.LoadedModel:
    """The 2B architecture (28 layers, 24 vision blocks, DeepStack 5/11/17, real vocabulary,
    patch and merge) with every width divided by 16."""
    return build_random_model("qwen3-vl-2b/16")


def test_published_sizes_have_the_published_parameter_counts():
    totals = {name: SIZES[name].parameters()["total"] / 1e9 for name in SIZES}
    assert totals["qwen3-vl-4b"] == pytest.approx(4.44, abs=0.01)  # Qwen3-VL-4B: 4.44 B
    assert totals["qwen3-vl-8b"] == pytest.approx(8.77, abs=0.01)  # Qwen3-VL-8B: 8.77 B
    assert totals["qwen3-vl-2b"] == pytest.approx(2.13, abs=0.01)
    assert SIZES["qwen3-vl-8b"].parameters()["lm_head"] > 0  # 8B does not tie its head
    assert all(s.vocab == QWEN_VOCAB and s.patch == 16 and s.merge == 2 for s in SIZES.values())


@pytest.mark.parametrize("name", ["tiny", "qwen3-vl-2b/16", "qwen3-vl-8b/32"])
def test_computed_parameter_count_is_the_built_models(name):
    lm = build_random_model(name, pixels=64 * 64)
    built = sum(p.numel() for p in lm.model.parameters())
    assert built == get_size(name).parameters()["total"]


def test_shrunk_model_keeps_the_architecture(small):
    cfg = small.model.config
    assert cfg.text_config.num_hidden_layers == 28
    assert cfg.text_config.vocab_size == QWEN_VOCAB
    assert cfg.vision_config.depth == 24
    assert list(cfg.vision_config.deepstack_visual_indexes) == [5, 11, 17]
    assert small.adapter.deepstack_layers(small.model) == range(3)
    assert small.num_layers == 28 and small.hidden_size == 128


def test_same_seed_same_weights_and_a_finite_forward(small, bench):
    again = build_random_model("qwen3-vl-2b/16")
    for (name, a), (_, b) in zip(
        small.model.named_parameters(), again.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    other = build_random_model("qwen3-vl-2b/16", seed=1)
    assert not torch.equal(other.model.lm_head.weight, small.model.lm_head.weight)
    item = bench.questions("forget", "qa", image_only=True)[0]
    inputs = encode(small, [bench.load_image(item.image)], [item.question])
    with torch.no_grad():
        logits = small.model(**inputs).logits
    assert logits.shape[-1] == QWEN_VOCAB and torch.isfinite(logits).all()


def test_real_processor_image_tokens_match_the_grid_and_the_delimiters(small, bench):
    """A portrait through the 2B processor: t*h*w / merge^2 image tokens, framed by
    <|vision_start|> ... <|vision_end|>, found by the adapter's image-token id (causal tracing's
    image group and the audit's perturbations rely on it)."""
    spec = SIZES["qwen3-vl-2b"]
    processor = build_processor(spec)
    assert processor.image_processor.patch_size == 16 and processor.image_processor.merge_size == 2
    assert small.processor.image_processor.to_dict() == processor.image_processor.to_dict()
    item = bench.questions("forget", "qa", image_only=True)[0]
    portrait = bench.load_image(item.image)
    inputs = encode(small, [portrait], [item.question])
    t, h, w = inputs["image_grid_thw"][0].tolist()
    expected = t * h * w // spec.merge**2
    assert expected == 196 == image_tokens(448 * 448, spec)
    ids = inputs["input_ids"][0]
    image_id = small.adapter.image_token_id(small.model)
    where = (ids == image_id).nonzero().flatten()
    assert len(where) == expected
    assert torch.equal(where, torch.arange(where[0], where[0] + expected))  # one run
    tok = small.tokenizer
    assert ids[where[0] - 1] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert ids[where[-1] + 1] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert inputs["pixel_values"].shape[0] == t * h * w  # one row per 16x16 patch (x2 frames)

    from asru_lab.causal.cases import _encode_case

    _, groups = _encode_case(small, portrait, item.question, "")
    assert int(groups["image"].sum()) == expected


def test_pixel_budget_sets_the_image_tokens(bench):
    spec = SIZES["qwen3-vl-2b"]
    item = bench.questions("forget", "qa", image_only=True)[0]
    for pixels, tokens in ((224 * 224, 49), (32 * 32, 1)):
        processor = build_processor(spec, pixels)
        out = processor.image_processor(images=[bench.load_image(item.image)], return_tensors="pt")
        t, h, w = out["image_grid_thw"][0].tolist()
        assert t * h * w // 4 == tokens == image_tokens(pixels, spec)


def test_make_model_writes_a_directory_that_loads_back(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["make-model", "--size", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert "196 image tokens" in capsys.readouterr().out
    lm = al.load_model(out)
    assert lm.name == "asru-lab/random-tiny"
    assert lm.model.config.text_config.vocab_size == QWEN_VOCAB
    assert lm.info["random_weights"] and lm.info["seed"] == 3
    built = build_random_model("tiny", seed=3, dtype=torch.bfloat16)
    assert torch.equal(lm.model.lm_head.weight.bfloat16(), built.model.lm_head.weight)
    assert lm.processor.image_processor.size == built.processor.image_processor.size


def test_an_unknown_size_is_named(tmp_path, capsys):
    with pytest.raises(SizeError, match="unknown model size 'qwen3-vl-9b'.*qwen3-vl-2b"):
        get_size("qwen3-vl-9b")
    assert main(["make-model", "--size", "qwen3-vl-9b", "--out", str(tmp_path / "m")]) == 2
    assert "unknown model size" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_pixel_budget_below_one_merged_patch_is_refused(tmp_path, capsys):
    with pytest.raises(SizeError, match="below one merged patch.*32 x 32 = 1024"):
        build_random_model("tiny", pixels=1000)
    args = ["make-model", "--size", "tiny", "--pixels", "512", "--out", str(tmp_path / "m")]
    assert main(args) == 2
    assert "below one merged patch" in capsys.readouterr().err


def test_a_width_that_does_not_divide_by_its_heads_is_refused(tmp_path, capsys):
    with pytest.raises(SizeError, match="hidden width 2050 does not divide by its 16"):
        get_size("qwen3-vl-2b", hidden=2050, head_dim=None)
    with pytest.raises(SizeError, match="vision width 1000 does not divide by its 16 heads"):
        get_size("qwen3-vl-2b", vision_hidden=1000)
    with pytest.raises(SizeError, match="32 attention heads do not divide into 7"):
        get_size("qwen3-vl-4b", kv_heads=7)
    with pytest.raises(SizeError, match="unknown size field"):
        get_size("tiny", width=3)
    args = ["make-model", "--size", "tiny", "--set", "hidden=130", "--set", "head_dim=none"]
    assert main([*args, "--out", str(tmp_path / "m")]) == 2
    assert "hidden width 130 does not divide by its 4" in capsys.readouterr().err


def test_padded_vocabulary_rows_are_never_ranked_as_tokens(small):
    """151 936 LM-head rows, ~1.4 k tokens: the logit lens and the audit's ranks skip the rest,
    even when a padded row has the highest logit."""
    from asru_lab.auditing.measure import lens_ranks
    from asru_lab.directions import logit_lens

    rows = small.token_rows
    assert rows == len(small.tokenizer) < QWEN_VOCAB
    head = small.adapter.lm_head(small.model).weight
    direction = head[QWEN_VOCAB - 1].detach().clone() * 50  # points at a padded row
    top = logit_lens(small, direction, k=10)
    assert len(top) == 10 and all(isinstance(t, str) for t, _ in top)
    states = direction.view(1, 1, -1).expand(1, small.num_layers, -1)
    ranks = lens_ranks(small, states, [5])
    assert ranks.max() < rows


def test_causal_tracing_boots_on_a_model_built_in_memory_without_hub_or_installs(
    small, bench, monkeypatch
):
    """A model with no local source: TransformerLens gets its config written out, never a hub
    lookup of its name, and its processor loading (which pip-installs torchvision when it
    fails) is off."""
    import subprocess

    from asru_lab.causal import CausalTraceConfig, trace_causal

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "check_call", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert small.source is None
    config = CausalTraceConfig(
        max_people=1, layers=(0,), components=("residual",), groups=("last",), min_drop=0.0,
        backend="transformer_lens", progress=False,
    )  # fmt: skip
    trace = trace_causal(small, bench, config)
    assert len(trace.people) == 1
