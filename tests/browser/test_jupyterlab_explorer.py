"""01_locate's steering explorer in JupyterLab, in a real browser.

Opens the notebook in JupyterLab in Debian's Chromium (`jupyterlab_chromium.open_notebook`),
runs every cell, moves the layer slider and checks that the steered answer and the plotly chart
follow it. Screenshots go to `test-artifacts/browser/` and to the test's tmp_path.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.jupyterlab_chromium import open_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "01_locate.ipynb"
RUN_ALL_S = 180  # the notebook's small mode takes about a minute of kernel time
WIDGET_UPDATE_S = 60

PLOT_DATA_JS = """el => ({
  title: (el.layout.title && el.layout.title.text) || '',
  traces: el.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)})),
})"""


def _steered_layer(text: str) -> int:
    found = re.search(r"steered \(layer (\d+), alpha", text)
    assert found, f"no steered answer in the explorer: {text!r}"
    return int(found.group(1))


def test_steering_explorer_follows_the_layer_slider(tmp_path):
    with open_notebook(NOTEBOOK, tmp_path) as lab:
        from playwright.sync_api import expect  # importable: open_notebook checked

        page = lab.page
        lab.run_all(RUN_ALL_S)

        explorer = page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-slider"))
        answers = explorer.locator(".widget-html")
        expect(answers).to_contain_text("steered (layer", timeout=WIDGET_UPDATE_S * 1000)
        plot = explorer.locator(".js-plotly-plot")
        plot.wait_for(state="attached", timeout=WIDGET_UPDATE_S * 1000)
        before_text = answers.inner_text()
        before_plot = plot.evaluate(PLOT_DATA_JS)
        before_layer = _steered_layer(before_text)
        assert [t["name"] for t in before_plot["traces"]] == ["unsteered", "steered"]
        assert f"layer {before_layer}" in before_plot["title"]

        explorer.evaluate("el => el.scrollIntoView({block: 'center'})")
        slider = explorer.locator(".widget-slider").filter(
            has=page.locator(".widget-label", has_text=re.compile(r"^layer$"))
        )
        readout = slider.locator(".widget-readout")
        handle = slider.locator(".noUi-handle")
        handle.focus()
        handle.press("ArrowRight")
        try:  # at the last layer ArrowRight does nothing: go one down instead
            expect(readout).not_to_have_text(str(before_layer), timeout=2_000)
        except AssertionError:
            handle.press("ArrowLeft")
            expect(readout).not_to_have_text(str(before_layer), timeout=5_000)
        layer = int(readout.inner_text())

        expect(answers).to_contain_text(
            f"steered (layer {layer}, alpha", timeout=WIDGET_UPDATE_S * 1000
        )
        deadline = time.monotonic() + WIDGET_UPDATE_S
        while f"layer {layer}," not in plot.evaluate(PLOT_DATA_JS)["title"]:
            assert time.monotonic() < deadline, "the plotly chart did not follow the slider"
            time.sleep(0.5)
        after_plot = plot.evaluate(PLOT_DATA_JS)
        assert _steered_layer(answers.inner_text()) == layer != before_layer
        assert after_plot["traces"] != before_plot["traces"]
        unsteered, steered = (t["y"] for t in after_plot["traces"])
        assert all(0 <= p <= 1 for p in unsteered + steered)
        assert sum(steered) <= 1 + 1e-6

        explorer.evaluate("el => el.scrollIntoView({block: 'center'})")
        lab.screenshot("01_locate_explorer.png")
