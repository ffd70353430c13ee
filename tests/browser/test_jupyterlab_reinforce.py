"""03_reinforce's live reward dashboard in JupyterLab, in a real browser.

Opens the notebook in JupyterLab in Debian's Chromium (`jupyterlab_chromium.open_notebook`),
runs every cell and, while the GRPO cell runs, reads the dashboard's plotly figure as the
browser draws it: its curves must gain points during the run, and at the end hold one point
per row of the run's `metrics.jsonl`. Screenshots go to `test-artifacts/browser/` and to the
test's tmp_path.
"""

from __future__ import annotations

import re

import pytest

from asru_lab.stages.reinforce_config import ReinforceConfig
from asru_lab.viz import read_metrics, reward_figure
from tests.browser.jupyterlab_chromium import open_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "03_reinforce.ipynb"
RUN_ALL_S = 600  # small mode: 33 s on 2 idle cores, 284 s on 2 cores shared with other jobs
POLL_S = 0.25  # a small-mode GRPO step takes seconds: look often enough to see each one
TOTAL_REWARD = "total reward"

# The reward figure as drawn, whether its cell still runs, and that cell's printed text.
DASHBOARD_JS = """() => {
  const plot = [...document.querySelectorAll('.jp-OutputArea-output .js-plotly-plot')]
    .find(p => ((p.layout.title && p.layout.title.text) || '').startsWith('Stage 2 (GRPO)'));
  if (!plot) return null;
  const cell = plot.closest('.jp-CodeCell');
  return {
    running: cell.querySelector('.jp-InputPrompt').textContent.trim() === '[*]:',
    traces: plot.data.map(t => ({
      name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
    })),
    printed: [...cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')]
      .map(o => o.textContent).join(''),
  };
}"""
SCROLL_TO_DASHBOARD_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .find(p => ((p.layout.title && p.layout.title.text) || '').startsWith('Stage 2 (GRPO)'))
  .scrollIntoView({block: 'center'})"""


def _points(shown: dict) -> dict[str, int]:
    return {t["name"]: len(t["x"]) for t in shown["traces"]}


def test_reward_dashboard_grows_while_grpo_runs(tmp_path):
    kernel_tmp = tmp_path / "kernel-tmp"  # the notebook's run_dir is a tempfile.mkdtemp
    kernel_tmp.mkdir()
    with open_notebook(NOTEBOOK, tmp_path, env={"TMPDIR": str(kernel_tmp)}) as lab:
        page = lab.page
        during: list[dict[str, int]] = []  # point counts per trace, looked at while GRPO ran
        live_shots: list[str] = []

        def look() -> None:
            shown = page.evaluate(DASHBOARD_JS)
            if shown is None or not shown["running"]:
                return
            during.append(_points(shown))
            grew = len(during) > 1 and 0 < during[-2][TOTAL_REWARD] < during[-1][TOTAL_REWARD]
            if grew and not live_shots:  # the first time a drawn curve gains a point
                page.evaluate(SCROLL_TO_DASHBOARD_JS)
                live_shots.append("03_reinforce_dashboard_live.png")
                lab.screenshot(live_shots[0])

        lab.run_all(RUN_ALL_S, poll_s=POLL_S, on_poll=look)
        shown = page.evaluate(DASHBOARD_JS)
        assert shown is not None, "no reward dashboard in the GRPO cell's output"
        page.evaluate(SCROLL_TO_DASHBOARD_JS)
        lab.screenshot("03_reinforce_dashboard.png")

        rewards = list(dict.fromkeys(p[TOTAL_REWARD] for p in during if p[TOTAL_REWARD] > 0))
        print(f"reward points seen while GRPO ran: {rewards}")  # shown when the test fails
        assert len(rewards) >= 2, (
            f"the reward curve did not grow in the browser while GRPO ran: {len(during)} looks "
            f"during the run saw {rewards} points (final {_points(shown)})"
        )
        for earlier, later in zip(during, during[1:] + [_points(shown)], strict=True):
            assert all(later[name] >= n for name, n in earlier.items()), (
                f"a curve lost points: {earlier} then {later}"
            )

        runs = list(kernel_tmp.glob("stage2_*"))
        assert len(runs) == 1, f"expected the notebook's one run folder in {kernel_tmp}: {runs}"
        run_dir = runs[0]
        expected = reward_figure(read_metrics(run_dir / "metrics.jsonl"), ReinforceConfig().rewards)
        assert [t["name"] for t in shown["traces"]] == [t.name for t in expected.data]
        for drawn, logged in zip(shown["traces"], expected.data, strict=True):
            assert drawn["x"] == list(logged.x), f"{drawn['name']}: steps differ from the log"
            assert drawn["y"] == pytest.approx(list(logged.y)), drawn["name"]
        steps = re.search(r"(\d+) steps in", shown["printed"])
        assert steps, f"the GRPO cell did not print its steps: {shown['printed']!r}"
        reward_steps = next(t["x"] for t in shown["traces"] if t["name"] == TOTAL_REWARD)
        assert reward_steps[-1] == int(steps.group(1)), (reward_steps, steps.group(0))
