"""Figures of an audit (`asru_lab.auditing`): leak under each attack, relearning curves, and the
per-layer linear-probe accuracy and logit-lens hits. Each takes the saved report's data (a
dict, as in `audit.json`), so a notebook can draw a loaded report or several. Every name from
a report or an argument is escaped (`escape_text`) where it enters a figure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go

from asru_lab.table_style import escape_text

SPLIT_COLORS = {"forget": "#d62728", "test": "#ff7f0e"}
TAUGHT = {
    "forget": "other forget facts",
    "benign": "retain facts",
    "unrelated": "picture questions",
}


def _label(data: Mapping) -> str:
    name = data.get("model", {}).get("name", "model")
    return f"{name} + probe" if data.get("probe") else name


def attack_leak_chart(data: Mapping) -> go.Figure:
    """Forget and test leak with no attack and after each generating attack."""
    results = data["results"]
    bars: dict[str, dict[str, float]] = {}
    if "none" in results:
        bars["no attack"] = results["none"]
    for name, block in results.get("ablation", {}).items():
        bars[f"ablation ({name})"] = block
    if "prefill" in results:
        bars["prefill"] = results["prefill"]
        if "generic" in results["prefill"]:
            bars["prefill (no name)"] = results["prefill"]["generic"]
    if "sampling" in results:
        block = results["sampling"]
        bars[f"sampling (leak@{block.get('k')})"] = {
            f"{split}_leak": block.get(f"{split}_leak_at_k") for split in SPLIT_COLORS
        }
    if "forget_leak" in results.get("in_context", {}):
        bars[f"in-context ({results['in_context']['shots']} shots)"] = results["in_context"]
    if "forget_leak" in results.get("soft_prompt", {}):
        bars[f"soft prompt ({results['soft_prompt']['tokens']} vectors)"] = results["soft_prompt"]
    for name, block in results.get("inputs", {}).items():
        bars[f"input: {name}"] = block
    for width, block in results.get("quantize", {}).items():
        bars[f"quantized ({width})"] = block
    fig = go.Figure()
    for split, color in SPLIT_COLORS.items():
        fig.add_bar(
            name=f"{split} leak",
            x=[escape_text(b) for b in bars],
            y=[b.get(f"{split}_leak") for b in bars.values()],
            marker_color=color,
        )
    fig.update_layout(
        title=escape_text(f"Leak under each attack — {_label(data)}"),
        yaxis={"title": "share of answers with the fact", "range": [0, 1]},
        barmode="group",
        height=420,
    )
    return fig


def void_attack_names(data: Mapping) -> set[str]:
    """The attacks of one audit report that broke the model (its summary's `void_attacks`,
    "name: why; name: why"), whose leaks measure nothing."""
    void = (data.get("summary") or {}).get("void_attacks") or ""
    return {part.split(":")[0].strip() for part in void.split(";") if part.strip()}


def relearn_chart(reports: Mapping[str, Mapping] | Mapping) -> go.Figure:
    """Relearning curves: leak on the forget people whose facts were never shown, after k
    fine-tuning steps on the other half's facts (solid), on retain facts (dotted) or on
    unrelated picture questions (dash-dot). One report also draws the taught half's own leak
    (the control, thin) and the oracle's held-out curve under the same settings (grey, the
    floor). Takes one report or {label: report} to compare methods (e.g. with the oracle)."""
    if "results" in reports:
        reports = {_label(reports): reports}
    many = len(reports) > 1
    fig = go.Figure()
    for label, data in reports.items():
        relearned = data["results"].get("relearn", {})
        curves = relearned.get("curves", {})
        void = void_attack_names(data)
        for variant, dash in (("forget", "solid"), ("benign", "dot"), ("unrelated", "dashdot")):
            points = curves.get(variant, [])
            if many and variant != "forget":
                continue  # one line per method when comparing
            if points:
                fig.add_scatter(
                    x=[p["steps"] for p in points],
                    # a point whose attack broke the model measured nothing: a gap, not 0
                    y=[
                        None if f"relearn_{variant}_k{p['steps']}" in void else p.get("forget_leak")
                        for p in points
                    ],
                    mode="lines+markers",
                    line={"dash": dash},
                    name=escape_text(f"{label}: taught {TAUGHT[variant]}"),
                )
        if many:
            continue
        control = _highest(relearned, "curves", "taught_leak")
        if control:  # drawn for void settings too: it says why they are void
            fig.add_scatter(
                x=list(control),
                y=list(control.values()),
                mode="lines",
                line={"width": 1},
                name="control: the taught half itself",
            )
        floor = _highest(relearned, "oracle", "forget_leak")
        if floor:
            fig.add_scatter(
                x=list(floor),
                y=list(floor.values()),
                mode="lines+markers",
                line={"color": "#7f7f7f", "dash": "dash"},
                name="oracle: the other half (same settings)",
            )
    steps = sorted({x for trace in fig.data for x in (trace.x or ())})
    fig.update_layout(
        title="Relearning attack: leak on facts the attack never showed",
        # the steps measured, as ticks: never "0.5 steps"
        xaxis={"title": "fine-tuning steps", "tickmode": "array", "tickvals": steps},
        yaxis={"title": "forget leak (held-out half)", "range": [0, 1]},
        height=420,
    )
    return name_coinciding(fig)


def name_coinciding(fig: go.Figure) -> go.Figure:
    """Lines drawn exactly on an earlier one are named so ("… = <the earlier>") and drawn as
    markers on it, so that a legend entry never stands for a line nobody can see."""
    seen: list[tuple[tuple, tuple, str]] = []
    for trace in fig.data:
        if trace.type != "scatter" or trace.y is None:
            continue
        key = (tuple(trace.x or ()), tuple(trace.y))
        same = next((name for x, y, name in seen if (x, y) == key), None)
        if same is not None and any(v is not None for v in trace.y):
            trace.name = f"{trace.name} = {same}"
            trace.mode = "markers"
            trace.marker = {"symbol": "x-thin-open", "size": 11, "line": {"width": 2}}
        else:
            seen.append((*key, trace.name))
    return fig


def _highest(relearned: Mapping, whose: str, key: str) -> dict[int, float]:
    """Per k, the highest `key` over the relearning settings' "forget" curves, the audited
    model's (`whose` "curves": with "taught_leak", the control) or the oracle's ("oracle":
    with "forget_leak", what fine-tuning achieves from nothing)."""
    found: dict[int, float] = {}
    for setting in relearned.get("settings", []):
        for point in (setting.get(whose) or {}).get("forget", []):
            value = point.get(key)
            if value is not None:
                found[point["steps"]] = max(value, found.get(point["steps"], 0.0))
    return dict(sorted(found.items()))


def layer_readout_chart(data: Mapping) -> go.Figure:
    """Per layer: the linear probe's accuracy on forget people (with the reference model's
    and the oracle's, and chance) and the logit lens' top-k share."""
    results = data["results"]
    fig = go.Figure()
    probe = results.get("linear_probe", {})
    if "accuracy" in probe:
        layers = list(range(len(probe["accuracy"])))
        fig.add_scatter(x=layers, y=probe["accuracy"], name="probe accuracy: audited")
        for name in ("reference", "oracle"):
            if f"{name}_accuracy" in probe:
                fig.add_scatter(
                    x=layers,
                    y=probe[f"{name}_accuracy"],
                    name=f"probe accuracy: {name}",
                    line={"dash": "dash"},
                )
        fig.add_hline(y=probe["chance"], line_dash="dot", annotation_text="best constant guess")
    lens = results.get("logit_lens", {})
    for split in SPLIT_COLORS:
        if split in lens:
            shares = lens[split]["top_k_share_per_layer"]
            fig.add_scatter(
                x=list(range(len(shares))),
                y=shares,
                name=escape_text(f"logit lens: fact in top {lens['top_k']} ({split})"),
                line={"color": SPLIT_COLORS[split], "dash": "dot"},
            )
    attr = probe.get("attribute", "")
    fig.update_layout(
        title=escape_text(
            f"Is the fact still readable? Linear probe ({attr}) and logit lens per layer"
        ),
        xaxis={"title": "decoder layer"},
        yaxis={"title": "share", "range": [0, 1.02]},
        height=420,
    )
    return name_coinciding(fig)


def excess_chart(data: Mapping, split: str = "forget") -> go.Figure:
    """Per attack that measured something (and first the per-item union: some attack got the
    fact out), the audited model's leak on `split` beside the retrain oracle's under the
    identical attack, each with its Wilson 95 % interval; the hover gives the excess over the
    oracle. Attacks are sorted by excess, worst first."""
    results = data["results"]
    rows = {name: row[split] for name, row in results.get("leaks", {}).items() if split in row}
    order = sorted(rows, key=lambda n: -(rows[n].get("excess") or rows[n]["leak"] or 0.0))
    bars = {}
    union = results.get("union", {}).get(split)
    if union:
        theirs = results.get("oracle_union", {}).get(split, {})
        bars["union (any attack)"] = {
            **union,
            "oracle": theirs.get("leak"),
            "oracle_lo": theirs.get("lo"),
            "oracle_hi": theirs.get("hi"),
        }
    bars.update({name: rows[name] for name in order})
    return _against_oracle(
        data,
        bars,
        "leak",
        SPLIT_COLORS.get(split, "#d62728"),
        f"Leak against the oracle under the same attack ({split}, 95 % intervals)",
        f"share of {split} answers with the fact (95 % interval)",
    )


def choice_chart(data: Mapping, split: str = "forget") -> go.Figure:
    """Multiple choice by option likelihood (`auditing.choice`): per attack it was scored under,
    the share of `split`'s items whose right option the audited model finds likeliest, beside
    the oracle's under the identical attack (95 % intervals) and chance (dotted). Sorted by the
    excess over the oracle, worst first."""
    table = data["results"].get("mcq_likelihood", {})
    rows = {name: row[split] for name, row in table.items() if split in row}
    order = sorted(rows, key=lambda n: -(rows[n].get("excess") or rows[n]["acc"] or 0.0))
    fig = _against_oracle(
        data,
        {name: rows[name] for name in order},
        "acc",
        SPLIT_COLORS.get(split, "#d62728"),
        f"Multiple choice by option likelihood ({split}, 95 % intervals)",
        f"share of {split} items whose right option is likeliest",
    )
    chance = [r["chance"] for r in rows.values() if r.get("chance") is not None]
    if chance:
        level = sum(chance) / len(chance)
        fig.add_hline(
            y=level, line_dash="dot", line_color="#555", annotation_text=f"chance {level:.2f}"
        )
    return fig


def _against_oracle(
    data: Mapping, bars: Mapping[str, Mapping], key: str, color: str, title: str, ytitle: str
) -> go.Figure:
    """Bars of `key` per attack with Wilson intervals (`lo`, `hi`), the oracle's under the
    identical attack beside them (`oracle`, `oracle_lo`, `oracle_hi`), the excess on hover."""
    names = [escape_text(n) for n in bars]

    def errors(value: str, lo: str, hi: str) -> dict:
        cells = [(b.get(value), b) for b in bars.values()]
        up = [None if v is None else b.get(hi, v) - v for v, b in cells]
        down = [None if v is None else v - b.get(lo, v) for v, b in cells]
        return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}

    fig = go.Figure()
    fig.add_bar(
        name=escape_text(_label(data)),
        x=names,
        y=[b.get(key) for b in bars.values()],
        error_y=errors(key, "lo", "hi"),
        marker_color=color,
        customdata=[
            [b.get("n"), "—" if b.get("oracle") is None else f"{b[key] - b['oracle']:+.2f}"]
            for b in bars.values()
        ],
        hovertemplate="%{x}: %{y:.2f} of %{customdata[0]} (excess over the oracle "
        "%{customdata[1]})<extra></extra>",
    )
    if any(b.get("oracle") is not None for b in bars.values()):
        fig.add_bar(
            name="retrain oracle, same attack",
            x=names,
            y=[b.get("oracle") for b in bars.values()],
            error_y=errors("oracle", "oracle_lo", "oracle_hi"),
            marker_color="#7f7f7f",
        )
    fig.update_layout(
        title=escape_text(f"{title} — {_label(data)}"),
        yaxis={"title": ytitle, "range": [0, 1.05]},
        barmode="group",
        height=440,
    )
    return fig


def audit_figures(data: Mapping) -> list[go.Figure]:
    """Every figure of one report, in the order of the HTML page."""
    figures = [attack_leak_chart(data)]
    if data["results"].get("leaks"):
        figures.insert(0, excess_chart(data))
    if data["results"].get("mcq_likelihood"):
        figures.append(choice_chart(data))
    if data["results"].get("relearn"):
        figures.append(relearn_chart(data))
    if data["results"].get("linear_probe") or data["results"].get("logit_lens"):
        figures.append(layer_readout_chart(data))
    return figures


def probe_layers_chart(reports: Mapping[str, Mapping]) -> go.Figure:
    """Linear-probe accuracy on the forget people per layer, one line per method ({label:
    report data}), with the best constant guess."""
    fig = go.Figure()
    chance = None
    for label, data in reports.items():
        probe = data["results"].get("linear_probe", {})
        if "accuracy" in probe:
            layers = list(range(len(probe["accuracy"])))
            fig.add_scatter(y=probe["accuracy"], x=layers, name=escape_text(label))
            chance = probe["chance"]
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="best constant guess")
    fig.update_layout(
        title="Linear-probe extraction: the forgotten fact read from each layer",
        xaxis={"title": "decoder layer"},
        yaxis={"title": "probe accuracy on forget people", "range": [0, 1.02]},
        height=420,
    )
    return fig


def lens_layers_chart(reports: Mapping[str, Mapping]) -> go.Figure:
    """Share of forget questions whose fact is in the logit lens' top k, per layer and method."""
    fig = go.Figure()
    for label, data in reports.items():
        lens = data["results"].get("logit_lens", {}).get("forget")
        if lens:
            shares = lens["top_k_share_per_layer"]
            fig.add_scatter(y=shares, x=list(range(len(shares))), name=escape_text(label))
    fig.update_layout(
        title="Logit lens: the forgotten fact in the top k at each layer (forget questions)",
        xaxis={"title": "decoder layer"},
        yaxis={"title": "share of forget questions", "range": [0, 1.02]},
        height=420,
    )
    return fig


