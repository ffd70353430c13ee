"""The one way asru_lab puts text into HTML, and one style for every HTML table it renders.

`escape_text` turns any text (a model's name, a person's name, a question, a generated answer)
into HTML text that no browser reads as markup; plotly labels read it back as the same text.
`Html` marks HTML that asru_lab built from escaped parts: `html_table` and the page writer
(`viz.pages.write_page`) insert it as is, and escape every other string. Tables: left-aligned
text, thin borders, fixed column widths (JupyterLab's own table style right-aligns text and
draws no borders). Low in the layout so that a report can render itself (`EvalReport`) and
`viz` can build on it."""

from __future__ import annotations

import html
from collections.abc import Sequence

TABLE_STYLE = "border-collapse:collapse;table-layout:fixed;width:100%;margin:0"
CELL_STYLE = "border:1px solid #c8c8c8;padding:4px 8px;text-align:left;vertical-align:top"
HEADER_STYLE = f"{CELL_STYLE};background:#f3f3f3;font-weight:600"
CAPTION_STYLE = "text-align:left;font-weight:600;padding:4px 0"


def escape_text(value: object) -> str:
    """`str(value)` as HTML text, safe in an element and in a quoted attribute: `&`, `<`, `>`
    and both quotes as entities. Quotes and `$` (plotly typesets `$...$` as TeX, links included,
    where MathJax is loaded) are numeric entities, the ones plotly's labels decode too, so a
    figure shows the text as it was."""
    text = html.escape(str(value), quote=False)
    return text.replace('"', "&#34;").replace("'", "&#39;").replace("$", "&#36;")


class Html(str):
    """HTML that asru_lab built, every text in it escaped. `Html(template).format(...)` escapes
    each argument except an `Html` one or a number (so that `{:.2f}` works)."""

    def format(self, *args: object, **kwargs: object) -> Html:
        return Html(super().format(*map(_part, args), **{k: _part(v) for k, v in kwargs.items()}))


def _part(value: object) -> object:
    if isinstance(value, Html) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    return escape_text(value)


def as_html(value: object) -> Html:
    """`value` itself when it is `Html`, else its text escaped."""
    return value if isinstance(value, Html) else Html(escape_text(value))


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    widths: Sequence[str] | None = None,
    caption: str | None = None,
) -> Html:
    """An HTML table in the library's style. `header`, `caption` and every cell: text, escaped
    here, or `Html` (e.g. built with `Html(...).format(...)`), inserted as is; `widths`: one
    CSS width per column (default: equal)."""
    widths = widths or [f"{100 / max(len(header), 1):.4g}%"] * len(header)
    if len(widths) != len(header):
        raise ValueError(f"{len(widths)} widths for {len(header)} columns: give one per column")
    cols = "".join(Html("<col style='width:{}'>").format(w) for w in widths)
    head = "".join(Html("<th style='{}'>{}</th>").format(HEADER_STYLE, h) for h in header)
    body = "".join(
        "<tr>"
        + "".join(Html("<td style='{}'>{}</td>").format(CELL_STYLE, as_html(c)) for c in row)
        + "</tr>"
        for row in rows
    )
    title = (
        Html("<caption style='{}'>{}</caption>").format(CAPTION_STYLE, caption) if caption else ""
    )
    return Html(
        f"<table class='asru-lab-table' style='{TABLE_STYLE}'>{title}<colgroup>{cols}</colgroup>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
