"""The quantisation attack on the embedded model: each width asked plainly and prefilled, the
answers recorded, an inference-time method's probe applied to the quantised copy, and the
audited model never changed, not even when the attack fails halfway."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, AuditReport, audit, quantization
from asru_lab.auditing.quantization import quantized_linears
from asru_lab.probe import SteeringProbe
from tests.tiny_models import make_tiny_qwen3_vl

SMALL = AuditConfig(max_items=4, attacks=("quantize",), progress=False)


@pytest.fixture(scope="module")
def report(lm, bench) -> AuditReport:
    return audit(lm, bench, config=SMALL)


def _unchanged(lm, before: dict[str, torch.Tensor]) -> bool:
    after = lm.model.state_dict()
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    same = set(after) == set(before) and all(after[k].equal(v) for k, v in before.items())
    return same and not hooked


def test_each_width_reports_leaks_recall_and_the_prefilled_leaks(report):
    block = report.results["quantize"]
    assert list(block) == ["int8", "int4"]
    for width in block.values():
        assert {"forget_leak", "test_leak", "retain_recall", "n_forget", "n_retain"} <= set(width)
        assert {"forget_leak", "test_leak", "left_out_no_prefix"} <= set(width["prefill"])
        assert width["left_out_tied"] == ["lm_head"]  # the embedded model ties it
    assert 0 < block["int8"]["weight_error"] < 0.02 < block["int4"]["weight_error"] < 0.3
    # 8 bits keep the model: it still answers about the people it was not asked to forget
    assert block["int8"]["retain_recall"] >= 0.75
    s = report.summary
    assert s["quantize_leak_int8"] == block["int8"]["forget_leak"]
    assert s["quantize_leak_int4"] == block["int4"]["forget_leak"]
    assert s["recovered_leak"] >= s["quantize_leak_int4"]


def test_every_quantised_answer_is_recorded(report):
    mine = [r for r in report.records if r["attack"] == "quantize"]
    by_variant = {v: [r for r in mine if r["variant"] == v] for v in {r["variant"] for r in mine}}
    assert set(by_variant) == {"int8", "int8+prefill", "int4", "int4+prefill"}
    int4 = report.results["quantize"]["int4"]
    assert len(by_variant["int4"]) == int4["n_forget"] + int4["n_test"] + int4["n_retain"]
    assert {r["split"] for r in by_variant["int4+prefill"]} == {"forget", "test"}
    assert all(r["prefix"] and r["answer"] is not None for r in by_variant["int4+prefill"])
    assert all(r["prefix"] is None for r in by_variant["int4"])


def test_an_untied_lm_head_is_quantised_a_tied_one_is_not(lm, tmp_path):
    names, tied = quantized_linears(lm)
    assert tied == ["lm_head"] and "lm_head" not in names
    assert any(".visual.merger." in n for n in names) and any(".visual.blocks." in n for n in names)
    untied = al.load_model(make_tiny_qwen3_vl(tmp_path / "untied"))
    names, tied = quantized_linears(untied)
    assert tied == [] and "lm_head" in names


def test_the_audited_model_is_unchanged_after_the_attack_and_after_a_failure(bench, monkeypatch):
    lm = al.load_model()  # its own: weights on no int4 grid yet, whatever ran before
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    audit(lm, bench, config=replace(SMALL, quant_bits=(4,)))
    assert _unchanged(lm, before)

    def fails(subject, **kwargs):
        raise RuntimeError("out of memory halfway")

    # the plain questions have run on the int4 copy when the prefill attack fails
    monkeypatch.setattr(quantization, "prefill", fails)
    with pytest.raises(RuntimeError, match="halfway"):
        audit(lm, bench, config=replace(SMALL, quant_bits=(4,)))
    assert _unchanged(lm, before)


def test_a_probe_is_applied_to_the_quantised_copy(lm, bench, report):
    """An inference-time method is audited as it answers: its hooks on the quantised copy too.
    This probe wrecks every answer, so a copy without it would still recall the retain facts."""
    direction = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0)) * 20
    probe = SteeringProbe(direction, 2, lm.fingerprint(), alpha=3.0)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    steered = audit(lm, bench, probe=probe, config=SMALL)
    for width in ("int8", "int4"):
        assert report.results["quantize"][width]["retain_recall"] >= 0.75  # without the probe
        assert steered.results["quantize"][width]["retain_recall"] == 0.0
    assert _unchanged(lm, before)