def hidden_or_forgotten_chart(reports: Mapping[str, Mapping], split: str = "forget") -> go.Figure:
    """Hidden or forgotten: per method (name -> audit data), x = the `split` leak with no
    attack, y = the per-item union leak under every valid attack, both with Wilson intervals;
    the retrain oracle's point (under the identical attacks, from the first report that has it)
    at the floor. A method on the diagonal gives nothing more under attack than it says; one
    near the top-left hides: it says nothing and gives everything back."""
    fig = go.Figure()
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#bbbbbb"},
        name="no more under attack", hoverinfo="skip",
    )  # fmt: skip
    oracle, drawn = None, []
    for name, data in reports.items():
        results = data.get("results", {})
        plain = results.get("leaks", {}).get("none", {}).get(split)
        union = results.get("union", {}).get(split)
        if not plain or not union:
            continue
        if oracle is None and results.get("oracle_union", {}).get(split):
            oracle = (plain, results["oracle_union"][split])
        drawn.append((name, plain, union))
    labels = _cluster_labels([(n, p["leak"], u["leak"]) for n, p, u in drawn])
    for name, plain, union in drawn:
        fig.add_scatter(
            x=[plain["leak"]],
            y=[union["leak"]],
            mode="markers+text",
            text=[labels[name]],
            # inside the frame: left of a point at the right edge, below one at the top
            textposition=("bottom " if union["leak"] > 0.85 else "top ")
            + ("left" if plain["leak"] > 0.7 else "right"),
            name=escape_text(name),
            error_x=_interval(plain, "leak", "lo", "hi"),
            error_y=_interval(union, "leak", "lo", "hi"),
            hovertemplate=f"{escape_text(name)}: %{{x:.2f}} plainly, %{{y:.2f}} under attack "
            f"(n {union.get('n')})<extra></extra>",
        )
    if oracle is not None:
        plain, union = oracle
        error_x = _interval(plain, "oracle", "oracle_lo", "oracle_hi")
        _oracle_point(fig, plain.get("oracle"), union, "bottom right", error_x=error_x)
    fig.update_layout(
        title=f"Hidden or forgotten? ({escape_text(split)} split)",
        xaxis={"title": "leak with no attack", "range": [-0.03, 1.05]},
        yaxis={"title": "union leak under every attack", "range": [-0.03, 1.05]},
        height=480,
    )
    return fig


