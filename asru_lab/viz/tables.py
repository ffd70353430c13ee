"""Tables of answers in the library's one table style (`asru_lab.table_style`)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from asru_lab.table_style import html_table


def answer_changes_table(
    rows: Sequence[dict], labels: tuple[str, str] = ("before", "after")
) -> str:
    """Rows of `explore.compare_models` as a table: who and what was asked, then each
    model's answer with its verdict ("knows", "refuses", "other"); `labels` name the models."""
    cells = [
        [
            f"{html.escape(r['person'])}<br><i>{html.escape(r['split'])}</i>",
            f"{html.escape(r['question'])}<br><i>fact: {html.escape(str(r['fact']))}</i>",
            f"{html.escape(r['before'])}<br><b>{html.escape(r['before_verdict'])}</b>",
            f"{html.escape(r['after'])}<br><b>{html.escape(r['after_verdict'])}</b>",
        ]
        for r in rows
    ]
    return html_table(["person", "question", *labels], cells, widths=["14%", "26%", "30%", "30%"])
