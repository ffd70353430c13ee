"""The causal-tracing heatmap page (what `asru-lab trace-causal` writes) in a real browser:
it renders offline, and its dropdown switches from the mean to one person's heatmaps."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from asru_lab import viz
from asru_lab.causal import CausalTraceConfig, trace_causal
from tests.browser.jupyterlab_chromium import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    sync_playwright_or_fail,
)

pytestmark = pytest.mark.slow

FIGURE_JS = """el => ({
  title: el.layout.title.text,
  z: el.data.map(t => t.z.map(row => Array.from(row))),
  panels: el.data.length,
})"""


def test_the_heatmap_page_switches_to_one_person(lm, bench, tmp_path):
    sync_playwright = sync_playwright_or_fail()
    config = CausalTraceConfig(max_people=2, layers=(3, 4, 5), progress=False)
    trace = trace_causal(lm, bench, replace(config))
    viz.save_figure(viz.causal_heatmap(trace), tmp_path / "causal_heatmap", png=False)
    person = trace.people[1]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto((tmp_path / "causal_heatmap.html").as_uri())
            plot = page.locator(".js-plotly-plot")
            plot.wait_for(state="attached", timeout=20_000)
            shown = plot.evaluate(FIGURE_JS)
            assert shown["panels"] == 3 and "mean over 2 forget people" in shown["title"]
            assert shown["z"][0] == [
                [pytest.approx(v) for v in row] for row in trace.matrix("residual")
            ]

            page.locator(".updatemenu-header-group").click()
            page.locator(".updatemenu-dropdown-button", has_text=person.name).click()
            page.wait_for_function(
                f"() => document.querySelector('.js-plotly-plot').layout.title.text"
                f".includes({person.name!r})",
                timeout=10_000,
            )
            shown = plot.evaluate(FIGURE_JS)
            for k, component in enumerate(trace.components):
                expected = trace.matrix(component, person.person_id)
                assert shown["z"][k] == [[pytest.approx(v) for v in row] for row in expected]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(tmp_path / "causal_heatmap_person.png"))
            shutil.copy(tmp_path / "causal_heatmap_person.png", ARTIFACTS)
        finally:
            browser.close()
