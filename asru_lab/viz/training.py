"""Training figures: stage 1.2's loss curves and projections, stage 2's reward dashboard
(written after each logging step, or live in a notebook)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from transformers import TrainerCallback

from asru_lab.table_style import Html, escape_text, html_table
from asru_lab.viz.pages import figure_html, write_page


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
    titles = [escape_text(m) for m in models]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=titles, shared_yaxes=True)
    colours = {"forget": "#d62728", "retain": "#1f77b4", "test": "#ff7f0e", "unseen": "#2ca02c"}
    for col, model in enumerate(models, start=1):
        for name, values in projections[model].items():
            fig.add_histogram(
                x=list(values),
                name=escape_text(name),
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
PANEL_Y_TITLES = ("mean reward", "KL", "tokens per answer", "share of questions")
TITLE = "Stage 2 (GRPO): rewards while training"
WAITING = "waiting for the first step…"
SAMPLE_ROWS = 4  # per split: a fixed height, so that what is below the table never moves
# a fixed height, and a line height of its own (ipywidgets' HTML sets 28 px lines)
SAMPLE_CELL_STYLE = (
    "height:6.9em;line-height:1.35;overflow:hidden;overflow-wrap:anywhere"  # five lines
)
# the dashboard's status line, above the figure (`LiveRewardDashboard.show`)
STATUS_STYLE = "color:#555;font-size:90%"
STARTING = (
    f"<div style='{STATUS_STYLE}'>Stage 2 (GRPO) is starting: the trainer is being built and "
    "the held-out rates measured before the first step; the figure below fills in as it trains."
    "</div>"
)
TRAINING = f"<div style='{STATUS_STYLE}'>Stage 2 (GRPO): training, {{steps}} steps planned.</div>"
FINISHED = (
    f"<div style='{STATUS_STYLE}'>Stage 2 (GRPO): {{steps}} steps trained. The figure and the "
    "samples below are a static copy of the live dashboard (they stay in a saved notebook).</div>"
)
SAMPLES_CAPTION = (
    "The newest sampled answers of each kind, newest first, with the step and reward of each. "
    "GRPO samples several answers to every prompt, so neighbouring rows are often answers to "
    "the same question: how they differ is what GRPO learns from."
)
SAMPLE_COLUMNS = {
    "forget": "forget (should refuse, in context)",
    "retain": "retain (should answer)",
}


def _reward_traces(rewards: Sequence[str]) -> list[tuple[str, str, int]]:
    """(metrics key, legend name, panel) of every trace the reward figure shows; the total
    only with several rewards (with one it is that reward's curve again)."""
    traces = [("reward", "total reward", 1)] if len(rewards) > 1 else []
    traces += [(f"rewards/{name}/mean", escape_text(name), 1) for name in rewards]
    traces += [("kl", "KL", 2), ("completions/mean_length", "mean length", 3)]
    traces += [
        ("probe/forget_refusal", "forget refusal", 4),
        ("probe/forget_leak", "forget leak", 4),
        ("probe/retain_recall", "retain recall", 4),
    ]
    return traces


def last_step(history: Sequence[dict], steps: int | None = None) -> int:
    """Where the step axis ends: the planned `steps`, or the last logged step if later."""
    return max([steps or 0, *(int(r.get("step", 0)) for r in history)])


def step_axis(last: int) -> dict:
    """Layout of a step axis from 0 (before training: the held-out rates' baseline) to `last`:
    whole-step ticks, ten at most."""
    last = max(int(last), 1)
    nice = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
    dtick = next((d for d in nice if last / d <= 10), math.ceil(last / 10))
    return {"range": [-0.5, last + 0.5], "tick0": 0, "dtick": dtick, "tickformat": "d"}


def reward_figure(
    history: Sequence[dict], rewards: Sequence[str], steps: int | None = None
) -> go.Figure:
    """Stage 2 curves from the metrics rows (`metrics.jsonl`): each reward (and their total
    when there are several), KL, mean completion length and the held-out forget refusal /
    leak and retain recall (from step 0, before training). Every panel's x axis runs over the
    same steps: 0 to `steps` (the run's planned steps) or to the last logged step. Before any
    row the title says so."""
    fig = make_subplots(
        rows=2, cols=2, subplot_titles=REWARD_PANELS, horizontal_spacing=0.08, vertical_spacing=0.16
    )
    for key, name, panel in _reward_traces(rewards):
        rows = [r for r in history if isinstance(r.get(key), int | float)]
        fig.add_scatter(
            x=[r["step"] for r in rows],
            y=[r[key] for r in rows],
            name=name,
            mode="lines+markers",
            hovertemplate=f"{name}: %{{y:.3f}} at step %{{x}}<extra></extra>",
            row=(panel - 1) // 2 + 1,
            col=(panel - 1) % 2 + 1,
        )
    fig.update_xaxes(title_text="step", **step_axis(last_step(history, steps)))
    for panel, title in enumerate(PANEL_Y_TITLES):
        fig.update_yaxes(title_text=title, row=panel // 2 + 1, col=panel % 2 + 1)
    fig.update_yaxes(range=[-0.05, 1.05], row=2, col=2)  # rates: the whole of [0, 1]
    fig.update_layout(
        height=600,
        autosize=True,  # the output's width, not plotly's 700 px
        margin={"l": 70, "r": 20, "t": 90, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 0},
        title={"text": TITLE if history else f"{TITLE} — {WAITING}", "y": 0.98},
    )
    return fig


def latest_samples(history: Sequence[dict]) -> list[dict]:
    """The sampled completions of the last metrics row that has any."""
    return next((r["samples"] for r in reversed(history) if r.get("samples")), [])


def _sample_cell(row: dict | None, empty: str) -> Html:
    if row is None:
        return Html("<div style='{};color:#888'><i>{}</i></div>").format(SAMPLE_CELL_STYLE, empty)
    step = f"step {row['step']} · " if "step" in row else ""
    lines = row["question"].splitlines() or [""]
    question = lines[0] + (" (multiple choice)" if len(lines) > 1 else "")  # options: no room
    return Html(
        "<div style='{}'><span style='color:#666'>{}reward {:.2f}</span><br><b>{}</b><br>{}</div>"
    ).format(SAMPLE_CELL_STYLE, step, row["reward"], question, row["completion"])


def samples_table_html(rows: Sequence[dict], per_column: int = SAMPLE_ROWS) -> Html:
    """The most recent sampled completions, forget and retain side by side: the `per_column`
    newest of each split (newest first), each with its step, reward and question. Places
    without a sample say why, so the table keeps its size from the first draw to the last."""
    by_split = {s: [r for r in rows if r["split"] == s][-per_column:][::-1] for s in SAMPLE_COLUMNS}
    cells = []
    for k in range(per_column):
        line = []
        for split, chosen in by_split.items():
            empty = WAITING if not rows else f"no {split} sample yet"
            line.append(_sample_cell(chosen[k] if k < len(chosen) else None, empty))
        cells.append(line)
    return html_table(
        [_one_line(h) for h in SAMPLE_COLUMNS.values()],
        cells,
        widths=["50%", "50%"],
        caption=_one_line(SAMPLES_CAPTION, "font-weight:normal;color:#555;font-size:90%"),
    )


def _one_line(text: str, style: str = "") -> Html:
    """`text` on one line whatever the width, cut with an ellipsis (all of it on hover), so that
    the table keeps its height as its output widens. `width:0;min-width:100%` keeps the unwrapped
    text from widening the table itself (a caption's or header's min-content width would)."""
    return Html(
        "<div title='{}' style='{}width:0;min-width:100%;white-space:nowrap;overflow:hidden;"
        "text-overflow:ellipsis'>{}</div>"
    ).format(text, Html(f"{style};" if style else ""), text)


def write_reward_dashboard(
    history: Sequence[dict], rewards: Sequence[str], path: str | os.PathLike
) -> Path:
    """`dashboard.html`: the reward figure and the latest samples, self-contained, atomic."""
    parts = [
        figure_html(reward_figure(history, rewards), include_plotlyjs=True),
        Html("<h2>Latest samples</h2>"),
        samples_table_html(latest_samples(history)),
    ]
    return write_page(path, "asru_lab stage 2", parts, heading=False)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a `metrics.jsonl` (none if it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LiveRewardDashboard(TrainerCallback):
    """The stage 2 dashboard, live in a notebook: `dashboard.show()`, then pass the dashboard in
    `reinforce(..., callbacks=[dashboard])`. When training ends, what `show()` displayed is
    replaced by a static copy (the reward figure as a plain plotly figure, the samples table as
    HTML): a widget has no state in a saved notebook, so without it a notebook opened again (or
    read on the web) would show the widget's name instead of the run.

    It redraws the reward figure (a plotly `FigureWidget`) and the latest samples table from
    the run's `metrics.jsonl` (written by the run's own metrics callback) at every log step
    and held-out measurement. Its step axis spans the run's planned steps from the start
    (`steps`, else what the trainer plans). Only the main process draws.
    """

    def __init__(
        self, rewards: Sequence[str], metrics_path: str | os.PathLike, steps: int | None = None
    ) -> None:
        self.rewards = tuple(rewards)
        self.metrics_path = Path(metrics_path)
        self.steps = steps
        self.redraws = 0
        self.handles: list = []
        self._widgets: tuple | None = None  # built on first use: a FigureWidget takes seconds

    def _built(self) -> tuple:
        if self._widgets is None:
            import ipywidgets as w

            figure = go.FigureWidget(reward_figure([], self.rewards, self.steps))
            table = w.HTML(samples_table_html([]))
            box = w.VBox([figure, table], layout=w.Layout(width="100%"))
            self._widgets = (figure, table, box)
        return self._widgets

    @property
    def figure(self):
        """The live reward figure (a plotly `FigureWidget`)."""
        return self._built()[0]

    @property
    def table(self):
        """The live samples table (an `ipywidgets.HTML`)."""
        return self._built()[1]

    @property
    def widget(self):
        """The figure above the table, one widget to display."""
        return self._built()[2]

    def show(self) -> None:
        """Display the live dashboard (left as a static copy when training ends). A line saying
        what is happening comes first, at once: building the figure and the trainer takes
        seconds before the first step."""
        from IPython.display import HTML, display

        status = display(HTML(STARTING), display_id=True)
        self.handles = [
            status,
            display(self.widget, display_id=True),
            display(HTML(""), display_id=True),
        ]

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.steps = self.steps or state.max_steps
            if self.handles:
                from IPython.display import HTML

                self.handles[0].update(HTML(TRAINING.format(steps=self.steps)))
            self.refresh()

    def static(self) -> tuple[go.Figure, Html]:
        """The dashboard as it is now, without widgets: the reward figure and the samples table."""
        rows = read_metrics(self.metrics_path)
        return reward_figure(rows, self.rewards, self.steps), samples_table_html(
            latest_samples(rows)
        )

    def on_train_end(self, args, state, control, **kwargs):
        if not (state.is_world_process_zero and self.handles):
            return
        from IPython.display import HTML

        self.refresh()
        figure, table = self.static()
        # plotly's own outputs for a figure (as `display(figure)` would give), as a raw bundle:
        # a Figure displays itself, which would add an output instead of replacing this one
        status, live, samples = self.handles
        status.update(HTML(FINISHED.format(steps=state.global_step)))
        live.update(figure._repr_mimebundle_(), raw=True)
        samples.update(HTML(str(table)))
        self.handles = []

    def refresh(self) -> None:
        rows = read_metrics(self.metrics_path)
        fresh = reward_figure(rows, self.rewards, self.steps)
        with self.figure.batch_update():
            for live, new in zip(self.figure.data, fresh.data, strict=True):
                live.x, live.y = new.x, new.y
            self.figure.layout.title.text = fresh.layout.title.text
            self.figure.update_xaxes(**step_axis(last_step(rows, self.steps)))
        self.table.value = samples_table_html(latest_samples(rows))
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
