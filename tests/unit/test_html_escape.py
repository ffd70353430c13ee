"""No page or table asru_lab writes runs a script that came with a model, a dataset, a report
or an argument: every such text is escaped (`table_style.escape_text`), on the pages
(`viz.pages.write_page`), in the tables and in plotly's labels, and is still shown as written."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from plotly.offline import get_plotlyjs

from asru_lab import viz
from asru_lab.auditing.report import AuditReport
from asru_lab.causal.result import CausalTrace, PersonTrace
from asru_lab.evaluation.report import EvalReport
from asru_lab.explore import NextTokenComparison
from asru_lab.table_style import Html, escape_text
from asru_lab.viz.audit import audit_figures, write_audit_figures

HOSTILE = [
    "</script><script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "</title><script>alert(1)</script>",  # closes the page's title
    "' onmouseover='alert(1)",  # leaves a single-quoted attribute
    "<b style='font-size:90px'>big</b>",  # markup plotly's labels would render
    "&lt;script&gt;",  # already escaped: shown as these characters, not decoded into a tag
    r"$\href{javascript:alert(1)}{click}$",  # TeX, which plotly typesets where MathJax is loaded
]
MODEL, PERSON, QUESTION, ANSWER, METHOD, REWARD = HOSTILE[:6]
TEX = HOSTILE[-1]
OUR_TAGS = {"html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "div"}
OUR_TAGS |= {"table", "caption", "colgroup", "col", "thead", "tbody", "tr", "th", "td"}
OUR_TAGS |= {"br", "b", "i", "span", "p"}
PLOTLYJS = get_plotlyjs()


class Page(HTMLParser):
    """The elements, scripts and shown text of an HTML page or fragment, as a browser parses it."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[dict] = []
        self.shown: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag == "script":
            self.scripts.append({"attrs": dict(attrs), "body": ""})

    def handle_data(self, data):
        if self.lasttag == "script" and self.scripts and self.cdata_elem:
            self.scripts[-1]["body"] += data
        else:
            self.shown.append(data)


def _ours(script: dict) -> bool:
    """plotly.js (beside the page or inline), plotly's config line, or plotly drawing a figure
    (its JSON writes every `<` as an escape: no `<` at all in it)."""
    body = script["body"].strip()
    if script["attrs"].get("src"):
        return script["attrs"]["src"] == "plotly.min.js" and not body
    if body == "window.PlotlyConfig = {MathJaxConfig: 'local'};" or body == PLOTLYJS.strip():
        return True
    return (
        body.startswith("window.PLOTLYENV=window.PLOTLYENV || {};")
        and body.count("Plotly.newPlot(") == 1
        and "<" not in body
    )


def assert_safe(text: str, shown: list[str] = ()) -> Page:
    """No element that is not ours, no event handler, no javascript: URL, only our scripts; every
    text of `shown` is on the page as written."""
    page = Page(text)
    assert {tag for tag, _ in page.tags} <= OUR_TAGS, {tag for tag, _ in page.tags} - OUR_TAGS
    assert [tag for tag, _ in page.tags].count("style") <= 1  # ours: a lone figure fills the page
    attrs = [(k.lower(), (v or "")) for _, a in page.tags for k, v in a]
    assert not [k for k, _ in attrs if k.startswith("on")]
    assert not [v for _, v in attrs if re.sub(r"\s", "", v).lower().startswith("javascript:")]
    assert all(_ours(s) for s in page.scripts), [s["body"][:200] for s in page.scripts]
    seen = "".join(page.shown)
    for want in shown:
        assert want in seen, want
    return page


NOT_DRAWN = ("legendgroup",)  # an identifier that groups traces, never shown


def figure_texts(fig) -> list[str]:
    """Every string in a figure that plotly may draw as a label (its templates are ours)."""
    found: list[str] = []

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and not key.endswith("template") and key not in NOT_DRAWN:
            found.append(node)

    walk(fig.to_plotly_json())
    return found


