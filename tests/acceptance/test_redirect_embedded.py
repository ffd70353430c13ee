"""Issue #4's numbers on the embedded model, produced as a user would: the probe from
`asru-lab locate`, then `asru-lab redirect --probe P --out M` (closed form, the default) and
`asru-lab evaluate --model M`.

Stage 1.2 alone, no probe at inference: forget refusal >= 0.9 and leak <= 0.05, test-split
(same people, new views and wordings) leak <= 0.10, retain multiple choice and generation
accuracy within 2 points of the vanilla model.
"""

from __future__ import annotations

import json

import pytest

import asru_lab as al
from asru_lab.cli import main


@pytest.fixture(scope="module")
def stage1(located) -> dict:
    model = located["root"] / "stage1"
    assert main(["redirect", "--probe", str(located["probe"]), "--out", str(model), "--quiet"]) == 0
    results = located["root"] / "stage1.json"
    evaluate = ["evaluate", "--model", str(model), "--method", "asru_stage1"]
    assert main([*evaluate, "--out", str(results)]) == 0
    return {
        "model": model,
        "record": json.loads((model / "redirect.json").read_text()),
        "results": json.loads(results.read_text()),
        "vanilla": located["vanilla"],
    }


def test_the_closed_form_is_the_default_and_reaches_its_optimum(stage1):
    record = stage1["record"]
    assert record["solver"] == "closed_form"
    assert record["examples"]["forget"] == 492  # every forget generation question
    assert not record["closed_form"]["singular"]
    assert record["objective"]["final"] < 0.5 * record["objective"]["initial"]
    assert al.load_model(stage1["model"]).name.endswith("+redirect")


def test_redirected_model_forgets_the_forget_set_by_itself(stage1):
    forget = stage1["results"]["splits"]["forget"]
    assert forget["refusal_rate"] >= 0.9
    assert forget["leak_rate"] <= 0.05
    assert forget["quality"]["categories"]["contextual_refusal"] >= 0.8
    assert stage1["results"]["splits"]["test"]["leak_rate"] <= 0.10


def test_retain_accuracy_is_kept(stage1):
    vanilla = stage1["vanilla"]["splits"]["retain"]
    after = stage1["results"]["splits"]["retain"]
    assert vanilla["mcq_acc"] - after["mcq_acc"] <= 0.02
    assert vanilla["leak_rate"] - after["leak_rate"] <= 0.02  # recall on generation questions
