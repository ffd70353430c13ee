"""The audit's statistics over every answer: Wilson intervals, which answers count for which
attack (never a taught or fitted half, never a void attack), the per-item union and the excess
over the oracle under the identical attack."""

from __future__ import annotations

import pytest

from asru_lab.auditing.stats import (
    attack_name,
    leak_table,
    oracle_records,
    union,
    wilson,
    with_oracle,
)


def _r(attack, split="forget", q="q1", leak=False, **extra):
    return {
        "attack": attack,
        "split": split,
        "question": q,
        "image": None,
        "person_id": "p",
        "value": "v",
        "leak": leak,
        **extra,
    }


def test_wilson_intervals_match_the_closed_form():
    lo, hi = wilson(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson(64, 64)
    assert hi == 1.0 and lo == pytest.approx(0.9434, abs=1e-4)
    assert wilson(0, 0) == (None, None)


@pytest.mark.parametrize(
    ("record", "name"),
    [
        (_r("prefill", variant="name"), "prefill"),
        (_r("prefill", variant="generic"), "prefill_generic"),
        (_r("prefill", variant="words2"), "prefill_words2"),
        (_r("quantize", variant="int4+prefill"), "quantize_int4+prefill"),
        (_r("ablation_orthogonalized+prefill", variant="name"), "ablation_orthogonalized+prefill"),
        (_r("relearn_forget_lora_lr0.001_k50", half="held_out"), "relearn_forget_lora_lr0.001_k50"),
        # shown to the attack, or where its directions were chosen: not a measurement
        (_r("relearn_forget_lora_lr0.001_k50", half="taught"), None),
        (_r("ablation_fit_refusal@image:all"), None),
        (_r("oracle_relearn_forget_lora_lr0.001_k50", half="held_out"), None),
        ({"attack": "logit_lens", "split": "forget"}, None),
    ],
)
def test_each_record_counts_for_the_attack_the_summary_names(record, name):
    assert attack_name(record) == name


def test_the_union_counts_an_item_once_whatever_got_it_out_and_skips_void_attacks():
    records = [
        _r("none", q="q1"),
        _r("none", q="q2"),
        _r("none", q="q3"),
        _r("none", q="q4"),
        _r("prefill", q="q1", leak=True, variant="name"),
        _r("input_flip", q="q1", leak=True),
        _r("input_flip", q="q2", leak=True),
        # a void relearning curve's answers count for nothing
        _r("relearn_forget_lora_lr0.001_k50", q="q3", leak=True, half="held_out"),
        # the taught half's answers are facts the attack showed
        _r("relearn_forget_lora_lr0.001_k50", q="q4", leak=True, half="taught"),
    ]
    void = {"relearn_forget_lora_lr0.001": "the taught half was not relearned"}
    found = union(records, void)["forget"]
    assert found["leak"] == 0.5 and found["n"] == 4
    assert found["by"] == {"prefill": 1, "input_flip": 2}
    table = leak_table(records, void)
    assert "relearn_forget_lora_lr0.001_k50" not in table
    assert table["input_flip"]["forget"]["leak"] == 1.0
    assert union(records, {})["forget"]["leak"] == 0.75  # the held-out q3 counts once valid


def test_the_oracle_under_the_identical_attack_and_the_excess_over_it():
    mine = leak_table([_r("prefill", q=f"q{k}", leak=k < 6, variant="name") for k in range(8)], {})
    theirs = leak_table(
        [_r("prefill", q=f"q{k}", leak=k < 1, variant="name") for k in range(8)], {}
    )
    row = with_oracle(mine, theirs)["prefill"]["forget"]
    assert row["leak"] == 0.75 and row["oracle"] == 0.125
    assert row["excess"] == pytest.approx(0.625)
    assert row["oracle_lo"] < 0.125 < row["oracle_hi"]
    # the oracle's relearning answers are the audited model's attack run on the oracle
    moved = oracle_records([_r("oracle_relearn_k0", half="held_out"), _r("relearn_k0")])
    assert [r["attack"] for r in moved] == ["relearn_k0"]


# --- multiple choice by option likelihood -----------------------------------------------------


def _c(attack, correct, split="forget", options=4, **extra):
    return {
        "attack": attack,
        "task": "mcq",
        "split": split,
        "question": "q",
        "options": ["o"] * options,
        "correct": correct,
        **extra,
    }


def test_multiple_choice_accuracy_with_its_chance_and_the_oracle_beside_it():
    from asru_lab.auditing.report import _choice
    from asru_lab.auditing.stats import choice_table

    mine = [_c("none", k < 7) for k in range(8)] + [_c("none", True, options=2)]
    mine += [_c("quantize", k < 3, variant="int4") for k in range(4)]
    mine += [_c("relearn_forget_lora_lr0.001_k250", True, half="taught")]  # shown: not counted
    mine += [_r("none", leak=True)]  # an answer, not a choice
    table = choice_table(mine, {})
    assert set(table) == {"none", "quantize_int4"}
    none = table["none"]["forget"]
    assert none["acc"] == pytest.approx(8 / 9) and none["n"] == 9
    assert none["chance"] == pytest.approx((8 * 0.25 + 0.5) / 9)
    assert none["lo"] < 8 / 9 < none["hi"]
    # void attacks count for nothing
    assert "quantize_int4" not in choice_table(mine, {"quantize_int4": "broke the model"})
    theirs = choice_table([_c("none", k < 2) for k in range(8)], {})
    both = with_oracle(table, theirs, key="acc")
    assert both["none"]["forget"]["oracle"] == 0.25
    assert both["none"]["forget"]["excess"] == pytest.approx(8 / 9 - 0.25)
    summary = _choice({"mcq_likelihood": both})
    assert summary["mcq_acc"] == pytest.approx(8 / 9) and summary["mcq_oracle_acc"] == 0.25
    assert summary["mcq_acc_max"] == pytest.approx(8 / 9) and summary["mcq_acc_by"] == "none"
    assert summary["mcq_excess_by"] == "none"


def test_the_choice_chart_draws_each_attack_the_oracle_and_chance():
    from asru_lab.viz.audit import choice_chart

    results = {
        "mcq_likelihood": {
            "none": {"forget": {"acc": 0.5, "lo": 0.3, "hi": 0.7, "n": 20, "chance": 0.25}},
            "soft_prompt": {
                "forget": {
                    **{"acc": 0.9, "lo": 0.7, "hi": 0.97, "n": 10, "chance": 0.25},
                    **{"oracle": 0.3, "oracle_lo": 0.1, "oracle_hi": 0.6, "excess": 0.6},
                }
            },
        }
    }
    fig = choice_chart({"model": {"name": "m"}, "results": results})
    bars = [t for t in fig.data if t.type == "bar"]
    assert list(bars[0].x) == ["soft_prompt", "none"]  # the largest excess first
    assert list(bars[1].y) == [0.3, None]
    assert any("chance 0.25" in (a.text or "") for a in fig.layout.annotations)
