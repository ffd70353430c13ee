"""Activation capture, directions and the locate sweep on the embedded model."""

from __future__ import annotations

import random

import pytest
import torch

from asru_lab.capture import capture
from asru_lab.directions import (
    auroc,
    fit_gate,
    layer_cosines,
    logit_lens,
    refused_items,
    threshold_at_fpr,
)
from asru_lab.evaluation.judge import ClosedWorldJudge
from asru_lab.explore import compare_answers, compare_next_token
from asru_lab.generation import encode
from asru_lab.hooks import deepstack_relation
from asru_lab.stages.locate import LocateConfig, LocateResult, locate, quick_probe

SMALL = LocateConfig(
    layers=(4, 5),
    strengths=(2.0,),
    positions=("last",),
    heatmap_positions=("last", "prompt"),
    max_examples=48,
    retain_examples=96,
    sweep_forget=12,
    sweep_retain=12,
    max_new_tokens=12,
    max_retain_drop=0.1,  # one miss in 12 retain prompts is 8 points
    progress=False,
)


@pytest.fixture(scope="module")
def items(bench):
    rng = random.Random(0)
    return rng.sample(bench.split("forget", "qa"), 20) + rng.sample(bench.split("retain", "qa"), 20)


# --- capture ---------------------------------------------------------------------------------
def test_capture_matches_hidden_states_and_streams_exact_means(lm, bench, items):
    cap = capture(lm, bench, items, keep_raw=True, batch_size=16, progress=False)
    images = [bench.load_image(i.image) if i.image else None for i in items]
    with torch.no_grad():
        out = lm.model(**encode(lm, images, [i.question for i in items]), output_hidden_states=True)
    # Above DeepStack and below the top (HF applies the final norm to the last hidden state),
    # hidden_states[L + 1] is layer L's output.
    for layer in range(3, lm.num_layers - 1):
        expected = out.hidden_states[layer + 1][:, -1].float()
        assert torch.allclose(cap.raw[layer], expected, rtol=1e-4, atol=1e-3)
    for layer in cap.layers:
        assert torch.allclose(cap.mean(layer), cap.raw[layer].double().mean(0), atol=1e-5)
    assert cap.count == cap.n_examples == len(items)
    assert cap.sum.dtype == torch.float64


def test_batching_does_not_change_the_statistics(lm, bench, items):
    one = capture(lm, bench, items[:8], layers=[2, 5], batch_size=1, progress=False)
    many = capture(lm, bench, items[:8], layers=[2, 5], batch_size=8, progress=False)
    for layer in (2, 5):
        assert torch.allclose(one.mean(layer), many.mean(layer), atol=1e-4)


def test_positions_prompt_and_answer_read_the_right_tokens(lm, bench, items):
    chunk = items[:4]
    prompt = capture(lm, bench, chunk, layers=[5], position="prompt", progress=False)
    images = [bench.load_image(i.image) if i.image else None for i in chunk]
    batch = encode(lm, images, [i.question for i in chunk])
    assert prompt.count == int(batch["attention_mask"].sum())
    answer = capture(lm, bench, chunk, layers=[5], position="answer", progress=False)
    n_answer = sum(
        len(lm.tokenizer(i.answer, add_special_tokens=False)["input_ids"]) for i in chunk
    )
    assert answer.count == n_answer
    assert not torch.allclose(prompt.mean(5), answer.mean(5))


def test_projections_equal_raw_activations_times_directions(lm, bench, items):
    d = torch.randn(2, lm.hidden_size, dtype=torch.float64)
    cap = capture(lm, bench, items, layers=[3], keep_raw=True, directions={3: d}, progress=False)
    assert cap.projections[3].shape == (len(items), 2)
    assert torch.allclose(cap.projections[3], cap.raw[3].double() @ d.T, atol=1e-3)