def assert_figure_escaped(fig, shown: list[str]) -> None:
    """No label holds a tag plotly would draw; each of `shown` is there, escaped (plotly reads
    it back as the text: it decodes `&lt;`, `&gt;`, `&amp;` and numeric entities)."""
    texts = figure_texts(fig)
    for text in texts:
        assert not re.search(r"<(?!br>)[a-z/]", text, re.IGNORECASE) and "$" not in text, text
    for want in shown:
        assert any(escape_text(want) in text for text in texts), want


# --- the one escape ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_reads_back_as_written_in_a_page_and_in_plotly(text):
    escaped = escape_text(text)
    assert not re.search(r"[<>\"'$]", escaped)
    assert html.unescape(escaped) == text
    # plotly's labels decode these entities only (plotly.js svg_text_utils.convertEntities)
    entities = re.findall(r"&([^;]*);", escaped)
    assert all(e in ("amp", "lt", "gt") or re.fullmatch(r"#\d+", e) for e in entities)


def test_html_format_escapes_its_arguments_but_not_our_markup():
    cell = Html("<b>{}</b> {:.2f} {}").format(PERSON, 0.5, Html("<i>ours</i>"))
    assert cell == f"<b>{escape_text(PERSON)}</b> 0.50 <i>ours</i>" and isinstance(cell, Html)


# --- pages -------------------------------------------------------------------------------------
AUDIT_RESULTS = {
    "none": {"forget_leak": 0.5, "test_leak": 0.4},
    "ablation": {QUESTION: {"forget_leak": 0.3, "test_leak": 0.2}},
    "prefill": {"forget_leak": 0.6, "test_leak": 0.5},
    "inputs": {ANSWER: {"forget_leak": 0.1, "test_leak": 0.1}},
    "relearn": {
        "curves": {
            "forget": [{"steps": 0, "forget_leak": 0.1}, {"steps": 5, "forget_leak": 0.4}],
            "benign": [{"steps": 0, "forget_leak": 0.1}, {"steps": 5, "forget_leak": 0.2}],
        }
    },
    "linear_probe": {"accuracy": [0.2, 0.5, 0.6], "chance": 0.2, "attribute": PERSON},
    "logit_lens": {"top_k": METHOD, "forget": {"top_k_share_per_layer": [0.0, 0.1, 0.3]}},
}


def _audit(name: str = MODEL) -> dict:
    return {"model": {"name": name}, "probe": None, "results": AUDIT_RESULTS}


@pytest.mark.parametrize("name", HOSTILE)
def test_the_audit_page_shows_a_hostile_model_name_and_runs_nothing(name, tmp_path):
    report = AuditReport(
        model={"name": name}, probe=None, reference=None, oracle=None, benchmark={}, config={},
        results=AUDIT_RESULTS, summary={}, timing={},
    )  # fmt: skip
    report.save(tmp_path / "audit")
    page = assert_safe((tmp_path / "audit" / "audit.html").read_text(), [f"Audit of {name}"])
    assert [t for t, _ in page.tags].count("h1") == 1 and len(page.scripts) == 2 + 3  # 3 figures
    assert AuditReport.load(tmp_path / "audit").model["name"] == name


def test_every_audit_figure_escapes_names_from_the_report():
    for fig in audit_figures(_audit()):
        assert_figure_escaped(fig, [])
    texts = [t for fig in audit_figures(_audit()) for t in figure_texts(fig)]
    for want in (MODEL, QUESTION, ANSWER, PERSON, METHOD):
        assert any(escape_text(want) in t for t in texts), want
    by_method = {METHOD: _audit(), "oracle": _audit("oracle")}
    for chart in (viz.audit.relearn_chart, viz.audit.probe_layers_chart):
        assert_figure_escaped(chart(by_method), [METHOD])


def test_reproduce_audit_figures_pages_are_safe(tmp_path):
    written = write_audit_figures({0.1: {METHOD: _audit()}}, tmp_path, png=False)
    pages = [name for name in written if name.endswith(".html")]
    assert len(pages) == 4
    for name in pages:
        assert_safe((tmp_path / name).read_text(), [Path(name).stem])


