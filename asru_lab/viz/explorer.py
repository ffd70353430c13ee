"""The notebook's steering explorer: a probe's effect on one question, layer and strength
as sliders, with the next-token distribution."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import plotly.graph_objects as go
from PIL import Image

from asru_lab.table_style import Html, escape_text


def next_token_figure(comparison) -> go.Figure:
    """Bars of the first answer token's probability, unsteered vs steered, for the tokens in a
    `explore.NextTokenComparison` (token strings shown with repr, so spaces are visible; a
    model's vocabulary is text, escaped)."""
    labels = [escape_text(repr(t)) for t in comparison.tokens]
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
    it is computed elsewhere (e.g. `explore.compare_answers`). With `next_token` (same
    arguments, returning a `explore.NextTokenComparison`, e.g. from `explore.compare_next_token`)
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
        result.value = Html(
            "<b>unsteered:</b> {}<br><b>steered (layer {}, alpha {:g}):</b> {}"
        ).format(plain, layer_w.value, alpha_w.value, steered)
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
