"""The live samples table in Chromium: it fits whatever width its output has and keeps one
height as that width changes (a JupyterLab widget's output widens while it runs; a table that
grows a line as it does jumps under the reader's eyes)."""

from __future__ import annotations

from asru_lab.viz import samples_table_html
from tests.browser.jupyterlab_chromium import CHROMIUM, CHROMIUM_FLAGS, sync_playwright_or_fail

WIDTHS = range(250, 1451, 50)
MEASURE_JS = """() => {
  const t = document.querySelector('table').getBoundingClientRect();
  return [Math.round(t.width), Math.round(t.height)];
}"""


def _rows() -> list[dict]:
    long_word = "unbroken" * 30  # no place to break a line
    return [
        {
            "split": split,
            "step": k,
            "reward": 0.25 * k,
            "question": f"What is the occupation of the person in this picture? ({k})"
            * (1 + k % 2),
            "completion": " ".join(["words"] * 40 * k) + (long_word if k == 2 else ""),
        }
        for split in ("forget", "retain")
        for k in range(5)
    ]


def test_the_samples_table_fits_its_width_and_keeps_its_height():
    sync_playwright = sync_playwright_or_fail()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page()
        heights = set()
        for rows in ([], _rows()[:3], _rows()):
            page.set_content(f"<div id='out'>{samples_table_html(rows)}</div>")
            for width in WIDTHS:
                page.evaluate(f"document.getElementById('out').style.width = '{width}px'")
                table_width, height = page.evaluate(MEASURE_JS)
                assert table_width == width, f"a {table_width} px table in a {width} px output"
                heights.add(height)
        browser.close()
    assert len(heights) == 1, f"the table's height changed with its width or content: {heights}"
