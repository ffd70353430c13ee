"""03_reinforce's live reward dashboard in JupyterLab, in a real browser, as a learner sees it.

Opens the notebook in JupyterLab in Debian's Chromium (`jupyterlab_chromium.open_notebook`),
runs every cell and, while the GRPO cell runs, reads the dashboard's plotly figure as the
browser draws it: its curves must gain points during the run, and at the end hold one point
per row of the run's `metrics.jsonl`; the figure fills the output's width; both columns of the
samples table (live and in the last cell) hold samples; and no cell shows a stderr box (a
warning a learner reads as an error) or transformers' own bars and log table. Screenshots and
the curves' growth over time (`03_reinforce_curves.json`) go to `test-artifacts/browser/` and to
the test's tmp_path.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from asru_lab.stages.reinforce_config import ReinforceConfig
from asru_lab.viz import read_metrics, reward_figure
from tests.browser.jupyterlab_chromium import ARTIFACTS, open_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "03_reinforce.ipynb"
RUN_ALL_S = 600  # small mode: 33 s on 2 idle cores, 284 s on 2 cores shared with other jobs
POLL_S = 0.25  # a small-mode GRPO step takes seconds: look often enough to see each one
REWARD = ReinforceConfig().rewards[0]  # the notebook's one reward: its curve, no "total"
EMPTY_PLACES = ("waiting for the first step", "sample yet")

# The reward figure as drawn, whether its cell still runs, and that cell's printed text.
DASHBOARD_JS = """() => {
  // live, a plotly widget; once training ends, the static figure left in its place
  const plot = [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')]
    .find(p => ((p.layout && p.layout.title && p.layout.title.text) || '')
      .startsWith('Stage 2 (GRPO)'));
  if (!plot) return null;
  const output = plot.closest('.jp-OutputArea-output') || plot.closest('.jp-OutputArea-child');
  const cell = plot.closest('.jp-CodeCell');
  return {
    running: cell.querySelector('.jp-InputPrompt').textContent.trim() === '[*]:',
    traces: plot.data.map(t => ({
      name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
    })),
    width: plot.getBoundingClientRect().width,
    outputWidth: output.getBoundingClientRect().width,
    output: output.className,
    table: [...cell.querySelectorAll('table.asru-lab-table')].map(t => ({
      rows: t.querySelectorAll('tbody tr').length,
      height: Math.round(t.getBoundingClientRect().height),
    })),
    printed: [...cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')]
      .map(o => o.textContent).join(''),
  };
}"""
# The GRPO cell (the one that makes the dashboard): is it running, and does it show anything yet?
# (queued cells show "[*]:" too: it runs once the code cell before it has its number)
GRPO_CELL_JS = r"""() => {
  const cells = [...document.querySelectorAll('.jp-CodeCell')];
  const at = cells.findIndex(
    c => c.querySelector('.jp-InputArea').innerText.includes('LiveRewardDashboard('));
  if (at < 1) return null;
  const cell = cells[at];
  const prompt = c => c.querySelector('.jp-InputPrompt').textContent.trim();
  const out = cell.querySelector('.jp-OutputArea');
  return {
    running: prompt(cell) === '[*]:' && /^\[\d+\]:$/.test(prompt(cells[at - 1])),
    visible: !!cell.querySelector('.js-plotly-plot') || out.innerText.trim().length > 0,
  };
}"""
FIRST_OUTPUT_S = 3.0  # the GRPO cell shows something within this of starting (issue #33)
PLOT_TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .map(p => p.layout && p.layout.title)"""
# Every samples table's columns in the notebook (the last cell's too) and the stderr boxes.
PAGE_JS = """() => ({
  tables: [...document.querySelectorAll('.jp-OutputArea-output table.asru-lab-table')]
    .filter(t => t.querySelector('th').textContent.startsWith('forget'))
    .map(t => [0, 1].map(
      k => [...t.querySelectorAll('tbody tr')].map(r => r.children[k].textContent.trim()))),
  stderr: [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent.slice(0, 300)),
  outputs: [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent),
})"""
# transformers' own output, which the library leaves out in a notebook (asru_lab.quiet)
THIRD_PARTY_OUTPUT = ("Loading weights", "Writing model shards", "Training Loss")
SCROLL_TO_DASHBOARD_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .find(p => ((p.layout.title && p.layout.title.text) || '').startsWith('Stage 2 (GRPO)'))
  .scrollIntoView({block: 'center'})"""


def _points(shown: dict) -> dict[str, int]:
    return {t["name"]: len(t["x"]) for t in shown["traces"]}


def _filled(column: list[str]) -> bool:
    return bool(column) and not any(e in place for place in column for e in EMPTY_PLACES)


def test_reward_dashboard_grows_while_grpo_runs(tmp_path):
    kernel_tmp = tmp_path / "kernel-tmp"  # the notebook's run_dir is a tempfile.mkdtemp
    kernel_tmp.mkdir()
    with open_notebook(NOTEBOOK, tmp_path, env={"TMPDIR": str(kernel_tmp)}) as lab:
        page = lab.page
        during: list[dict[str, int]] = []  # point counts per trace, looked at while GRPO ran
        growth: list[dict] = []  # each change of the counts, with the seconds since Run All
        live_shots: list[str] = []
        tables: list[list[dict]] = []  # the live samples table's rows and height at each look
        started = time.monotonic()

        grpo: dict[str, float] = {}  # when the GRPO cell was first seen running, and showing

        def look() -> None:
            cell = page.evaluate(GRPO_CELL_JS)
            now = time.monotonic() - started
            if cell and cell["running"]:
                grpo.setdefault("started", now)
                if cell["visible"]:
                    grpo.setdefault("visible", now)
            shown = page.evaluate(DASHBOARD_JS)
            if shown is None or not shown["running"]:
                return
            during.append(_points(shown))
            tables.append(shown["table"])
            if not growth or growth[-1]["points"] != during[-1]:
                growth.append({"s": round(time.monotonic() - started, 1), "points": during[-1]})
            grew = len(during) > 1 and 0 < during[-2][REWARD] < during[-1][REWARD]
            if grew and not live_shots:  # the first time a drawn curve gains a point
                page.evaluate(SCROLL_TO_DASHBOARD_JS)
                live_shots.append("03_reinforce_dashboard_live.png")
                lab.screenshot(live_shots[0])

        seconds = lab.run_all(RUN_ALL_S, poll_s=POLL_S, on_poll=look)
        shown = page.evaluate(DASHBOARD_JS)
        assert shown is not None, "no reward dashboard in the GRPO cell's output; plots: " + str(
            page.evaluate(PLOT_TITLES_JS)
        )
        page.evaluate(SCROLL_TO_DASHBOARD_JS)
        lab.screenshot("03_reinforce_dashboard.png")
        record = {
            "run_all_s": round(seconds, 1),
            "grpo_cell": grpo,
            "growth": growth,
            "final": _points(shown),
        }
        (ARTIFACTS / "03_reinforce_curves.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"curves' points while GRPO ran: {growth}")  # shown when the test fails

        assert "started" in grpo and "visible" in grpo, f"the GRPO cell was never seen: {grpo}"
        waited = grpo["visible"] - grpo["started"]
        assert waited <= FIRST_OUTPUT_S, f"the GRPO cell showed nothing for {waited:.1f} s"
        rewards = list(dict.fromkeys(p[REWARD] for p in during if p[REWARD] > 0))
        assert len(rewards) >= 2, (
            f"the reward curve did not grow in the browser while GRPO ran: {len(during)} looks "
            f"during the run saw {rewards} points (final {_points(shown)})"
        )
        for earlier, later in zip(during, during[1:] + [_points(shown)], strict=True):
            assert all(later[name] >= n for name, n in earlier.items()), (
                f"a curve lost points: {earlier} then {later}"
            )
        shapes = {(t[0]["rows"], t[0]["height"]) for t in tables if t}
        assert len(shapes) == 1 and len(tables[0]) == 1, (
            f"the samples table changed its shape while GRPO ran (rows, px): {sorted(shapes)}"
        )
        assert shown["width"] >= 0.9 * shown["outputWidth"], (
            f"the figure is {shown['width']:.0f} px wide in a {shown['outputWidth']:.0f} px output"
        )

        runs = list(kernel_tmp.glob("stage2_*"))
        assert len(runs) == 1, f"expected the notebook's one run folder in {kernel_tmp}: {runs}"
        run_dir = runs[0]
        expected = reward_figure(read_metrics(run_dir / "metrics.jsonl"), ReinforceConfig().rewards)
        assert [t["name"] for t in shown["traces"]] == [t.name for t in expected.data]
        assert "total reward" not in [t["name"] for t in shown["traces"]]  # one reward only
        for drawn, logged in zip(shown["traces"], expected.data, strict=True):
            assert drawn["x"] == list(logged.x), f"{drawn['name']}: steps differ from the log"
            assert drawn["y"] == pytest.approx(list(logged.y)), drawn["name"]
        steps = re.search(r"(\d+) steps in", shown["printed"])
        assert steps, f"the GRPO cell did not print its steps: {shown['printed']!r}"
        reward_steps = next(t["x"] for t in shown["traces"] if t["name"] == REWARD)
        assert reward_steps[-1] == int(steps.group(1)), (reward_steps, steps.group(0))

        seen = page.evaluate(PAGE_JS)
        assert len(seen["tables"]) == 2, "expected the live samples table and the last cell's"
        for table in seen["tables"]:
            forget, retain = table
            assert _filled(forget) and _filled(retain), f"a samples column is empty: {table}"
        assert not seen["stderr"], f"a cell shows a stderr box: {seen['stderr']}"
        noise = [t for t in THIRD_PARTY_OUTPUT for o in seen["outputs"] if t in o]
        assert not noise, f"transformers' own output is shown: {noise}"

        # saved, the notebook keeps what a reader opening it again needs: the dashboard as a
        # static figure and table, the finished bars as their last lines — no widget's name
        page.keyboard.press("Control+s")
        saved = _saved_outputs(tmp_path / "notebooks" / NOTEBOOK)
        widgets = [t[:60] for t in saved["plain"] if t.startswith(("VBox(", "HBox("))]
        assert not widgets, f"the saved notebook shows widgets as text: {widgets}"
        frozen = [t[:80] for t in saved["plain"] if re.search(r"(?<!\d)0%\|", t)]
        assert not frozen, f"the saved notebook keeps progress bars at 0 %: {frozen}"
        assert any(t.startswith("Stage 2 (GRPO)") for t in saved["plotly_titles"]), (
            f"no static reward figure in the saved notebook: {saved['plotly_titles']}"
        )


def _saved_outputs(path, wait_s: float = 30.0) -> dict:
    """The text/plain outputs and the plotly figures' titles of the notebook saved at `path`,
    once JupyterLab has written it with outputs."""
    deadline = time.monotonic() + wait_s
    while True:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        outputs = [o for c in cells for o in c.get("outputs", [])]
        if outputs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    plain, titles = [], []
    for output in outputs:
        data = output.get("data", {})
        text = data.get("text/plain", "")
        plain.append("".join(text) if isinstance(text, list) else text)
        figure = data.get("application/vnd.plotly.v1+json")
        if figure:
            title = figure.get("layout", {}).get("title", {})
            titles.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return {"plain": plain, "plotly_titles": titles}
