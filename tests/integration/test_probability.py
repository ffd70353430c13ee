"""Probability metrics (open-unlearning's definitions): the synthetic benchmark's perturbed and
paraphrased answers, answer probability, truth ratio, forget quality against the retrain oracle,
the CLI, and the errors for what they cannot be computed from."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.schema import contains_value
from asru_lab.evaluation.probability import (
    ProbabilityError,
    aggregate_truth_ratio,
    answer_logprobs,
    forget_quality,
    item_probabilities,
)
from asru_lab.evaluation.records import aggregate_items
from tests.tiny_models import make_tiny_qwen2_5_vl

FORGET16 = al.EvalConfig(splits=("forget",), max_items=16, progress=False)


@pytest.fixture(scope="module")
def oracle() -> al.LoadedModel:
    return al.load_oracle()


def test_synthetic_items_carry_a_paraphrase_and_five_wrong_answers(bench):
    items = bench.questions("forget", "qa") + bench.questions("retain", "qa")
    assert items and all(i.has_truth_ratio for i in items)
    for item in items[:50]:
        assert item.paraphrased_answer != item.answer
        assert contains_value(item.paraphrased_answer, item.value)
        assert len(set(item.perturbed_answers)) == 5
        assert not any(contains_value(a, item.value) for a in item.perturbed_answers)
    # refusals (unseen people) have no right answer to perturb
    assert not any(i.has_truth_ratio for i in bench.questions("unseen", "qa"))


def test_answer_probability_and_truth_ratio_follow_their_definitions(lm, bench):
    item = bench.questions("retain", "qa")[0]
    (row,) = item_probabilities(lm, bench, [item])
    logps = answer_logprobs(
        lm, bench, [item] * 7, [item.answer, item.paraphrased_answer, *item.perturbed_answers],
        batch_size=7,
    )  # fmt: skip
    per_token = [math.exp(float(lp.mean())) for lp in logps]
    assert row["answer_prob"] == pytest.approx(per_token[0], rel=1e-4)
    assert row["paraphrased_prob"] == pytest.approx(per_token[1], rel=1e-4)
    # the wrong answers' NLLs are averaged before exp (open-unlearning), not their probabilities
    wrong = math.exp(sum(float(lp.mean()) for lp in logps[2:]) / 5)
    assert row["perturbed_prob"] == pytest.approx(wrong, rel=1e-4)
    assert row["truth_ratio"] == pytest.approx(wrong / per_token[1], rel=1e-4)
    # a known retain fact: the right answer is more likely than the wrong ones
    assert row["answer_prob"] > 0.9 and row["truth_ratio"] < 1
    same = replace(item, perturbed_answers=(item.paraphrased_answer,))
    assert item_probabilities(lm, bench, [same])[0]["truth_ratio"] == pytest.approx(1.0, rel=1e-4)


def test_truth_ratio_aggregates_and_forget_quality_as_open_unlearning():
    ratios = [0.5, 2.0, 1.0]
    assert aggregate_truth_ratio("forget", ratios) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert aggregate_truth_ratio("retain", ratios) == pytest.approx((0.5 + 0 + 0) / 3)
    assert forget_quality(ratios, ratios) == 1.0
    assert forget_quality([0.1 * k for k in range(1, 11)], [5 + k for k in range(10)]) < 1e-4


def test_vanilla_forget_quality_is_tiny_and_the_oracles_own_is_one(lm, bench, oracle, tmp_path):
    items_file = tmp_path / "items.jsonl"
    vanilla = al.evaluate(lm, bench, FORGET16, reference=oracle, items_path=items_file)
    itself = al.evaluate(oracle, bench, FORGET16, reference=oracle)
    assert itself.splits["forget"]["forget_quality"] == 1.0
    assert vanilla.splits["forget"]["forget_quality"] < 0.01
    # the vanilla model still knows its forget people; the oracle never met them
    assert (
        vanilla.splits["forget"]["answer_prob"] > 0.9 > 0.1 > itself.splits["forget"]["answer_prob"]
    )
    assert vanilla.meta["forget_quality"]["reference"] == oracle.name
    assert len(vanilla.meta["probability"]["truth_ratios"]["forget"]) == 16
    # the items file keeps each item's probabilities: the split recomputes from it alone
    again = aggregate_items(items_file)["forget"]
    for key in ("answer_prob", "truth_ratio"):
        assert again[key] == pytest.approx(vanilla.splits["forget"][key])
    off = al.evaluate(lm, bench, replace(FORGET16, probabilities=False))
    assert "answer_prob" not in off.splits["forget"] and "probability" not in off.meta


def test_evaluate_reference_oracle_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["evaluate", "--out", str(out), "--splits", "forget", "--max-items", "4",
            "--reference", "oracle"]  # fmt: skip
    assert main(args) == 0
    forget = json.loads(out.read_text())["splits"]["forget"]
    assert {"answer_prob", "truth_ratio", "forget_quality"} <= set(forget)


# --- bad input ---------------------------------------------------------------------------------


def test_a_reference_of_another_architecture_is_refused(lm, bench, tmp_path):
    other = al.load_model(make_tiny_qwen2_5_vl(tmp_path / "qwen25"))
    with pytest.raises(ProbabilityError, match="reference model .* does not fit") as info:
        al.evaluate(lm, bench, FORGET16, reference=other)
    assert "hidden_size" in str(info.value)


def test_forget_quality_without_perturbed_answers_names_what_it_needs(lm, bench, oracle):
    bare = bench.subset(
        [replace(i, paraphrased_answer=None, perturbed_answers=()) for i in bench.items]
    )
    with pytest.raises(ProbabilityError, match="forget quality and truth ratio need paraphrased"):
        al.evaluate(lm, bare, FORGET16, reference=oracle)
    # answer probability needs neither: without a reference the evaluation goes on
    report = al.evaluate(lm, bare, replace(FORGET16, max_items=2))
    assert "answer_prob" in report.splits["forget"] and "truth_ratio" not in report.splits["forget"]
    with pytest.raises(ProbabilityError, match="probabilities is off"):
        al.evaluate(lm, bench, replace(FORGET16, probabilities=False), reference=oracle)


def test_evaluate_a_clear_layout_end_to_end_with_probabilities(tmp_path):
    from tests.clear_fixture import write_clear

    data = write_clear(tmp_path / "clear")
    out = tmp_path / "clear.json"
    args = ["evaluate", "--data", f"clear:{data}", "--out", str(out), "--max-items", "4"]
    assert main(args) == 0
    splits = json.loads(out.read_text())["splits"]
    assert set(splits) == {"forget", "retain", "general", "real"}
    assert all(0 < s["answer_prob"] <= 1 for s in splits.values())
    # the perturbed configs give the forget captions a truth ratio
    assert 0 <= splits["forget"]["truth_ratio"] <= 1


def test_a_steered_model_gets_no_probabilities_rather_than_wrong_ones(lm, bench, oracle):
    from pathlib import Path

    from asru_lab.probe import SteeringProbe

    probe = SteeringProbe.load(Path(__file__).parents[2] / "figures" / "causal" / "probe")
    small = replace(FORGET16, max_items=2)
    with probe.apply(lm):
        with pytest.warns(UserWarning, match="left out: a steering probe is applied"):
            report = al.evaluate(lm, bench, small)
        with pytest.raises(ProbabilityError, match="no forget quality: a steering probe"):
            al.evaluate(lm, bench, small, reference=oracle)
    assert "answer_prob" not in report.splits["forget"]
    assert report.meta["config"]["probabilities"] is False
