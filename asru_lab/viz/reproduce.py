"""`reproduce`'s figures: the trade-off scatter, answer categories, layer sweep and reward
curves. Method names (read back from a results table) enter a figure escaped (`escape_text`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from asru_lab.evaluation.headline import retain_accuracy as headline_retain_accuracy
from asru_lab.table_style import escape_text
from asru_lab.viz.locate import separability_heatmap
from asru_lab.viz.pages import figures_html, save_figure
from asru_lab.viz.training import reward_figure

METHOD_LABELS = {
    "vanilla": "vanilla",
    "ga": "GA",
    "grad_diff": "GradDiff",
    "kl_min": "KL-Min",
    "npo": "NPO",
    "refusal_sft": "refusal SFT",
    "steer_only": "steer only",
    "asru_stage1": "ASRU stage 1",
    "asru": "ASRU",
    "asru_adversarial": "ASRU, adversarial stage 2",
    "mmunlearner": "MMUnlearner",
    "gated_steer": "gated steer",
    "oracle": "retrain oracle",
}
CATEGORY_COLORS = {
    "leak": "#d62728",
    "hallucination": "#ff7f0e",
    "degenerate": "#7f7f7f",
    "answer": "#bcbd22",
    "rigid_refusal": "#9ecae1",
    "contextual_refusal": "#2ca02c",
}


def retain_accuracy(row: dict) -> float | None:
    """A table row's retain accuracy (`evaluation.headline.retain_accuracy`, as the tuning rule
    measures it): the retain side of the trade-off."""
    return headline_retain_accuracy({k: row.get(f"retain.{k}") for k in ("leak_rate", "mcq_acc")})


def _padded(values: Sequence[float], low: float, high: float) -> list[float]:
    """An axis range that holds `values` and [low, high], with a margin of 4 %."""
    lo, hi = min([*values, low]), max([*values, high])
    margin = 0.04 * max(hi - lo, 1e-6)
    return [lo - margin, hi + margin]


def tradeoff_scatter(rows: Sequence[dict], title: str = "Forget–retain trade-off") -> go.Figure:
    """Unlearning effectiveness (x) against retain accuracy (y: the mean of retain recall and
    retain MCQ accuracy, those the rows have), one marker per method and forget ratio (its
    symbol): the best methods sit top right. Methods whose markers coincide share one label, so
    no label hides another. `title` is escaped."""
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "triangle-up", "x"]
    ratios = sorted({r["forget_ratio"] for r in rows})
    shown = [r for r in rows if r.get("ue") is not None and retain_accuracy(r) is not None]
    palette = plotly.colors.qualitative.Dark24  # one colour per method, none repeated
    for k, method in enumerate(dict.fromkeys(r["method"] for r in shown)):
        mine = [r for r in shown if r["method"] == method]
        fig.add_scatter(
            x=[r["ue"] for r in mine],
            y=[retain_accuracy(r) for r in mine],
            mode="markers",
            marker={
                "size": 12,
                "symbol": [symbols[ratios.index(r["forget_ratio"]) % 5] for r in mine],
                "line": {"width": 1, "color": "white"},
                "color": palette[k % len(palette)],
            },
            name=escape_text(METHOD_LABELS.get(method, method)),
            customdata=[[r["forget_ratio"], r.get("forget.leak_rate"), r["gq"]] for r in mine],
            hovertemplate="forget ratio %{customdata[0]}<br>UE %{x:.3f}<br>retain accuracy "
            "%{y:.3f}<br>forget leak %{customdata[1]:.3f}<br>GQ %{customdata[2]:.2f}",
        )
    xs = [r["ue"] for r in shown]
    ys = [retain_accuracy(r) for r in shown]
    x_range, y_range = _padded(xs, 0.0, 1.0), _padded(ys, min(ys, default=1.0), 1.0)
    labels = _placed_labels(shown, x_range, y_range, several=len(ratios) > 1)
    for text, x, y, shift, side in labels:
        fig.add_annotation(
            x=x, y=y, text=text, showarrow=False, xanchor=side, yanchor="top",
            xshift=9 if side == "left" else -9, yshift=7 - shift, font={"size": 11},
            align="left", bgcolor="rgba(255,255,255,0.7)",
        )  # fmt: skip
    title = escape_text(title)
    if len(ratios) > 1:
        title += (
            " (symbol: forget ratio "
            + ", ".join(f"{symbols[k % 5]} {x:g}" for k, x in enumerate(ratios))
            + ")"
        )
    fig.update_layout(
        title=title,
        xaxis={"title": "unlearning effectiveness UE (1 = forgotten)", "range": x_range},
        yaxis={"title": _retain_title(shown), "range": y_range},
        width=900,
        height=560,
    )
    return fig


def _retain_title(rows: Sequence[dict]) -> str:
    """The y axis's name: what `retain_accuracy` averaged in these rows (a protocol without
    retain recall, such as mllmu, leaves MCQ alone)."""
    recall = any(r.get("retain.leak_rate") is not None for r in rows)
    mcq = any(r.get("retain.mcq_acc") is not None for r in rows)
    if recall and mcq:
        return "retain accuracy (mean of recall and MCQ)"
    return "retain recall" if recall else "retain MCQ accuracy"


PLOT_PX = (650, 380)  # the plotting area of the 900 x 560 figure, in pixels (x, y)
LINE_PX, CHAR_PX = 15, 6.5  # one label line's height and a character's width at font size 11


def _placed_labels(rows, x_range, y_range, *, several: bool, near_px: float = 14.0):
    """(text, x, y, downward pixel shift, side of the marker) per label. Markers closer than
    `near_px` to a group's first marker share its label ("GA, NPO" or, over several ratios,
    "GA (0.05, 0.1)"); a label that would cover one placed before it moves down below it, and
    one that would leave the plot on the right goes to the marker's left."""
    px = PLOT_PX[0] / (x_range[1] - x_range[0])
    py = PLOT_PX[1] / (y_range[1] - y_range[0])
    groups: list[list[dict]] = []
    for row in rows:
        for group in groups:
            first = group[0]
            dx = (row["ue"] - first["ue"]) * px
            dy = (retain_accuracy(row) - retain_accuracy(first)) * py
            if abs(dx) < near_px and abs(dy) < near_px:
                group.append(row)
                break
        else:
            groups.append([row])
    # boxes not to cover (left, right, top, bottom, in pixels): every marker, then each label
    placed = [
        ((r["ue"] - x_range[0]) * px - 7, (r["ue"] - x_range[0]) * px + 7,
         (y_range[1] - retain_accuracy(r)) * py - 7, (y_range[1] - retain_accuracy(r)) * py + 7)
        for r in rows
    ]  # fmt: skip
    for group in sorted(groups, key=lambda g: -retain_accuracy(g[0])):
        ratios: dict[str, list[str]] = {}
        for r in group:
            ratios.setdefault(METHOD_LABELS.get(r["method"], r["method"]), []).append(
                f"{r['forget_ratio']:g}"
            )
        names = [f"{n} ({', '.join(rs)})" if several else n for n, rs in ratios.items()]
        lines = [", ".join(names[k : k + 3]) for k in range(0, len(names), 3)]
        x, y = group[0]["ue"], retain_accuracy(group[0])
        width = CHAR_PX * max(map(len, lines))
        left = (x - x_range[0]) * px + 9
        side = "left" if left + width <= PLOT_PX[0] else "right"  # stay inside the plot
        if side == "right":
            left -= width + 18
        right = left + width
        top = (y_range[1] - y) * py - 7  # pixels from the top of the plot, downwards
        shift = 0.0
        mine = {id(r) for r in group}
        others = [b for r, b in zip(rows, placed, strict=False) if id(r) not in mine]
        for box in sorted(others + placed[len(rows) :], key=lambda b: b[2]):
            height = LINE_PX * len(lines)
            overlaps = left < box[1] and box[0] < right
            if overlaps and top + shift < box[3] and box[2] < top + shift + height:
                shift = box[3] - top + 2
        placed.append((left, right, top + shift, top + shift + LINE_PX * len(lines)))
        yield "<br>".join(escape_text(line) for line in lines), x, y, shift, side