def test_input_site_of_a_layer_is_the_output_of_the_one_before(lm, bench, items):
    out = capture(lm, bench, items[:8], layers=[3], site="output", keep_raw=True, progress=False)
    inp = capture(lm, bench, items[:8], layers=[4], site="input", keep_raw=True, progress=False)
    assert torch.allclose(out.raw[3], inp.raw[4], atol=1e-6)
    # In the DeepStack range they differ on image tokens: visual features are added in between.
    pictures = [i for i in items if i.image][:8]
    kw = dict(position="prompt", keep_raw=True, progress=False)
    out0 = capture(lm, bench, pictures, layers=[0], site="output", **kw)
    inp1 = capture(lm, bench, pictures, layers=[1], site="input", **kw)
    assert not torch.allclose(out0.raw[0], inp1.raw[1], atol=1e-4)
    assert deepstack_relation(lm, 0, "output").startswith("before injection")
    assert deepstack_relation(lm, 1, "input").startswith("after injection")
    assert deepstack_relation(lm, 4, "output").startswith("none")


# --- directions ------------------------------------------------------------------------------
def test_auroc_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(30, generator=g).round(decimals=1) + 0.5
    neg = torch.randn(40, generator=g).round(decimals=1)  # rounding makes ties
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert auroc(pos, neg) == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert auroc(torch.ones(3), torch.zeros(3)) == 1.0
    assert auroc(torch.zeros(3), torch.ones(3)) == 0.0


def test_gate_separates_two_clouds_at_the_allowed_false_positive_rate():
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(3, 8)
    shift[:, 0] = 2.5
    pos = torch.randn(200, 3, 8, generator=g) + shift
    neg = torch.randn(600, 3, 8, generator=g)
    gate, stats = fit_gate(pos[:150], neg[:450], pos[150:], neg[450:], max_fpr=(0.01, 0.1))
    assert stats["auroc"] > 0.99
    levels = stats["thresholds"]
    assert levels["0.01"]["false_positive_rate"] <= 0.01
    assert levels["0.1"]["true_positive_rate"] >= levels["0.01"]["true_positive_rate"]
    assert gate.threshold == levels["0.01"]["threshold"]
    p_neg = torch.rand(100, generator=g)
    t = threshold_at_fpr(torch.rand(10, generator=g), p_neg, 0.05)
    assert float((p_neg >= t).double().mean()) <= 0.05


def test_layer_cosines_and_logit_lens(lm):
    dirs = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 2.0]), 2: torch.tensor([-3.0, 0])}
    cos = layer_cosines(dirs)
    assert torch.allclose(cos, torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]).double())
    top = logit_lens(lm, torch.randn(lm.hidden_size), k=5)
    assert len(top) == 5 and all(a[1] >= b[1] for a, b in zip(top, top[1:], strict=False))


def test_target_set_keeps_only_refused_questions(lm, bench):
    unseen = bench.split("unseen", "qa")[:24]
    kept, answers = refused_items(lm, bench, unseen)
    judged = ClosedWorldJudge(bench).judge(unseen, answers)
    refused = [i for i, j in zip(unseen, judged, strict=True) if "refusal" in j.category]
    assert kept == refused and 0 < len(kept) <= len(unseen)


# --- locate ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_probe(lm, bench):
    return locate(lm, bench, SMALL)


def test_locate_is_reproducible_bit_for_bit(lm, bench, small_probe):
    again = locate(lm, bench, SMALL)
    assert torch.equal(again.direction, small_probe.direction)
    assert torch.equal(again.layer_directions, small_probe.layer_directions)
    assert torch.equal(again.gate.weight, small_probe.gate.weight)
    assert again.evidence["sweep"] == small_probe.evidence["sweep"]


