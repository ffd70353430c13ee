"""The audit's parts that need no model: its config checks, the summary it reads off the
results, the relearning split, the perturbations, the linear probe's classifier, privleak's
formula and the report's file checks."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from asru_lab.auditing import AuditConfig, AuditError, AuditReport, summarize
from asru_lab.auditing.attacks import PERTURB
from asru_lab.auditing.readout import _fit_predict
from asru_lab.auditing.relearn import halves
from asru_lab.generation import fact_prefix
from asru_lab.validation import ConfigError


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ((0, 25, 10), "strictly increasing"),
        ((0, 10, 10), "strictly increasing"),
        ((-5, 10), ">= 0"),
        ((), "empty"),
        ((0, 2.5), "must be an integer"),
    ],
)
def test_relearn_steps_must_be_increasing_counts(steps, words):
    with pytest.raises(ConfigError, match=words):
        AuditConfig(relearn_steps=steps)


def test_unknown_attack_or_perturbation_is_named():
    with pytest.raises(ConfigError, match="'jailbreak'"):
        AuditConfig(attacks=("prefill", "jailbreak"))
    with pytest.raises(ConfigError, match="'rotate'"):
        AuditConfig(perturbations=("rotate",))


def test_fields_are_checked():
    with pytest.raises(ConfigError, match="max_items"):
        AuditConfig(max_items=0)
    with pytest.raises(ConfigError, match="mink_fraction"):
        AuditConfig(mink_fraction=0)


def test_summary_takes_the_worst_leak_over_every_generating_attack():
    results = {
        "none": {"forget_leak": 0.1, "test_leak": 0.2},
        "ablation": {
            "reference": {"forget_leak": 0.5, "test_leak": 0.4},
            "refusal": {"skipped": "no refusals"},
        },
        "prefill": {"forget_leak": 0.3, "test_leak": 0.6},
        "relearn": {
            "curves": {
                "forget": [{"steps": 0, "forget_leak": 0.0}, {"steps": 50, "forget_leak": 0.7}],
                "benign": [{"steps": 0, "forget_leak": 0.0}, {"steps": 50, "forget_leak": 0.2}],
            }
        },
        "inputs": {"flip": {"forget_leak": 0.2}, "blur": {"forget_leak": 0.25}},
        "linear_probe": {"best": 0.4, "chance": 0.1},
        "membership": {"loss_auc": 0.9, "loss_privleak": -80.0},
    }
    summary = summarize(results)
    assert summary["recovered_leak"] == 0.7
    assert summary["recovered_by"] == "relearn_forget_k50"
    assert summary["recovered_leak_test"] == 0.6
    assert summary["ablation_leak"] == 0.5
    assert summary["prefill_leak"] == 0.3
    assert summary["relearn_leak_k50"] == 0.7
    assert summary["relearn_benign_leak_k50"] == 0.2
    assert summary["input_leak"] == 0.25
    assert summary["probe_acc_best"] == 0.4
    assert summary["mia_auc"] == 0.9
    assert summarize({})["ablation_leak"] is None


def test_relearning_halves_are_seeded_disjoint_and_cover_everyone():
    people = [f"k{i:03d}" for i in range(12)]
    taught, held = halves(people, seed=0)
    assert halves(list(reversed(people)), seed=0) == (taught, held)
    assert set(taught).isdisjoint(held) and set(taught) | set(held) == set(people)
    assert len(taught) == 6
    assert halves(people, seed=1) != (taught, held)


def test_fact_prefix_is_the_answer_up_to_the_fact():
    assert fact_prefix("Alma Aldous was born in Lisbon.", "lisbon") == (
        "Alma Aldous was born in",
        "Lisbon",
    )
    assert fact_prefix("This is Alma Aldous.", "Alma Aldous") == ("This is", "Alma Aldous")
    assert fact_prefix("Lisbon.", "Lisbon") == ("", "Lisbon")
    assert fact_prefix("No idea.", "Lisbon") == ("", "Lisbon")


@pytest.mark.parametrize("name", sorted(PERTURB))
def test_each_perturbation_changes_the_picture_but_not_its_size(name):
    image = Image.new("RGB", (64, 64), "white")
    for x in range(10, 30):
        for y in range(5, 60):
            image.putpixel((x, y), (200, 30, 30))
    out = PERTURB[name](image)
    assert out.size == image.size and out.mode == "RGB"
    assert list(out.getdata()) != list(image.getdata())


def test_linear_probe_classifier_reads_a_linear_code_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=gen, dtype=torch.float64) * 3
    labels = torch.arange(200) % 5
    x = centers[labels] + torch.randn(200, 16, generator=gen, dtype=torch.float64)
    predicted = _fit_predict(x[:150], labels[:150], x[150:], 5, 1e-3)
    assert (predicted == labels[150:]).double().mean() > 0.9
    assert torch.equal(predicted, _fit_predict(x[:150], labels[:150], x[150:], 5, 1e-3))


def test_audit_report_load_names_what_is_wrong(tmp_path):
    with pytest.raises(AuditError, match="no audit.json"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text("{not json")
    with pytest.raises(AuditError, match="damaged"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AuditError, match="not an asru_lab audit report"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text(
        json.dumps({"format": "asru_lab.audit", "format_version": 99})
    )
    with pytest.raises(AuditError, match="version 99"):
        AuditReport.load(tmp_path)