def _cluster_labels(points: Sequence[tuple[str, float, float]], near: float = 0.08) -> dict:
    """The text beside each point (name, x, y): points within `near` of a labelled one share
    its label, which names them all (the legend still lists each); the others get none, so
    that names drawn on top of each other do not blot each other out."""
    labels: dict[str, str] = {}
    anchors: list[tuple[str, float, float, list[str]]] = []
    for name, x, y in points:
        anchor = next((a for a in anchors if abs(a[1] - x) <= near and abs(a[2] - y) <= near), None)
        if anchor is None:
            anchors.append((name, x, y, [name]))
        else:
            anchor[3].append(name)
        labels[name] = ""
    for name, _, _, members in anchors:
        labels[name] = escape_text(", ".join(members))
    return labels


def compute_robustness_chart(points: Sequence[Mapping], split: str = "forget") -> go.Figure:
    """Compute against robustness: per point (`label`, `compute`: its cost as a fraction of the
    retrain oracle's build, `audit`: its audit data), x = that fraction, y = the per-item union
    leak under the audit's attacks with its Wilson interval; the oracle at x = 1 with its union
    under the identical attacks (from the first audit that has it) and its band at the floor.
    A point below the band's top and left of 1 forgets for less than retraining costs."""
    fig = go.Figure()
    oracle = None
    for point in points:
        results = point["audit"].get("results", {})
        union = results.get("union", {}).get(split)
        if not union:
            continue
        if oracle is None and results.get("oracle_union", {}).get(split):
            oracle = results["oracle_union"][split]
        label = escape_text(str(point["label"]))
        fig.add_scatter(
            x=[point["compute"]],
            y=[union["leak"]],
            mode="markers+text",
            text=[label],
            textposition="top right",
            name=label,
            error_y=_interval(union, "leak", "lo", "hi"),
            hovertemplate=f"{label}: {point['compute']:.2f} of the oracle's build, union "
            f"%{{y:.2f}} (n {union.get('n')})<extra></extra>",
        )
    if oracle is not None:
        _oracle_point(fig, 1.0, oracle, "bottom left")
    fig.update_layout(
        title=f"Compute against robustness ({escape_text(split)} split)",
        xaxis={
            "title": "compute, as a fraction of the retrain oracle's build",
            "rangemode": "tozero",
        },
        yaxis={"title": "union leak under the audit's attacks", "range": [-0.03, 1.05]},
        height=460,
    )
    return fig