def test_locate_evidence_is_complete_and_consistent(lm, small_probe):
    ev = LocateResult(**small_probe.evidence)
    n = lm.num_layers
    assert set(ev.separability) == {"last", "-2", "-3", "prompt"}  # gate tokens + heatmap
    for pos in ev.separability.values():
        assert len(pos["forget_vs_retain"]) == n and len(pos["forget_vs_unseen"]) == n
    assert len(ev.cosines) == n and len(ev.logit_lens) == n
    assert {r["layer"] for r in ev.sweep} == {4, 5}
    assert {r["gated"] for r in ev.sweep} == {False, True}
    rec = ev.recommended
    assert small_probe.layer == rec["layer"] and small_probe.alpha == rec["alpha"]
    assert small_probe.gated == rec["gated"]
    assert torch.equal(small_probe.direction, small_probe.layer_directions[rec["layer"]])
    best = max(ev.sweep, key=lambda r: (r["admissible"], r["forget_refusal"]))
    assert best["forget_refusal"] == next(
        r["forget_refusal"]
        for r in ev.sweep
        if all(r[k] == rec[k] for k in ("layer", "alpha", "positions", "gated", "gate_max_fpr"))
    )
    assert "layer" in ev.table().splitlines()[0]
    assert small_probe.module == lm.adapter.layer_path(rec["layer"])
    assert small_probe.dataset_fingerprint


def test_locate_config_rejects_nonsense():
    with pytest.raises(ValueError, match="site"):
        LocateConfig(site="middle")
    with pytest.raises(ValueError, match="position"):
        LocateConfig(heatmap_positions=("first",))
    with pytest.raises(ValueError, match="steering position"):
        LocateConfig(positions=("sometimes",))
    with pytest.raises(ValueError, match="strengths"):
        LocateConfig(strengths=())


def test_quick_probe_is_the_diff_in_means_at_every_layer(lm, bench):
    probe = quick_probe(lm, bench, layer=3, n_examples=16)
    assert probe.layer == 3 and probe.gate is None
    assert probe.layer_directions.shape == (lm.num_layers, lm.hidden_size)
    assert torch.equal(probe.direction, probe.layer_directions[3])
    unseen = [i for i in bench.split("unseen", "qa") if i.image]
    forget = bench.split("forget", "qa")
    assert probe.extraction["sets"] == {"target": 16, "forget": 16}
    # v points from the forget prompts towards the never-seen faces, on fresh examples too
    on_unseen = probe.project(lm, bench, unseen[-32:])
    on_forget = probe.project(lm, bench, forget[-32:])
    assert on_unseen.mean() > on_forget.mean()
    direct = capture(lm, bench, forget[-32:], layers=[3], keep_raw=True, progress=False)
    unit = probe.direction.double() / probe.direction.double().norm()
    assert torch.allclose(on_forget, direct.raw[3].double() @ unit, atol=1e-3)


def test_next_token_comparison_shows_the_push_that_changes_the_answer(lm, bench):
    probe = quick_probe(lm, bench, layer=4, n_examples=16)
    person = bench.people_in("forget")[0]
    image = bench.load_image(f"images/{person.id}_v0.png")
    question = "Where was this person born?"
    here = compare_next_token(lm, probe, image, question, alpha=4.0, top_k=6)
    assert len(here.tokens) == len(here.unsteered) == len(here.steered) == 6
    assert (here.layer, here.alpha) == (4, 4.0)
    for probs in (here.unsteered, here.steered):
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-5
    ranks = [max(u, s) for u, s in zip(here.unsteered, here.steered, strict=True)]
    assert ranks == sorted(ranks, reverse=True)
    assert max(abs(u - s) for u, s in zip(here.unsteered, here.steered, strict=True)) > 0.1
    # greedy decoding starts with the most likely token, with and without the push
    plain, steered = compare_answers(lm, probe, image, question, alpha=4.0, max_new_tokens=4)
    for probs, answer in ((here.unsteered, plain), (here.steered, steered)):
        first = here.tokens[probs.index(max(probs))]
        assert answer.startswith(first.strip()), (first, answer)
    elsewhere = compare_next_token(lm, probe, image, question, layer=5, alpha=4.0, top_k=6)
    assert elsewhere.layer == 5 and elsewhere.steered != here.steered
    still = compare_next_token(lm, probe, image, question, alpha=0.0, top_k=6)
    assert still.steered == still.unsteered
