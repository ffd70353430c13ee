"""Figures. Visualisation only: everything shown here was computed elsewhere."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots
from transformers import TrainerCallback

from asru_lab.artifacts import record_output, write_text_atomic


# --- locate -----------------------------------------------------------------------------------
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
            y=[f"layer {k}" for k in evidence["layers"]],
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
    return f"token {position}"


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
        subplot_titles=[f"layer {k}, steer {p}" for p in positions for k in layers],
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
    labels = [f"layer {k}" for k in evidence["layers"]]
    fig = go.Figure(
        go.Heatmap(z=evidence["cosines"], x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu")
    )
    fig.update_layout(title="Knowledge-absence direction: cosine between layers")
    return fig


def write_locate_page(evidence: dict, path: str | os.PathLike, model_name: str) -> Path:
    """`locate.html`: the separability heatmaps, the sweep and the layer cosines, one page."""
    figures = [
        separability_heatmap(evidence),
        separability_heatmap(evidence, "forget_vs_unseen"),
        sweep_chart(evidence),
        layer_cosine_heatmap(evidence),
    ]
    return figures_html(figures, path, f"asru_lab locate: {model_name}")


# --- redirect ---------------------------------------------------------------------------------
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


# --- reinforce --------------------------------------------------------------------------------
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


def next_token_figure(comparison) -> go.Figure:
    """Bars of the first answer token's probability, unsteered vs steered, for the tokens in a
    `locate.NextTokenComparison` (token strings shown with repr, so spaces are visible)."""
    labels = [repr(t) for t in comparison.tokens]
    fig = go.Figure(
        [
            go.Bar(name="unsteered", x=labels, y=comparison.unsteered, marker_color="#7f7f7f"),
            go.Bar(name="steered", x=labels, y=comparison.steered, marker_color="#d62728"),
        ]
    )
    fig.update_layout(
        title=(
            f"first answer token: steered at layer {comparison.layer}, alpha {comparison.alpha:g}"
        ),
        barmode="group",
        yaxis={"title": "probability", "range": [0, 1]},
        xaxis={"title": "token"},
        height=320,
        width=640,
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def steering_explorer(
    people: Sequence[tuple[str, Image.Image]],
    questions: Sequence[str],
    layers: Sequence[int],
    strengths: Sequence[float],
    answer: Callable[[int, str, int, float], tuple[str, str]],
    *,
    layer: int,
    alpha: float,
    next_token: Callable[[int, str, int, float], object] | None = None,
):
    """ipywidgets controls (person, question, layer, strength) with the unsteered and steered
    answers side by side. `answer(person_index, question, layer, alpha)` returns the pair;
    it is computed elsewhere (e.g. `locate.compare_answers`). With `next_token` (same
    arguments, returning a `locate.NextTokenComparison`, e.g. from `locate.compare_next_token`)
    a bar chart of the first answer token's distribution follows the controls too."""
    import io

    import ipywidgets as w

    person = w.Dropdown(options=[(name, i) for i, (name, _) in enumerate(people)], value=0)
    question = w.Dropdown(options=list(questions), description="question")
    layer_w = w.SelectionSlider(options=list(layers), value=layer, description="layer")
    alpha_w = w.SelectionSlider(
        options=sorted({*strengths, alpha}), value=alpha, description="strength"
    )
    image = w.Image(format="png", width=128, height=128)
    result = w.HTML()
    figure = go.FigureWidget() if next_token is not None else None

    def refresh(_=None) -> None:
        buf = io.BytesIO()
        people[person.value][1].resize((128, 128), Image.NEAREST).save(buf, format="PNG")
        image.value = buf.getvalue()
        args = (person.value, question.value, layer_w.value, alpha_w.value)
        plain, steered = answer(*args)
        result.value = (
            f"<b>unsteered:</b> {html.escape(plain)}<br>"
            f"<b>steered (layer {layer_w.value}, alpha {alpha_w.value:g}):</b> "
            f"{html.escape(steered)}"
        )
        if figure is not None:
            fresh = next_token_figure(next_token(*args))
            if not figure.data:
                figure.add_traces(fresh.data)
            with figure.batch_update():
                for live, new in zip(figure.data, fresh.data, strict=True):
                    live.x, live.y = new.x, new.y
                figure.update_layout(fresh.layout)

    for control in (person, question, layer_w, alpha_w):
        control.observe(refresh, names="value")
    refresh()
    person.description = "person"
    rows = [w.HBox([image, w.VBox([person, question, layer_w, alpha_w])]), result]
    return w.VBox(rows if figure is None else [*rows, figure])


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


# --- causal tracing -------------------------------------------------------------------------
COMPONENT_TITLES = {"residual": "residual stream", "attention": "attention output", "mlp": "MLP"}
GROUP_LABELS = {
    "image": "image tokens",
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
        return f"Causal tracing: {what}, mean over {n} {trace.config['split']} people"
    p = trace.person(person)
    return (
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
    y = [f"layer {k}" for k in trace.layers]
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
                "label": label,
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
