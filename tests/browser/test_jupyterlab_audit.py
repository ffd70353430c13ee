"""06_audit in JupyterLab, in a real browser: every cell runs (small mode) and the audit's
plotly figures are drawn with data — each attack against the oracle, the leak under each attack,
the relearning curves, the per-layer readouts and multiple choice by option likelihood — and no
cell leaves a (pink) stderr box behind: a learner reads a warning there as an error.
Screenshots go to `test-artifacts/browser/` and to the test's tmp_path."""

from __future__ import annotations

import pytest

from tests.browser.jupyterlab_chromium import open_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "06_audit.ipynb"
RUN_ALL_S = 600  # small mode takes a few minutes of kernel time on 2 cores
# the figures asru_lab.viz.audit draws, by the start of their titles
TITLES = (
    "Leak against the oracle under the same attack",
    "Leak under each attack",
    "Relearning attack",
    "Is the fact still readable",
    "Multiple choice by option likelihood",
)

# plotly.js's computed traces (`_fullData`): the figure's typed arrays decoded
FIGURES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .map(p => ({
    title: (p.layout && p.layout.title && p.layout.title.text) || '',
    points: (p._fullData || []).reduce(
      (n, t) => n + Array.from(t.y || []).filter(v => v !== null && v !== undefined).length, 0),
  }))"""
# JupyterLab 4 only keeps the cells near the viewport in the page: scroll the notebook from top
# to bottom, a screen at a time, and look at the figures drawn at each stop.
SCROLL_JS = """(k) => {
  const outer = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
    || document.querySelector('.jp-NotebookPanel .jp-Notebook');
  outer.scrollTop = k * outer.clientHeight * 0.8;
  return outer.scrollTop + outer.clientHeight >= outer.scrollHeight - 2;
}"""
MAX_SCREENS = 200
# the printed text of the notebook's last code cell, and of every stdout output in the page now
LAST_CELL_JS = """() => {
  const cells = [...document.querySelectorAll('.jp-CodeCell')];
  return cells.length ? cells[cells.length - 1].querySelector('.jp-OutputArea').innerText : '';
}"""
STDOUT_JS = """() => [...document.querySelectorAll(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')]
  .map(o => o.innerText)"""
VERDICTS = ("hidden, not forgotten", "not told apart from forgotten", "too close to call")
# the text of every stderr output the page holds now
STDERR_JS = """() => [...document.querySelectorAll(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(o => o.innerText.slice(0, 300))"""


def drawn_figures(lab) -> tuple[dict[str, dict], set[str]]:
    """Every plotly figure of the notebook, by title, scrolled into the page one screen at a
    time (the most points seen for each), and the stderr outputs seen on the way."""
    seen: dict[str, dict] = {}
    stderr: set[str] = set()
    lab.printed = set()  # every stdout text seen on the way
    for k in range(MAX_SCREENS):
        at_end = lab.page.evaluate(SCROLL_JS, k)
        lab.page.wait_for_timeout(300)  # let JupyterLab attach and plotly draw the outputs
        for figure in lab.page.evaluate(FIGURES_JS):
            if figure["points"] >= seen.get(figure["title"], {"points": -1})["points"]:
                seen[figure["title"]] = figure
        stderr.update(lab.page.evaluate(STDERR_JS))
        lab.printed.update(lab.page.evaluate(STDOUT_JS))
        if at_end:
            break
    return seen, stderr


def test_audit_notebook_runs_and_draws_its_figures(tmp_path):
    with open_notebook(NOTEBOOK, tmp_path) as lab:
        lab.run_all(RUN_ALL_S)
        figures, stderr = drawn_figures(lab)
        drawn = list(figures.values())
        last = lab.page.evaluate(LAST_CELL_JS)  # scrolled to the end: the last cell is there
        printed = "\n".join(sorted(lab.printed))
        lab.screenshot("06_audit.png")
    assert not stderr, f"cells left stderr boxes behind: {sorted(stderr)}"
    # the notebook ends by stating its answer, read from its own numbers, for both methods
    for method in ("steer_only", "asru_stage1"):
        line = next((x for x in last.splitlines() if x.startswith(f"{method}:")), "")
        assert any(v in line for v in VERDICTS) and "retrain oracle" in line, (
            f"the last cell states no verdict for {method}: {last!r}"
        )
    assert "None" not in printed.split(), "a printed table shows Python's None"
    for title in TITLES:
        mine = [f for f in drawn if f["title"].startswith(title)]
        assert mine, f"no figure titled {title!r} was drawn; drawn: {[f['title'] for f in drawn]}"
        assert all(f["points"] > 0 for f in mine), f"{title!r} was drawn without data: {mine}"
