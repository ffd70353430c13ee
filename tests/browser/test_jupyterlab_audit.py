"""06_audit in JupyterLab, in a real browser: every cell runs (small mode) and the audit's
plotly figures are drawn with data — the leak under each attack, the relearning curves and the
per-layer readouts. Screenshots go to `test-artifacts/browser/` and to the test's tmp_path."""

from __future__ import annotations

import pytest

from tests.browser.jupyterlab_chromium import open_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "06_audit.ipynb"
RUN_ALL_S = 600  # small mode takes a few minutes of kernel time on 2 cores
# the figures asru_lab.viz.audit draws, by the start of their titles
TITLES = ("Leak under each attack", "Relearning attack", "Is the fact still readable")

FIGURES_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output .js-plotly-plot')]
  .map(p => ({
    title: (p.layout.title && p.layout.title.text) || '',
    points: p.data.reduce((n, t) => n + Array.from(t.y || []).filter(v => v !== null).length, 0),
  }))"""


def test_audit_notebook_runs_and_draws_its_figures(tmp_path):
    with open_notebook(NOTEBOOK, tmp_path) as lab:
        lab.run_all(RUN_ALL_S)
        drawn = lab.page.evaluate(FIGURES_JS)
        lab.screenshot("06_audit.png")
    for title in TITLES:
        mine = [f for f in drawn if f["title"].startswith(title)]
        assert mine, f"no figure titled {title!r} was drawn; drawn: {[f['title'] for f in drawn]}"
        assert all(f["points"] > 0 for f in mine), f"{title!r} was drawn without data: {mine}"