EVIDENCE = {
    "layers": [4, 5],
    "separability": {
        p: {"forget_vs_retain": [0.6, 0.7], "forget_vs_unseen": [0.8, 0.9]} for p in ("last", "-2")
    },
    "sweep": [
        {
            "layer": k,
            "positions": "last",
            "gate_max_fpr": None,
            "alpha": a,
            "gated": False,
            "forget_refusal": 0.2 * a,
            "retain_acc": 1.0 - 0.1 * a,
        }
        for k in (4, 5)
        for a in (1.0, 2.0)
    ],  # fmt: skip
    "recommended": {
        "layer": 4,
        "alpha": 2.0,
        "positions": "last",
        "gated": False,
        "gate_max_fpr": None,
    },  # fmt: skip
    "cosines": [[1.0, 0.5], [0.5, 1.0]],
}


@pytest.mark.parametrize("name", HOSTILE[:4])
def test_the_locate_page_shows_a_hostile_model_name_and_runs_nothing(name, tmp_path):
    viz.write_locate_page(EVIDENCE, tmp_path / "locate.html", name)
    page = assert_safe((tmp_path / "locate.html").read_text(), [f"asru_lab locate: {name}"])
    assert len(page.scripts) == 2 + 4  # plotly.js inline, then 4 figures


def _trace() -> CausalTrace:
    def person(pid: str, name: str) -> PersonTrace:
        return PersonTrace(
            person_id=pid, name=name, split="forget", question=QUESTION, image="x.png",
            attribute="birthplace", value="Oslo", answer_prefix="", target_token=ANSWER,
            target_id=1, swap_with=None, group_sizes={"question": 3, "last": 1}, p_clean=0.9,
            p_corrupt=0.1, p_patched={"residual": [[0.5, 0.2], [0.7, 0.8]]},
        )  # fmt: skip

    return CausalTrace(
        model={"name": MODEL}, dataset_fingerprint="0", config={"split": METHOD, "min_drop": 0.0},
        layers=[3, 4], components=["residual"], groups=["question", "last"], hooks={},
        people=[person(PERSON, PERSON), person("p2", REWARD)], timing={},
    )  # fmt: skip


def test_the_causal_heatmap_page_escapes_people_and_tokens(tmp_path):
    fig = viz.causal_heatmap(_trace())
    assert_figure_escaped(fig, [PERSON, REWARD, METHOD])
    person = viz.causal_heatmap(_trace(), person=PERSON)
    assert_figure_escaped(person, [PERSON, repr(ANSWER)])
    viz.save_figure(fig, tmp_path / "causal_heatmap", png=False)
    page = assert_safe((tmp_path / "causal_heatmap.html").read_text(), ["causal_heatmap"])
    assert [s["attrs"].get("src") for s in page.scripts].count("plotly.min.js") == 1


def _history() -> list[dict]:
    samples = [
        {"split": "forget", "step": 2, "question": QUESTION, "completion": ANSWER, "reward": 0.5},
        {"split": "retain", "step": 2, "question": PERSON, "completion": MODEL, "reward": 1.0},
    ]
    return [
        {"step": 1, "reward": 0.2, f"rewards/{REWARD}/mean": 0.2, "kl": 0.01},
        {"step": 2, "reward": 0.3, f"rewards/{REWARD}/mean": 0.3, "samples": samples},
    ]


def test_the_reward_dashboard_shows_generated_answers_as_text(tmp_path):
    viz.write_reward_dashboard(_history(), [REWARD, "length"], tmp_path / "dashboard.html")
    page = assert_safe((tmp_path / "dashboard.html").read_text(), [QUESTION, ANSWER, MODEL])
    assert len(page.scripts) == 3 and [t for t, _ in page.tags].count("h1") == 0  # layout kept
    assert_figure_escaped(viz.reward_figure(_history(), [REWARD]), [REWARD])


ROWS = [
    {"method": m, "forget_ratio": 0.1, "ue": ue, "gq": 3.0, "retain.leak_rate": 0.9,
     "retain.mcq_acc": 0.95, "forget.leak_rate": 0.1, "forget.quality.categories.leak": 0.2}
    for m, ue in ((METHOD, 0.8), ("ga", 0.4), (MODEL, 0.81))
]  # fmt: skip


