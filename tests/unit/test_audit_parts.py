"""The audit's parts that need no model: its config checks, the summary it reads off the
results, the relearning split, the perturbations, the quantiser, the linear probe's
classifier, privleak's formula and the report's file checks."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from asru_lab.auditing import AuditConfig, AuditError, AuditReport, summarize
from asru_lab.auditing.attacks import PERTURB
from asru_lab.auditing.quantization import fake_quantize
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


@pytest.mark.parametrize("bits", [(3,), (16,), (), (8, 4, 8)])
def test_quant_bits_must_be_supported_widths(bits):
    with pytest.raises(ConfigError, match=r"quant_bits must be some of \(4, 8\)") as info:
        AuditConfig(quant_bits=bits)
    assert f"got {bits}" in str(info.value)


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


def test_summary_counts_quantised_leaks_unless_quantising_broke_the_model():
    def width(leak: float, recall: float, prefilled: float) -> dict:
        return {"forget_leak": leak, "retain_recall": recall, "prefill": {"forget_leak": prefilled}}

    results = {
        "none": {"forget_leak": 0.1, "retain_recall": 0.9},
        "prefill": {"forget_leak": 0.3},
        "quantize": {"int8": width(0.1, 0.9, 0.3), "int4": width(0.6, 0.85, 0.8)},
    }
    summary = summarize(results)
    assert summary["quantize_leak_int8"] == 0.1
    assert summary["quantize_leak_int4"] == 0.6
    assert (summary["recovered_leak"], summary["recovered_by"]) == (0.8, "quantize_int4+prefill")
    assert summary["prefill_leak"] == 0.3 and summary["void_attacks"] is None
    # int4 lost the retain facts too: its leaks (plain and prefilled) measure nothing
    results["quantize"]["int4"] = width(0.6, 0.2, 0.8)
    summary = summarize(results)
    assert summary["quantize_leak_int4"] is None
    assert (summary["recovered_leak"], summary["recovered_by"]) == (0.3, "prefill")
    assert "quantize_int4: the attack broke the model" in summary["void_attacks"]
    assert "quantize_int4+prefill: the attack broke the model" in summary["void_attacks"]


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


def _weight() -> torch.Tensor:
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    weight[3] = 0.0
    return weight


def _relative_error(rounded: torch.Tensor, weight: torch.Tensor) -> float:
    return float((rounded - weight).norm() / weight.norm())


def test_fake_quantize_rounds_each_row_to_its_own_symmetric_grid():
    weight = _weight()
    int8, int4 = fake_quantize(weight, 8), fake_quantize(weight, 4)
    assert _relative_error(int8, weight) < 0.01
    assert 0.05 < _relative_error(int4, weight) < 0.2
    assert int8.dtype == weight.dtype and int8.shape == weight.shape
    assert torch.equal(int4[3], torch.zeros(64))  # a row of zeros stays zero, no NaN
    for row, rounded in zip(weight, int4, strict=True):
        scale = row.abs().max() / 7  # 4 bits: the integers -7..7
        if scale == 0:
            continue
        steps = rounded / scale
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().max().round() == 7  # the row's largest weight is a grid end, exact
        assert (rounded - row).abs().max() <= scale / 2 + 1e-6  # round to nearest
    # one scale per row: a row 100 times larger changes no other row's grid
    louder = weight.clone()
    louder[5] *= 100
    others = [k for k in range(16) if k != 5]
    assert torch.equal(fake_quantize(louder, 4)[others], int4[others])
    assert torch.allclose(fake_quantize(louder, 4)[5], int4[5] * 100, rtol=1e-5)
    assert fake_quantize(weight.bfloat16(), 4).dtype == torch.bfloat16


def test_an_update_smaller_than_half_an_int4_step_rounds_away():
    """Zhang et al.'s mechanism: unlearning that moves each weight by less than half a step
    (the row's largest weight kept) leaves the int4 model exactly as it was before."""
    grid = fake_quantize(_weight(), 4)
    scale = grid.abs().amax(dim=1, keepdim=True) / 7
    update = (torch.rand(grid.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9
    unlearned = grid + update * scale
    largest = grid.abs() == grid.abs().amax(dim=1, keepdim=True)
    unlearned[largest] = grid[largest]
    assert not torch.equal(unlearned, grid)
    assert torch.allclose(fake_quantize(unlearned, 4), grid, atol=1e-6)
    assert not torch.allclose(fake_quantize(unlearned, 8), grid, atol=1e-3)


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
