"""Tables of answers in the library's one table style (`asru_lab.table_style`)."""

from __future__ import annotations

from collections.abc import Sequence

from asru_lab.table_style import Html, html_table


def answer_changes_table(
    rows: Sequence[dict], labels: tuple[str, str] = ("before", "after")
) -> Html:
    """Rows of `explore.compare_models` as a table: who and what was asked, then each
    model's answer with its verdict ("knows", "refuses", "other"); `labels` name the models."""
    cells = [
        [
            Html("{}<br><i>{}</i>").format(r["person"], r["split"]),
            Html("{}<br><i>fact: {}</i>").format(r["question"], r["fact"]),
            Html("{}<br><b>{}</b>").format(r["before"], r["before_verdict"]),
            Html("{}<br><b>{}</b>").format(r["after"], r["after_verdict"]),
        ]
        for r in rows
    ]
    return html_table(["person", "question", *labels], cells, widths=["14%", "26%", "30%", "30%"])
