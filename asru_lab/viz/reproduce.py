"""`reproduce`'s figures: the trade-off scatter, answer categories, layer sweep and reward
curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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


def tradeoff_scatter(rows: Sequence[dict]) -> go.Figure:
    """Unlearning effectiveness (x) against retain MCQ accuracy (y), one marker per method and
    forget ratio: the best methods sit top right."""
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "triangle-up", "x"]
    ratios = sorted({r["forget_ratio"] for r in rows})
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        fig.add_scatter(
            x=[r["ue"] for r in mine],
            y=[r.get("retain.mcq_acc") for r in mine],
            mode="markers+text",
            text=[f"{r['forget_ratio']:g}" for r in mine],
            textposition="top center",
            marker={
                "size": 12,
                "symbol": [symbols[ratios.index(r["forget_ratio"]) % 5] for r in mine],
            },
            name=METHOD_LABELS.get(method, method),
            customdata=[[r.get("forget.leak_rate"), r["gq"]] for r in mine],
            hovertemplate="UE %{x:.3f}<br>retain MCQ %{y:.3f}<br>forget leak %{customdata[0]:.3f}"
            "<br>GQ %{customdata[1]:.2f}",
        )
    fig.update_layout(
        title="Forget–retain trade-off (label: forget ratio)",
        xaxis_title="unlearning effectiveness UE (1 = forgotten)",
        yaxis_title="retain multiple-choice accuracy",
        width=900,
        height=560,
    )
    return fig


def quality_bars(rows: Sequence[dict]) -> go.Figure:
    """What the forget answers are, per method: stacked shares of each judge category, one
    panel per forget ratio."""
    ratios = sorted({r["forget_ratio"] for r in rows})
    fig = make_subplots(
        rows=1, cols=len(ratios), subplot_titles=[f"forget ratio {x:g}" for x in ratios]
    )
    for col, ratio in enumerate(ratios, start=1):
        mine = [r for r in rows if r["forget_ratio"] == ratio]
        labels = [METHOD_LABELS.get(r["method"], r["method"]) for r in mine]
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
