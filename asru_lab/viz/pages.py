"""Writing pages: `write_page`, the one writer of every HTML page asru_lab saves (its text
escaped), one page of several figures (plotly.js beside it, or inlined), and a figure as HTML +
PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from asru_lab.artifacts import record_output, write_text_atomic
from asru_lab.table_style import Html, as_html

PLOTLYJS_BESIDE = Html('<script src="plotly.min.js"></script>')
FILL_WINDOW = Html("<style>html, body {height: 100%;}</style>")  # a lone figure fills the page


def write_page(
    path: str | os.PathLike,
    title: str,
    parts: Sequence[object],
    *,
    head: Html | None = None,
    heading: bool = True,
) -> Path:
    """Write an HTML page atomically: `title` in <title> and, with `heading`, an <h1>; then
    `parts` in order. `title` and every part but an `Html` one are text, escaped here;
    `head`: our own tags for <head> (e.g. `PLOTLYJS_BESIDE`). Returns the path."""
    page = Html(
        "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{head}"
        "</head><body>{heading}{body}</body></html>"
    ).format(
        title=title,
        head=head or Html(""),
        heading=Html("<h1>{}</h1>").format(title) if heading else Html(""),
        body=Html("\n".join(as_html(part) for part in parts)),
    )
    return write_text_atomic(path, page)


def figure_html(fig: go.Figure, include_plotlyjs: bool | str = False) -> Html:
    """A figure's <div> and plotly's <script> that draws it (plotly writes each `<` in its JSON
    as an escape, so no text can close the script). Text inside the figure is escaped where the
    figure is built (`escape_text`), since plotly reads a few HTML tags in labels."""
    return Html(fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs))


def figures_html(
    figures: Sequence[go.Figure],
    path: str | os.PathLike,
    title: str,
    *,
    plotlyjs: str = "inline",
) -> Path:
    """One HTML page with every figure, written atomically; it works offline. `plotlyjs`:
    "inline" (one self-contained file) or "directory" (a shared `plotly.min.js` beside it).
    `title`: text (escaped)."""
    path = Path(path)
    if plotlyjs == "directory":
        _plotlyjs_beside(path)
        head, first = PLOTLYJS_BESIDE, False
    else:
        head, first = None, True
    parts = [
        Html("<div>{}</div>").format(figure_html(fig, first and i == 0))
        for i, fig in enumerate(figures)
    ]
    return write_page(path, title, parts, head=head)


def _plotlyjs_beside(path: Path) -> None:
    """Write plotly.js once next to `path` (pages there load it instead of inlining 4.6 MB)."""
    target = path.parent / "plotly.min.js"
    if not target.is_file():
        from plotly.offline import get_plotlyjs

        write_text_atomic(target, get_plotlyjs())


def save_figure(fig: go.Figure, stem: str | os.PathLike, *, png: bool = True) -> list[str]:
    """Write `stem.html` (offline, with a shared `plotly.min.js` beside it) and `stem.png`
    (kaleido with the system Chromium); returns the file names written. Without a usable
    Chromium the PNG is skipped with a warning naming the fix — the HTML is always written."""
    stem = Path(stem)
    _plotlyjs_beside(stem)
    parts = [figure_html(fig, "directory")]
    page = write_page(stem.with_suffix(".html"), stem.name, parts, head=FILL_WINDOW, heading=False)
    written = [page.name, "plotly.min.js"]
    if not png:
        return written
    target = stem.with_suffix(".png")
    tmp = target.with_name(f".{target.name}.tmp.png")
    try:
        fig.write_image(tmp, width=fig.layout.width or 900, height=fig.layout.height or 520)
        os.replace(tmp, target)
        written.append(record_output(target).name)
    except Exception as exc:  # kaleido raises several types when no browser can start
        Path(tmp).unlink(missing_ok=True)
        import warnings

        warnings.warn(
            f"{target.name} not written ({type(exc).__name__}: {str(exc)[:200]}); PNG export "
            "needs kaleido and a Chromium (Debian: apt-get install chromium). The HTML is there.",
            stacklevel=2,
        )
    return written
