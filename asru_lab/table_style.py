"""One style for every HTML table the library renders: left-aligned text, thin borders, fixed
column widths (JupyterLab's own table style right-aligns text and draws no borders). Plain
string formatting, low in the layout so that a report can render itself (`EvalReport`) and
`viz` can build on it."""

from __future__ import annotations

import html
from collections.abc import Sequence

TABLE_STYLE = "border-collapse:collapse;table-layout:fixed;width:100%;margin:0"
CELL_STYLE = "border:1px solid #c8c8c8;padding:4px 8px;text-align:left;vertical-align:top"
HEADER_STYLE = f"{CELL_STYLE};background:#f3f3f3;font-weight:600"
CAPTION_STYLE = "text-align:left;font-weight:600;padding:4px 0"


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[str] | None = None,
    caption: str | None = None,
) -> str:
    """An HTML table in the library's style. `header` and `caption`: plain text (escaped
    here); `rows`: cells as HTML (escape text with `html.escape`); `widths`: one CSS width per
    column (default: equal)."""
    widths = widths or [f"{100 / max(len(header), 1):.4g}%"] * len(header)
    if len(widths) != len(header):
        raise ValueError(f"{len(widths)} widths for {len(header)} columns: give one per column")
    cols = "".join(f"<col style='width:{w}'>" for w in widths)
    head = "".join(f"<th style='{HEADER_STYLE}'>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='{CELL_STYLE}'>{cell}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    title = f"<caption style='{CAPTION_STYLE}'>{html.escape(caption)}</caption>" if caption else ""
    return (
        f"<table class='asru-lab-table' style='{TABLE_STYLE}'>{title}<colgroup>{cols}</colgroup>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
