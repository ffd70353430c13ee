"""Training figures: stage 1.2's loss curves and projections, stage 2's reward dashboard
(written after each logging step, or live in a notebook)."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from transformers import TrainerCallback

from asru_lab.artifacts import write_text_atomic


def redirect_loss_chart(sgd: dict, closed_form: dict | None = None) -> go.Figure:
    """Per-step SGD losses of `redirect` records (forget step, retain step) on a log scale,
    with the objective before training, after SGD and, if given, the closed form's optimum."""
    fig = go.Figure()
    steps = list(range(1, len(sgd["losses"]["forget"]) + 1))
    fig.add_scatter(x=steps, y=sgd["losses"]["forget"], name="forget step loss", mode="lines")
    if sgd["losses"]["retain"]:
        fig.add_scatter(
            x=steps, y=sgd["losses"]["retain"], name="retain step loss (x alpha)", mode="lines"
        )
    levels = [
        ("objective before", sgd["objective"]["initial"], "grey"),
        ("SGD objective after", sgd["objective"]["final"], "#d62728"),
    ]
    if closed_form is not None:
        levels.append(("closed-form optimum", closed_form["objective"]["final"], "#2ca02c"))
    for label, value, colour in levels:
        fig.add_hline(
            y=value,
            line={"dash": "dash", "color": colour},
            annotation_text=f"{label}: {value:.4g}",
            annotation_position="top left",
        )
    fig.update_layout(
        title="Stage 1.2: SGD losses per step and the objective (full data)",
        xaxis_title="step (one forget batch + one retain batch)",
        yaxis_title="loss",
        yaxis_type="log",
        height=420,
    )
    return fig


def projection_histograms(projections: dict[str, dict[str, Sequence[float]]]) -> go.Figure:
    """One panel per model ("before", "after", ...): histograms of each set's projections on
    the probe's unit direction (`SteeringProbe.project`)."""
    models = list(projections)
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, shared_yaxes=True)
    colours = {"forget": "#d62728", "retain": "#1f77b4", "test": "#ff7f0e", "unseen": "#2ca02c"}
    for col, model in enumerate(models, start=1):
        for name, values in projections[model].items():
            fig.add_histogram(
                x=list(values),
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                marker_color=colours.get(name),
                opacity=0.6,
                nbinsx=40,
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="projection on v / |v| (last prompt token)", row=1, col=col)
    fig.update_layout(barmode="overlay", height=380, title="Activations along v, by set")
    return fig


REWARD_PANELS = ("reward", "KL to the starting model", "completion length", "held-out rates")


def _reward_traces(rewards: Sequence[str]) -> list[tuple[str, str, int]]:
    """(metrics key, legend name, panel) of every trace the reward figure shows."""
    traces = [("reward", "total reward", 1)]
    traces += [(f"rewards/{name}/mean", name, 1) for name in rewards]
    traces += [("kl", "KL", 2), ("completions/mean_length", "mean length", 3)]
    traces += [
        ("probe/forget_refusal", "forget refusal", 4),
        ("probe/forget_leak", "forget leak", 4),
        ("probe/retain_recall", "retain recall", 4),
    ]
    return traces


def reward_figure(history: Sequence[dict], rewards: Sequence[str]) -> go.Figure:
    """Stage 2 curves from the metrics rows (`metrics.jsonl`): total reward and each reward,
    KL, mean completion length and the held-out forget refusal / leak and retain recall."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=REWARD_PANELS)
    for key, name, panel in _reward_traces(rewards):
        rows = [r for r in history if isinstance(r.get(key), int | float)]
        fig.add_scatter(
            x=[r["step"] for r in rows],
            y=[r[key] for r in rows],
            name=name,
            mode="lines+markers",
            row=(panel - 1) // 2 + 1,
            col=(panel - 1) % 2 + 1,
        )
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=560, title="Stage 2 (GRPO): rewards while training")
    return fig


def samples_table_html(rows: Sequence[dict]) -> str:
    """The latest sampled completions, forget and retain side by side, as an HTML table."""
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("forget", "retain")}
    height = max((len(v) for v in by_split.values()), default=0)

    def cell(row: dict | None) -> str:
        if row is None:
            return "<td></td>"
        return (
            f"<td><b>{html.escape(row['question'])}</b><br>{html.escape(row['completion'])}"
            f"<br><i>reward {row['reward']:.2f}</i></td>"
        )

    body = "".join(
        "<tr>" + "".join(cell(v[k] if k < len(v) else None) for v in by_split.values()) + "</tr>"
        for k in range(height)
    )
    return (
        "<table border='1' style='border-collapse:collapse;width:100%'>"
        "<tr><th>forget (should refuse, in context)</th><th>retain (should answer)</th></tr>"
        f"{body}</table>"
    )


def write_reward_dashboard(
    history: Sequence[dict], rewards: Sequence[str], path: str | os.PathLike
) -> Path:
    """`dashboard.html`: the reward figure and the latest samples, self-contained, atomic."""
    latest = next((r["samples"] for r in reversed(history) if r.get("samples")), [])
    figure = reward_figure(history, rewards).to_html(full_html=False, include_plotlyjs=True)
    page = "<!doctype html><html><head><meta charset='utf-8'><title>asru_lab stage 2</title>"
    page += f"</head><body>{figure}<h2>Latest samples</h2>{samples_table_html(latest)}"
    return write_text_atomic(path, page + "</body></html>")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a `metrics.jsonl` (none if it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LiveRewardDashboard(TrainerCallback):
    """The stage 2 dashboard, live in a notebook: `display(dashboard.widget)`, then pass the
    dashboard in `reinforce(..., callbacks=[dashboard])`.

    It redraws the reward figure (a plotly `FigureWidget`) and the latest samples table from
    the run's `metrics.jsonl` (written by the run's own metrics callback) at every log step
    and held-out measurement. Only the main process draws.
    """

    def __init__(self, rewards: Sequence[str], metrics_path: str | os.PathLike) -> None:
        import ipywidgets as w

        self.rewards = tuple(rewards)
        self.metrics_path = Path(metrics_path)
        self.figure = go.FigureWidget(reward_figure([], self.rewards))
        self.table = w.HTML(samples_table_html([]))
        self.widget = w.VBox([self.figure, self.table])
        self.redraws = 0

    def refresh(self) -> None:
        rows = read_metrics(self.metrics_path)
        fresh = reward_figure(rows, self.rewards)
        with self.figure.batch_update():
            for live, new in zip(self.figure.data, fresh.data, strict=True):
                live.x, live.y = new.x, new.y
        latest = next((r["samples"] for r in reversed(rows) if r.get("samples")), [])
        self.table.value = samples_table_html(latest)
        self.redraws += 1

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.refresh()

    def on_step_end(self, args, state, control, **kwargs):
        # the run's metrics callback (called first) may just have added held-out rates
        if state.is_world_process_zero:
            rows = read_metrics(self.metrics_path)
            last = rows[-1] if rows else {}
            if last.get("step") == state.global_step and "probe/forget_leak" in last:
                self.refresh()
