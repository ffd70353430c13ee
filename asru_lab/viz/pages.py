"""Writing figures: one self-contained HTML page of several figures (plotly.js beside it,
not inlined), and a figure as HTML + PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from asru_lab.artifacts import record_output, write_text_atomic


def figures_html(
    figures: Sequence[go.Figure],
    path: str | os.PathLike,
    title: str,
    *,
    plotlyjs: str = "inline",
) -> Path:
    """One HTML page with every figure, written atomically; it works offline. `plotlyjs`:
    "inline" (one self-contained file) or "directory" (a shared `plotly.min.js` beside it)."""
    path = Path(path)
    if plotlyjs == "directory":
        _plotlyjs_beside(path)
        head, first = '<script src="plotly.min.js"></script>', False
    else:
        head, first = "", True
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=first and i == 0)
        for i, fig in enumerate(figures)
    ]
    body = "\n".join(f"<div>{p}</div>" for p in parts)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{head}"
    page += f"</head><body><h1>{title}</h1>{body}</body></html>"
    return write_text_atomic(path, page)


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
    html_page = fig.to_html(include_plotlyjs="directory")
    written = [write_text_atomic(stem.with_suffix(".html"), html_page).name, "plotly.min.js"]
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