def _oracle_point(fig: go.Figure, x, union: Mapping, where: str, error_x=None) -> None:
    """The retrain oracle's star at (x, its union leak) with its interval, and its band (0 to
    the interval's top) across the figure: the floor a method is judged against."""
    fig.add_scatter(
        x=[x],
        y=[union["leak"]],
        mode="markers+text",
        text=["retrain oracle"],
        textposition=where,
        name="retrain oracle",
        marker={"symbol": "star", "size": 14, "color": "#7f7f7f"},
        error_x=error_x,
        error_y=_interval(union, "leak", "lo", "hi"),
    )
    fig.add_hrect(y0=0, y1=union["hi"], fillcolor="#7f7f7f", opacity=0.12, line_width=0)


def _interval(cell: Mapping, value: str, lo: str, hi: str) -> dict:
    v = cell.get(value)
    if v is None:
        return {"visible": False}
    up, down = cell.get(hi, v) - v, v - cell.get(lo, v)
    return {"type": "data", "symmetric": False, "array": [up], "arrayminus": [down]}


def write_audit_figures(
    audits: Mapping[float, Mapping[str, Mapping]], out_dir: str | os.PathLike, *, png: bool = True
) -> list[str]:
    """`reproduce --audit`'s figures (forget ratio -> method -> audit data): the relearning
    curves and the per-layer probe and logit-lens plots of every method, one file each per
    ratio; returns the file names written."""
    from asru_lab.viz.pages import save_figure

    written: list[str] = []
    for ratio, by_method in sorted(audits.items()):
        suffix = f"_ratio{ratio:g}" if len(audits) > 1 else ""
        charts = {
            "audit_hidden_or_forgotten": hidden_or_forgotten_chart(by_method),
            "audit_relearn": relearn_chart(by_method),
            "audit_probe_layers": probe_layers_chart(by_method),
            "audit_lens_layers": lens_layers_chart(by_method),
        }
        for stem, fig in charts.items():
            written += save_figure(fig, Path(out_dir) / f"{stem}{suffix}", png=png)
    return sorted(set(written))
