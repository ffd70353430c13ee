"""Stage 1.1's figures: separability heatmaps, the sweep and the layer cosines. What they show
of a probe's evidence (read from its file) enters a figure escaped (`escape_text`)."""

from __future__ import annotations

import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from asru_lab.table_style import escape_text
from asru_lab.viz.pages import figures_html


def separability_heatmap(evidence: dict, comparison: str = "forget_vs_retain") -> go.Figure:
    """Layer x token-position heatmap of held-out AUROC from `locate`'s evidence.

    `comparison`: "forget_vs_retain" (projection on the memorisation direction) or
    "forget_vs_unseen" (projection on the knowledge-absence direction).
    """
    sep = evidence["separability"]
    positions = sorted(sep, key=_position_order)
    z = [[sep[p][comparison][k] for p in positions] for k in range(len(evidence["layers"]))]
    title = {
        "forget_vs_retain": "Where forget and retain people are told apart (held-out AUROC)",
        "forget_vs_unseen": "Where forget and never-seen people are told apart (held-out AUROC)",
    }[comparison]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_position_label(p) for p in positions],
            y=[escape_text(f"layer {k}") for k in evidence["layers"]],
            zmin=0.5,
            zmax=1.0,
            colorscale="Viridis",
            text=[[f"{v:.3f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: AUROC %{z:.3f}<extra></extra>",
            colorbar={"title": "AUROC"},
        )
    )
    fig.update_layout(title=title, xaxis_title="token position", yaxis_title="decoder layer")
    return fig


def _position_order(position: str) -> tuple:
    """Left to right as in the prompt: the mean over it, then -k ... -2, then the last token."""
    if position == "prompt":
        return (0, 0)
    return (2, 0) if position == "last" else (1, int(position))


def _position_label(position: str) -> str:
    if position == "last":
        return "last prompt token"
    if position == "prompt":
        return "mean over prompt"
    return escape_text(f"token {position}")


def sweep_chart(evidence: dict) -> go.Figure:
    """Forget refusal and retain accuracy against steering strength, one panel per layer.

    Solid lines: forget refusal rate; dashed: retain accuracy. Colour: ungated or the gate's
    false-positive level. The recommended point is circled.
    """
    rows = evidence["sweep"]
    layers = sorted({r["layer"] for r in rows})
    positions = sorted({r["positions"] for r in rows})
    fig = make_subplots(
        rows=len(positions),
        cols=len(layers),
        shared_yaxes=True,
        subplot_titles=[escape_text(f"layer {k}, steer {p}") for p in positions for k in layers],
    )
    variants = sorted({r["gate_max_fpr"] for r in rows}, key=lambda v: (v is not None, v or 0))
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]
    colours = {v: palette[i % len(palette)] for i, v in enumerate(variants)}
    rec = evidence["recommended"]
    for pi, pos in enumerate(positions):
        for li, layer in enumerate(layers):
            for variant in variants:
                pts = sorted(
                    (
                        r
                        for r in rows
                        if r["layer"] == layer
                        and r["positions"] == pos
                        and r["gate_max_fpr"] == variant
                    ),
                    key=lambda r: r["alpha"],
                )
                name = "ungated" if variant is None else f"gate ≤{variant:.0%} FPR"
                first = pi == 0 and li == 0
                for metric, dash in (("forget_refusal", "solid"), ("retain_acc", "dash")):
                    fig.add_trace(
                        go.Scatter(
                            x=[r["alpha"] for r in pts],
                            y=[r[metric] for r in pts],
                            mode="lines+markers",
                            line={"color": colours[variant], "dash": dash},
                            name=f"{name}: {metric.replace('_', ' ')}",
                            legendgroup=f"{variant}{metric}",
                            showlegend=first,
                        ),
                        row=pi + 1,
                        col=li + 1,
                    )
            if rec["layer"] == layer and rec["positions"] == pos:
                best = next(
                    r
                    for r in rows
                    if all(r[k] == rec[k] for k in ("layer", "alpha", "positions", "gated"))
                    and r["gate_max_fpr"] == rec["gate_max_fpr"]
                )
                fig.add_trace(
                    go.Scatter(
                        x=[best["alpha"]],
                        y=[best["forget_refusal"]],
                        mode="markers",
                        marker={"size": 16, "symbol": "circle-open", "color": "black"},
                        name="recommended",
                    ),
                    row=pi + 1,
                    col=li + 1,
                )
    fig.update_xaxes(title_text="alpha")
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_layout(
        title="Steering sweep: forget refusal (solid) and retain accuracy (dashed)",
        height=320 * len(positions),
    )
    return fig


def layer_cosine_heatmap(evidence: dict) -> go.Figure:
    """Cosine similarity of the knowledge-absence direction between layers."""
    labels = [escape_text(f"layer {k}") for k in evidence["layers"]]
    fig = go.Figure(
        go.Heatmap(z=evidence["cosines"], x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu")
    )
    fig.update_layout(title="Knowledge-absence direction: cosine between layers")
    return fig


def write_locate_page(evidence: dict, path: str | os.PathLike, model_name: str) -> Path:
    """`locate.html`: the separability heatmaps, the sweep and the layer cosines, one page
    titled with `model_name` (text, escaped)."""
    figures = [
        separability_heatmap(evidence),
        separability_heatmap(evidence, "forget_vs_unseen"),
        sweep_chart(evidence),
        layer_cosine_heatmap(evidence),
    ]
    return figures_html(figures, path, f"asru_lab locate: {model_name}")