def quality_bars(rows: Sequence[dict]) -> go.Figure:
    """What the forget answers are, per method: stacked shares of each judge category, one
    panel per forget ratio."""
    ratios = sorted({r["forget_ratio"] for r in rows})
    fig = make_subplots(
        rows=1, cols=len(ratios), subplot_titles=[f"forget ratio {x:g}" for x in ratios]
    )
    for col, ratio in enumerate(ratios, start=1):
        mine = [r for r in rows if r["forget_ratio"] == ratio]
        labels = [escape_text(METHOD_LABELS.get(r["method"], r["method"])) for r in mine]
        for category, color in CATEGORY_COLORS.items():
            fig.add_bar(
                x=labels,
                y=[r.get(f"forget.quality.categories.{category}", 0) for r in mine],
                name=category.replace("_", " "),
                marker_color=color,
                legendgroup=category,
                showlegend=col == 1,
                row=1,
                col=col,
            )
    fig.update_layout(
        barmode="stack",
        title="Forget-set answers by category (closed-world judge)",
        yaxis_title="share of forget answers",
        width=max(900, 420 * len(ratios)),
        height=520,
    )
    return fig


def write_reproduce_figures(
    rows: Sequence[dict],
    probes: dict[float, dict],
    curves: dict[float, list[dict]],
    out_dir: str | os.PathLike,
    *,
    rewards: Sequence[str] = (),
    png: bool = True,
) -> list[str]:
    """The `reproduce` figures (HTML, and PNG unless `png=False`) and `figures.html` with all
    of them; returns the file names. The layer sweep and reward curves are drawn for the middle
    forget ratio."""
    out = Path(out_dir)
    figures = {"tradeoff": tradeoff_scatter(rows), "quality_categories": quality_bars(rows)}
    ratios = sorted({*probes, *curves})
    middle = ratios[len(ratios) // 2] if ratios else None
    if probes.get(middle):
        fig = separability_heatmap(probes[middle], "forget_vs_unseen")
        fig.update_layout(title=f"Layer sweep: forget vs never-seen AUROC (ratio {middle:g})")
        figures["layer_sweep"] = fig
    if curves.get(middle):
        fig = reward_figure(curves[middle], rewards)
        fig.update_layout(title=f"Stage 2 (GRPO) rewards, forget ratio {middle:g}", width=900)
        figures["reward_curves"] = fig
    written = []
    for stem, fig in figures.items():
        written += save_figure(fig, out / stem, png=png)
    figures_html(
        list(figures.values()), out / "figures.html", "asru-lab reproduce", plotlyjs="directory"
    )
    return [*dict.fromkeys(written), "figures.html"]


def write_paper_figures(
    rows: Sequence[dict], out_dir: str | os.PathLike, protocol: str, *, png: bool = True
) -> list[str]:
    """The paper layout's figures: one trade-off scatter per forget ratio (`tradeoff_ratio0_1`
    for 0.1: HTML and PNG unless `png=False`; its title names the ratio and the protocol) and
    `figures.html` with all of them; returns the file names."""
    out = Path(out_dir)
    figures = {}
    for ratio in sorted({r["forget_ratio"] for r in rows}):
        mine = [r for r in rows if r["forget_ratio"] == ratio]
        title = f"Forget–retain trade-off, forget ratio {ratio:g} (protocol {protocol})"
        stem = f"tradeoff_ratio{ratio:g}".replace(".", "_")  # a dot would start a suffix
        figures[stem] = tradeoff_scatter(mine, title)
    written = []
    for stem, fig in figures.items():
        written += save_figure(fig, out / stem, png=png)
    figures_html(
        list(figures.values()),
        out / "figures.html",
        f"asru-lab reproduce: paper layout, protocol {protocol}",
        plotlyjs="directory",
    )
    return [*dict.fromkeys(written), "figures.html"]
