"""The "hidden or forgotten" figure (issue #32): one point per method at (leak with no attack,
union leak under every attack), intervals on both axes, the oracle's point at the floor; drawn
here from the committed protocol-6 audits."""

from __future__ import annotations

import json
from pathlib import Path

from asru_lab.viz.audit import hidden_or_forgotten_chart

CACHE = Path(__file__).resolve().parents[2] / "figures" / "audit" / "cache" / "ratio-0.1"


def committed() -> dict:
    found = {}
    for path in sorted(CACHE.glob("*.audit-*.json")):
        method = path.name.split("-")[0]
        if method not in ("oracle", "vanilla"):
            found[method] = json.loads(path.read_text())
    return found


def test_each_method_is_a_point_with_its_intervals_and_the_oracle_sits_at_the_floor():
    reports = committed()
    assert {"asru", "ga", "npo"} <= set(reports)
    fig = hidden_or_forgotten_chart(reports)
    points = {t.name: t for t in fig.data if t.mode == "markers+text"}
    assert set(points) == {*reports, "retrain oracle"}
    asru = reports["asru"]["results"]
    assert points["asru"].x[0] == asru["leaks"]["none"]["forget"]["leak"]
    assert points["asru"].y[0] == asru["union"]["forget"]["leak"]
    assert points["asru"].error_y.arrayminus[0] > 0  # the union's interval is drawn
    oracle = points["retrain oracle"]
    assert oracle.y[0] == asru["oracle_union"]["forget"]["leak"] < 0.2
    assert oracle.x[0] == asru["leaks"]["none"]["forget"]["oracle"]
    # every method of the committed audit hides: it says little and gives much back
    assert all(points[m].y[0] - points[m].x[0] > 0.5 for m in reports)


def test_a_report_without_a_union_is_left_out_and_names_are_escaped():
    reports = committed()
    fig = hidden_or_forgotten_chart({"<b>x</b>": reports["asru"], "empty": {"results": {}}})
    names = [t.name for t in fig.data if t.mode == "markers+text"]
    assert names == ["&lt;b&gt;x&lt;/b&gt;", "retrain oracle"]


def test_compute_against_robustness_puts_each_point_at_its_cost_and_the_oracle_at_one():
    from asru_lab.viz.audit import compute_robustness_chart

    reports = committed()
    points = [
        {"label": "α 0.6", "compute": 0.45, "audit": reports["asru"]},
        {"label": "<i>α</i> 0.2", "compute": 0.2, "audit": reports["ga"]},
        {"label": "no union", "compute": 0.1, "audit": {"results": {}}},
    ]
    fig = compute_robustness_chart(points)
    drawn = {t.name: t for t in fig.data}
    assert set(drawn) == {"α 0.6", "&lt;i&gt;α&lt;/i&gt; 0.2", "retrain oracle"}
    asru = reports["asru"]["results"]
    assert drawn["α 0.6"].x[0] == 0.45 and drawn["α 0.6"].y[0] == asru["union"]["forget"]["leak"]
    assert drawn["α 0.6"].error_y.arrayminus[0] > 0
    oracle = drawn["retrain oracle"]
    assert oracle.x[0] == 1.0 and oracle.y[0] == asru["oracle_union"]["forget"]["leak"]
    (band,) = fig.layout.shapes
    assert band.y1 == asru["oracle_union"]["forget"]["hi"]


def test_points_on_top_of_each_other_share_one_label_that_names_them_all():
    reports = committed()
    fig = hidden_or_forgotten_chart({"asru": reports["asru"], "ga": reports["ga"]})
    texts = {t.name: t.text[0] for t in fig.data if t.mode == "markers+text"}
    # ASRU (0.02, 0.92) and GA (0.02, 0.98): one label, the legend names each
    assert texts["asru"] == "asru, ga" and texts["ga"] == ""
    far = {"results": {**reports["asru"]["results"], "union": {"forget": {"leak": 0.4}}}}
    fig = hidden_or_forgotten_chart({"asru": reports["asru"], "student": far})
    texts = {t.name: t.text[0] for t in fig.data if t.mode == "markers+text"}
    assert texts["asru"] == "asru" and texts["student"] == "student"
