"""The audit's charts never hide a line under another without saying so, and count steps in
whole steps (issue #33, item 4)."""

from __future__ import annotations

from asru_lab.viz.audit import layer_readout_chart, relearn_chart


def _report(curve: list[float], steps=(0, 60)) -> dict:
    points = [{"steps": k, "forget_leak": v} for k, v in zip(steps, curve, strict=True)]
    return {"results": {"relearn": {"curves": {"forget": points}}}, "summary": {}}


def test_a_relearning_curve_on_top_of_another_is_named_and_marked():
    fig = relearn_chart({"asru_stage1": _report([0.25, 0.25]), "steer_only": _report([0.25, 0.25]),
                         "oracle": _report([0.0, 0.25])})  # fmt: skip
    lines = {t.name: t for t in fig.data}
    hidden = lines["steer_only: taught other forget facts = asru_stage1: taught other forget facts"]
    assert hidden.mode == "markers" and hidden.marker.symbol == "x-thin-open"
    assert lines["oracle: taught other forget facts"].mode == "lines+markers"
    assert list(fig.layout.xaxis.tickvals) == [0, 60]  # whole steps, never 0.5


def test_the_readout_chart_names_an_audited_curve_equal_to_the_references():
    probe = {"accuracy": [0.9, 1.0], "reference_accuracy": [0.9, 1.0],
             "oracle_accuracy": [0.2, 0.3], "chance": 0.2, "attribute": "birthplace"}  # fmt: skip
    fig = layer_readout_chart({"results": {"linear_probe": probe}})
    names = [t.name for t in fig.data]
    assert "probe accuracy: reference = probe accuracy: audited" in names
    assert "probe accuracy: oracle" in names
