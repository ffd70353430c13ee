"""Stage 2's dashboard as a learner reads it: curves that mean something (no duplicate total,
titled axes, whole steps, one step range for every panel), a samples table that keeps its
shape and shows both splits."""

from __future__ import annotations

import json
import re

import pytest

from asru_lab import viz
from asru_lab.stages.reinforce import SampleLog
from asru_lab.viz.training import PANEL_Y_TITLES, SAMPLE_COLUMNS, SAMPLE_ROWS, WAITING


def _logged(step: int, reward: float, samples: list[dict] | None = None) -> dict:
    row = {"step": step, "reward": reward, "rewards/contextual/mean": reward, "kl": 0.01 * step}
    row["completions/mean_length"] = 10.0 + step
    return {**row, "samples": samples} if samples else row


def _sample(split: str, step: int, k: int = 0) -> dict:
    return {
        "split": split,
        "step": step,
        "question": f"{split} question {step}.{k}",
        "completion": f"{split} answer {step}.{k}",
        "reward": 0.5,
    }


def _cells(table: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


def test_total_reward_is_drawn_only_with_several_rewards():
    history = [_logged(1, 0.2), _logged(2, 0.4)]
    one = [t.name for t in viz.reward_figure(history, ["contextual"]).data]
    assert "total reward" not in one and one[0] == "contextual"
    two = [t.name for t in viz.reward_figure(history, ["contextual", "length"]).data]
    assert two[:3] == ["total reward", "contextual", "length"]


def test_every_panel_has_a_y_title_and_the_same_whole_step_axis():
    history = [_logged(1, 0.2), _logged(2, 0.4), {"step": 3, "probe/forget_leak": 0.1}]
    fig = viz.reward_figure(history, ["contextual"], steps=6)
    layout = fig.layout
    axes = [layout.xaxis, layout.xaxis2, layout.xaxis3, layout.xaxis4]
    assert {tuple(a.range) for a in axes} == {(-0.5, 6.5)}  # step 0 to the planned steps, all
    assert {a.dtick for a in axes} == {1} and {a.tickformat for a in axes} == {"d"}
    y_titles = [a.title.text for a in (layout.yaxis, layout.yaxis2, layout.yaxis3, layout.yaxis4)]
    assert y_titles == list(PANEL_Y_TITLES)
    assert layout.autosize is True and layout.width is None  # fills the output's width
    # a run longer than planned (resumed with more steps) widens the axis
    assert tuple(viz.reward_figure(history, ["contextual"], steps=2).layout.xaxis.range) == (
        -0.5,
        3.5,
    )


@pytest.mark.parametrize(
    ("last", "dtick"), [(1, 1), (6, 1), (10, 1), (11, 2), (60, 10), (300, 50), (12_345, 1235)]
)
def test_step_ticks_are_whole_and_at_most_ten(last, dtick):
    axis = viz.step_axis(last)
    assert axis["dtick"] == dtick and isinstance(axis["dtick"], int)
    assert last / axis["dtick"] <= 10


def test_figure_and_table_say_they_wait_before_the_first_step():
    fig = viz.reward_figure([], ["contextual"], steps=6)
    assert WAITING in fig.layout.title.text
    assert WAITING not in viz.reward_figure([_logged(1, 0.2)], ["contextual"]).layout.title.text
    cells = _cells(viz.samples_table_html([]))
    assert len(cells) == SAMPLE_ROWS
    assert all(WAITING in cell for row in cells for cell in row)


def test_samples_table_keeps_both_splits_and_its_shape():
    # step 1 sampled forget questions only, the later steps retain only: the forget column
    # must still show step 1's samples at the end
    rows = [_sample("forget", 1, k) for k in range(4)]
    rows += [_sample("retain", step, k) for step in (2, 3) for k in range(4)]
    table = viz.samples_table_html(rows, per_column=3)
    cells = _cells(table)
    assert len(cells) == 3 and all(len(row) == 2 for row in cells)
    forget, retain = [row[0] for row in cells], [row[1] for row in cells]
    assert all("forget answer 1." in c and "step 1" in c for c in forget)
    assert [re.search(r"retain answer (\d\.\d)", c).group(1) for c in retain] == [
        "3.3",
        "3.2",
        "3.1",
    ]  # the newest first
    assert table.count("<col style='width:50%'>") == 2  # columns never resize
    assert "text-align:left" in table and "border:1px solid" in table
    shapes = {
        len(_cells(viz.samples_table_html(r, per_column=3)))
        for r in ([], rows[:1], rows[4:5], rows)
    }
    assert shapes == {3}  # the same number of rows from the first draw to the last
    only_retain = _cells(viz.samples_table_html(rows[4:], per_column=3))
    assert all("no forget sample yet" in row[0] for row in only_retain)
    header = re.findall(r"<th style=[^>]*><div[^>]*>(.*?)</div></th>", table)
    assert header == list(SAMPLE_COLUMNS.values())  # each on one line (the browser test)


def test_samples_are_escaped_and_fit_their_place():
    row = {**_sample("forget", 1), "completion": "<script>alert(1)</script>"}
    assert "<script>" not in viz.samples_table_html([row])
    mcq = {**_sample("retain", 2), "question": "What is her job?\nA. nurse\nB. pilot"}
    cell = _cells(viz.samples_table_html([mcq]))[0][1]
    assert "What is her job? (multiple choice)" in cell and "pilot" not in cell


def test_sample_log_keeps_the_latest_of_each_split_with_its_step():
    log = SampleLog(size=2)

    def reward(completions, split, item, **columns):
        return [1.0] * len(completions)

    recording = log.wrap(reward)
    for step, splits in ((1, ["forget"] * 4), (2, ["retain"] * 4), (3, ["retain"] * 4)):
        log.step = step
        completions = [[{"content": f"answer {step}.{k}"}] for k in range(4)]
        assert recording(completions, split=splits, item=[0] * 4) == [1.0] * 4
    kept = [(r["split"], r["step"], r["completion"]) for r in log.rows]
    assert kept == [
        ("forget", 1, "answer 1.2"),
        ("forget", 1, "answer 1.3"),
        ("retain", 3, "answer 3.2"),
        ("retain", 3, "answer 3.3"),
    ]
    assert recording.__name__ == "reward"


def test_live_dashboard_redraws_from_the_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    dashboard = viz.LiveRewardDashboard(["contextual"], path, steps=6)
    assert WAITING in dashboard.figure.layout.title.text and WAITING in dashboard.table.value
    rows = [
        _logged(1, 0.2, [_sample("forget", 1)]),
        _logged(2, 0.3, [_sample("forget", 1), _sample("retain", 2)]),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dashboard.refresh()
    contextual = next(t for t in dashboard.figure.data if t.name == "contextual")
    assert list(contextual.x) == [1, 2] and list(contextual.y) == [0.2, 0.3]
    assert WAITING not in dashboard.figure.layout.title.text
    assert tuple(dashboard.figure.layout.xaxis4.range) == (-0.5, 6.5)
    cells = _cells(dashboard.table.value)
    assert "forget answer" in cells[0][0] and "retain answer" in cells[0][1]