def test_the_reproduce_pages_show_hostile_method_names_as_text(tmp_path):
    curves = {0.1: _history()}
    written = viz.write_reproduce_figures(
        ROWS, {0.1: EVIDENCE}, curves, tmp_path, rewards=[REWARD], png=False
    )
    assert "figures.html" in written
    page = assert_safe((tmp_path / "figures.html").read_text(), ["asru-lab reproduce"])
    assert [s["attrs"].get("src") for s in page.scripts][0] == "plotly.min.js"
    for name in written:
        if name.endswith(".html"):
            assert_safe((tmp_path / name).read_text())
    assert_figure_escaped(viz.tradeoff_scatter(ROWS), [METHOD, MODEL])
    assert_figure_escaped(viz.quality_bars(ROWS), [METHOD, MODEL])


def test_figures_of_other_views_escape_their_labels():
    tokens = NextTokenComparison(
        tokens=[ANSWER, " Oslo"], unsteered=[0.5, 0.4], steered=[0.1, 0.8], layer=4, alpha=1.0
    )
    assert_figure_escaped(viz.next_token_figure(tokens), [repr(ANSWER)])
    projections = {MODEL: {PERSON: [0.1, 0.2]}, TEX: {"retain": [0.3]}}
    assert_figure_escaped(viz.projection_histograms(projections), [MODEL, PERSON, TEX])


# --- notebook tables and widgets ---------------------------------------------------------------
def test_notebook_tables_show_hostile_text_and_run_nothing():
    report = EvalReport(MODEL, METHOD, {PERSON: {"mcq_acc": 0.5, "quality": {}}})
    assert_safe(report._repr_html_(), [f"{MODEL} [{METHOD}]", PERSON])
    row = {
        "split": "forget", "person": PERSON, "question": QUESTION, "fact": ANSWER,
        "before": MODEL, "after": METHOD, "before_verdict": "knows", "after_verdict": "refuses",
    }  # fmt: skip
    page = assert_safe(viz.answer_changes_table([row]), [PERSON, QUESTION, ANSWER, MODEL])
    assert [t for t, _ in page.tags].count("b") == 2  # the verdicts: our markup is kept
    samples = viz.latest_samples(_history())
    assert_safe(viz.samples_table_html(samples), [QUESTION, ANSWER])
    # a plain-text table as notebook 03 builds one: its cells are text
    assert_safe(viz.html_table(["answer", REWARD], [[ANSWER, "0.50"]]), [ANSWER, REWARD])


def test_notebook_widgets_show_hostile_text_and_run_nothing(tmp_path):
    box = viz.steering_explorer(
        [(PERSON, Image.new("RGB", (8, 8)))], [QUESTION], [4], [1.0],
        lambda *args: (ANSWER, MODEL), layer=4, alpha=1.0,
    )  # fmt: skip
    assert_safe(box.children[1].value, [ANSWER, MODEL])
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _history()))
    dashboard = viz.LiveRewardDashboard([REWARD], metrics, steps=4)
    dashboard.refresh()
    assert_safe(dashboard.table.value, [QUESTION, ANSWER])
    assert_figure_escaped(dashboard.figure, [REWARD])


def test_the_reproduce_summary_a_notebook_renders_as_markdown_runs_nothing():
    from markdown_it import MarkdownIt

    from asru_lab.runs.tables import summary_markdown

    rows = [{**ROWS[0], "forget.leak_rate": QUESTION}]  # a damaged table: text where a number was
    head = [{"forget_ratio": 0.1, "baseline": MODEL, "ue_gain_pct": 10.0, "ue_baseline": 0.5,
             "ue_asru": 0.9, "gq_baseline": 1.0, "gq_asru": 3.0, "gq_factor": 3.0}]  # fmt: skip
    rendered = MarkdownIt("commonmark").enable("table").render(summary_markdown(rows, head))
    assert_safe(rendered, [METHOD, QUESTION, MODEL])
