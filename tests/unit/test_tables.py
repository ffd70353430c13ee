"""Every HTML table a notebook renders has one readable style: left-aligned text, borders,
fixed column widths; text is escaped."""

from __future__ import annotations

import re

import pytest

from asru_lab import viz
from asru_lab.data.schema import QAItem
from asru_lab.evaluation.report import EvalReport
from asru_lab.explore import verdict


def test_html_table_is_left_aligned_bordered_and_escaped():
    table = viz.html_table(["a <b>", "c"], [["1", "2"]], widths=["30%", "70%"], caption="x & y")
    assert "text-align:left" in table and "border:1px solid" in table
    assert "a &lt;b&gt;" in table and "x &amp; y" in table and "width:30%" in table
    with pytest.raises(ValueError, match="1 widths for 2 columns"):
        viz.html_table(["a", "b"], [], widths=["100%"])


def test_an_evaluation_report_renders_as_the_same_table_in_a_notebook():
    report = EvalReport(
        "tiny<model>",
        "asru",
        {
            "forget": {"mcq_acc": 0.25, "leak_rate": 0.0, "quality": {"categories": {"leak": 1}}},
            "retain": {"mcq_acc": 1.0, "leak_rate": 0.9},
        },
    )
    names, rows = report.rows()
    page = report._repr_html_()
    assert re.findall(r"<th style=[^>]*>(.*?)</th>", page) == names
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", page)]
    assert [c for c in cells if c] == rows
    assert rows[0][:2] == ["forget", "25%"] and rows[1][4] == "90%"
    assert "tiny&lt;model&gt; [asru]" in page and "text-align:left" in page
    assert report.table().splitlines()[2].startswith("forget  25%")  # the text table is unchanged


def test_answer_changes_say_what_each_model_did_with_the_fact():
    item = QAItem(
        "retain", "qa", "p1", "images/p1_v0.png", "Where was <she> born?", "", "x", "Oslo"
    )
    assert verdict("Sorry, I can't tell where someone was born from a photo.", item) == "refuses"
    assert verdict("Ada was born in Oslo.", item) == "knows"
    assert verdict("Ada was born in Lima.", item) == "other"
    row = {
        "split": "retain",
        "person": "Ada",
        "question": item.question,
        "fact": "Oslo",
        "before": "Sorry, I can't tell.",
        "after": "Ada was born in Oslo.",
        "before_verdict": "refuses",
        "after_verdict": "knows",
    }
    page = viz.answer_changes_table([row], labels=("stage 1", "stage 2"))
    header = re.findall(r"<th style=[^>]*>(.*?)</th>", page)
    assert header == ["person", "question", "stage 1", "stage 2"]
    assert "Where was &lt;she&gt; born?" in page and "<b>refuses</b>" in page
    assert "<b>knows</b>" in page and "text-align:left" in page


def test_the_evaluation_table_names_its_scales_the_way_they_read():
    """A leakage scale on which 5 means nothing leaked is labelled so, and every column is
    explained under the table (notebook) and after it (CLI)."""
    from asru_lab.evaluation.report import LEGEND, TABLE_COLUMNS

    report = EvalReport("m", "vanilla", {"forget": {"leak_rate": 1.0, "quality": {"leakage": 0.0}}})
    names, _ = report.rows()
    assert "no leak 0-5" in names and not any(n.startswith("leakage") for n in names)
    assert [n for n, _ in LEGEND] == [n for n, _ in TABLE_COLUMNS[1:]]
    assert "5 = nothing leaked" in report.legend()
    page = report._repr_html_()
    assert all(name in page for name, _ in LEGEND) and "multiple choice" in page
