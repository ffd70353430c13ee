"""Causal tracing's heatmaps: recovered fraction (or probability) per layer and token group.
People's names, the target token and the split enter a figure escaped (`escape_text`)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from asru_lab.table_style import escape_text

COMPONENT_TITLES = {"residual": "residual stream", "attention": "attention output", "mlp": "MLP"}
GROUP_LABELS = {
    "image": "image tokens",
    "name": "name tokens",
    "question": "question",
    "template": "chat template",
    "last_prompt": "last prompt token",
    "answer_prefix": "answer prefix",
    "last": "last token",
}


def _causal_z(trace, person: str | None, value: str) -> list[list[list[float | None]]]:
    return [trace.matrix(c, person, value) for c in trace.components]


def _causal_text(grid: list[list[float | None]]) -> list[list[str]]:
    return [["–" if v is None else f"{v:.2f}" for v in row] for row in grid]


def _causal_title(trace, person: str | None, value: str) -> str:
    what = "recovered fraction" if value == "fraction" else "p(fact token), restored"
    if person is None:
        n = len(trace.effective()) if value == "fraction" else len(trace.people)
        return escape_text(f"Causal tracing: {what}, mean over {n} {trace.config['split']} people")
    p = trace.person(person)
    return escape_text(
        f"Causal tracing: {what}, {p.name} ({p.person_id}): {p.target_token.strip()!r} "
        f"p clean {p.p_clean:.3f}, corrupted {p.p_corrupt:.3f}"
    )


def causal_heatmap(trace, person: str | None = None, value: str = "fraction") -> go.Figure:
    """Layer x position-group heatmaps of a `causal.CausalTrace`, one panel per component
    (residual / attention / MLP). `person` None shows the mean over the traced people; the
    figure's dropdown switches between the mean and each person (in a notebook and in HTML).
    `value`: "fraction" (recovered fraction) or "probability" (p of the fact's first token)."""
    components = list(trace.components)
    fig = make_subplots(
        rows=1,
        cols=len(components),
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[COMPONENT_TITLES[c] for c in components],
    )
    x = [GROUP_LABELS[g] for g in trace.groups]
    y = [escape_text(f"layer {k}") for k in trace.layers]
    for col, grid in enumerate(_causal_z(trace, person, value), start=1):
        fig.add_trace(
            go.Heatmap(
                z=grid,
                x=x,
                y=y,
                zmin=0.0,
                zmax=1.0,
                colorscale="Purples",
                showscale=col == len(components),
                colorbar={"title": "recovered" if value == "fraction" else "p"},
                text=_causal_text(grid),
                texttemplate="%{text}",
                hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    choices = [(None, f"mean ({trace.config['split']})")]
    choices += [(p.person_id, f"{p.name} ({p.person_id})") for p in trace.people]
    buttons = []
    for pid, label in choices:
        grids = _causal_z(trace, pid, value)
        buttons.append(
            {
                "label": escape_text(label),
                "method": "update",
                "args": [
                    {"z": grids, "text": [_causal_text(g) for g in grids]},
                    {"title.text": _causal_title(trace, pid, value)},
                ],
            }
        )
    start = next(i for i, (pid, _) in enumerate(choices) if pid == person)
    top, bottom = 120, 60
    height = top + bottom + 10 + 46 * len(trace.layers)
    fig.update_layout(
        title=_causal_title(trace, person, value),
        updatemenus=[
            {
                "buttons": buttons,
                "active": start,
                "x": 1.0,
                "xanchor": "right",
                "y": 1 + (top - 10) / (height - top - bottom),  # near the top edge, in
                "yanchor": "top",  # the plot area's units: above the panel titles
            }
        ],
        height=height,
        width=400 * len(components),
        margin={"t": top, "b": bottom, "l": 70, "r": 20},
    )
    fig.update_xaxes(tickangle=-30)
    return fig
