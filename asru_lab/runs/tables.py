"""`reproduce`'s tables, written and read back: `main_table.csv` / `.md` (one row per method
and forget ratio: the evaluation JSON flattened with dots, then `ue` and `gq`), `summary.md`,
`headline.json`, the paper's layout of the same rows (`write_paper_table`, under the protocols
that score by MLLMU-Bench's rules), and `load_results` for a finished folder such as the
committed `figures/`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from asru_lab.artifacts import write_json_atomic, write_text_atomic
from asru_lab.data.schema import EVAL_SPLITS
from asru_lab.evaluation.headline import DEFINITIONS
from asru_lab.probe import SteeringProbe
from asru_lab.table_style import escape_text


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


SUMMARY_COLUMNS = (
    ("forget.leak_rate", "forget leak ↓"),
    ("forget.mcq_acc", "forget MCQ ↓"),
    ("test.leak_rate", "test leak ↓"),
    ("forget.quality.contextual_refusal", "GQ: ctx refusal 0-5 ↑"),
    ("forget.truth_ratio", "forget truth ratio ↑"),
    ("forget.forget_quality", "forget quality (KS p vs oracle) ↑"),
    ("retain.leak_rate", "retain recall ↑"),
    ("retain.mcq_acc", "retain MCQ ↑"),
    ("general.leak_rate", "general ↑"),
    ("ue", "UE ↑"),
)


def summary_markdown(rows: list[dict], head: list[dict]) -> str:
    """The main columns per (forget ratio, method) and the headline ratios, as markdown (cells
    read from a results table escaped: a notebook renders the HTML in markdown)."""
    lines = ["| forget ratio | method | " + " | ".join(t for _, t in SUMMARY_COLUMNS) + " |"]
    lines.append("|---|---|" + "---|" * len(SUMMARY_COLUMNS))
    for r in rows:
        cells = [escape_text(_fmt(r.get(k))) for k, _ in SUMMARY_COLUMNS]
        method = escape_text(r["method"])
        lines.append(f"| {r['forget_ratio']:g} | {method} | " + " | ".join(cells) + " |")
    if head:
        lines += ["", *headline_markdown(head)]
    return "\n".join(lines) + "\n"


def headline_markdown(head: list[dict]) -> list[str]:
    """The headline ratios (`evaluation.headline.headline`) as markdown table lines: per forget
    ratio and baseline, UE and GQ of both, ASRU's UE gain and GQ factor."""
    lines = ["| forget ratio | ASRU vs | UE base → ASRU | UE gain | GQ base → ASRU | GQ ×|"]
    lines.append("|---|---|---|---|---|---|")
    for h in head:
        gain = h["ue_gain_pct"]
        gain = "–" if gain is None else "∞" if math.isinf(gain) else f"{gain:+.1f} %"
        ue = _pair(h["ue_baseline"], h["ue_asru"], ".3f")
        gq = _pair(h["gq_baseline"], h["gq_asru"], ".2f")
        factor = "–" if h["gq_factor"] is None else f"{h['gq_factor']:.1f}×"
        lines.append(
            f"| {h['forget_ratio']:g} | {escape_text(h['baseline'])} | {ue} | {gain} | {gq} "
            f"| {factor} |"
        )
    return lines


def _pair(before: float | None, after: float | None, spec: str) -> str:
    """ "0.500 → 0.975", a dash for a number the evaluation could not give."""
    shown = ["–" if x is None else format(x, spec) for x in (before, after)]
    return " → ".join(shown)


def _fmt(x) -> str:
    if x is None or x == "":
        return "–"
    if isinstance(x, float) and 0 < abs(x) < 5e-4:  # a p-value near 0 keeps its magnitude
        return f"{x:.1e}"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def table_columns(rows: list[dict]) -> list[str]:
    """method, forget_ratio, the flattened evaluation keys in split order, then ue and gq."""
    order = {s: k for k, s in enumerate(EVAL_SPLITS)}
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("method", "forget_ratio", "ue", "gq")]
    keys.sort(key=lambda k: order.get(k.split(".")[0], len(order)))  # stable within a split
    return ["method", "forget_ratio", *keys, "ue", "gq"]


def write_tables(rows: list[dict], head: list[dict], out: Path) -> None:
    columns = table_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "main_table.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    write_text_atomic(out / "main_table.md", "\n".join(md) + "\n")
    write_text_atomic(out / "summary.md", summary_markdown(rows, head))
    write_json_atomic(out / "headline.json", head)


PAPER_PROTOCOLS = ("mllmu", "asru_paper")  # they score by MLLMU-Bench's rules (README)
PAPER_SPLITS = (("forget", "↓"), ("test", "↓"), ("retain", "↑"))
PAPER_METRICS = (
    ("mcq_acc", "MCQ"),
    ("cloze_acc", "cloze"),
    ("rougeL_f", "ROUGE-L"),
    ("bleu", "BLEU"),
)
PAPER_TASKS = (("mcq", "MCQ"), ("cloze", "cloze"), ("qa", "generation"))
MODALITIES = ("image", "text")  # as MLLMU-Bench reports them: image+text, text-only questions
PAPER_TABLE = "paper_table"


@dataclass(frozen=True)
class PaperContext:
    """What every number of the paper table was measured under: named in the markdown's
    caption and carried by every CSV row."""

    protocol: str
    about: str  # the protocol in one sentence that names it
    model: str
    weights_sha256: str
    data: str
    seed: int  # draws the forget set and seeds every method
    eval_seed: int  # draws the item sample, the few-shot examples and the test images
    max_items: int | None  # per split and task; None: all
    shots: int
    judge: str  # who scores GQ, or why there is none


def paper_rows(rows: list[dict], context: PaperContext) -> list[dict]:
    """`reproduce`'s rows in the paper's layout: one per forget ratio, questions (`image` or
    `text`, each from the protocol's `by_modality` block) and method, in that order (methods as
    run, the retrain oracle last). Per split (forget, test, retain): MCQ and cloze accuracy,
    ROUGE-L F and BLEU of those questions, and their items per task; forget quality against the
    ratio's own oracle, UE and GQ, each of the whole split; then the context's fields. Empty
    when the rows hold no `by_modality` block (a protocol that does not score by MLLMU-Bench's
    rules)."""
    out = []
    for row in rows:
        for modality in MODALITIES:
            prefixes = {s: f"{s}.by_modality.{modality}." for s, _ in PAPER_SPLITS}
            if not any(k.startswith(tuple(prefixes.values())) for k in row):
                continue
            paper = {"forget_ratio": row["forget_ratio"], "questions": modality}
            paper["method"] = row["method"]
            for split, prefix in prefixes.items():
                paper |= {f"{split}.{k}": row.get(prefix + k) for k, _ in PAPER_METRICS}
            paper["forget_quality"] = row.get("forget.forget_quality")
            paper["ue"], paper["gq"] = row.get("ue"), row.get("gq")
            for split, prefix in prefixes.items():
                paper |= {f"{split}.n_{t}": row.get(f"{prefix}counts.{t}") for t, _ in PAPER_TASKS}
            out.append(paper | dataclasses.asdict(context))
    return sorted(out, key=lambda r: (r["forget_ratio"], MODALITIES.index(r["questions"])))


def paper_markdown(rows: list[dict], head: list[dict], context: PaperContext) -> str:
    """The paper table as markdown: a caption naming the protocol, model, data, seeds and
    items, then per forget ratio a table of `paper_rows` (with its items per split), then
    ASRU's headline ratios over each baseline. Every text is escaped (`escape_text`)."""
    c = context
    items = "all items" if c.max_items is None else f"at most {c.max_items} items"
    lines = [
        f"# Paper layout: protocol `{escape_text(c.protocol)}`",
        "",
        f"{escape_text(c.about)} Model "
        f"`{escape_text(c.model)}` (weights sha256 {escape_text(c.weights_sha256)}); data "
        f"{escape_text(c.data)}; forget set and methods seeded {c.seed}; {items} per split and "
        f"task, sampled with seed {c.eval_seed} (which also draws the few-shot examples and "
        f"test images); {c.shots} few-shot example(s) per multiple-choice item; GQ: "
        f"{escape_text(c.judge)}.",
        "",
        f"UE: {escape_text(DEFINITIONS['ue'])}; this protocol reports no leak_rate, so UE is its "
        "multiple-choice term alone. GQ: "
        f"{escape_text(DEFINITIONS['gq'])}. Forget quality: open-unlearning's (KS-test p-value "
        "of the forget truth ratios against those of the ratio's own retrain oracle; the oracle "
        "is 1 against itself). UE, GQ and forget quality are of the whole split, all questions; "
        "the other columns of the row's questions. `oracle`: the retrain oracle, the same recipe "
        "without the forget people.",
    ]
    header = ["questions", "method"]
    header += [f"{s} {name} {arrow}" for s, arrow in PAPER_SPLITS for _, name in PAPER_METRICS]
    header += ["forget quality ↑", "UE ↑", "GQ (0–5) ↑"]
    keys = [f"{s}.{k}" for s, _ in PAPER_SPLITS for k, _ in PAPER_METRICS]
    keys += ["forget_quality", "ue", "gq"]
    for ratio in sorted({r["forget_ratio"] for r in rows}):
        mine = [r for r in rows if r["forget_ratio"] == ratio]
        counts = "; ".join(
            f"{split} {r['questions']} "
            + "/".join(_fmt(r.get(f"{split}.n_{t}")) for t, _ in PAPER_TASKS)
            for split, _ in PAPER_SPLITS
            for r in {r["questions"]: r for r in mine}.values()
        )
        lines += ["", f"## Forget ratio {ratio:g}", ""]
        lines += [f"Items ({'/'.join(n for _, n in PAPER_TASKS)}): {counts}.", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in mine:
            cells = [escape_text(r["questions"]), escape_text(r["method"])]
            cells += [escape_text(_fmt(r.get(k))) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    if head:
        lines += ["", "## ASRU over the baselines", "", *headline_markdown(head)]
    return "\n".join(lines) + "\n"


def write_paper_table(
    rows: list[dict], head: list[dict], context: PaperContext, out: Path
) -> list[str]:
    """`out/paper_table.csv` (`paper_rows`, every row with its context) and `paper_table.md`
    (`paper_markdown`); returns the file names. ValueError when the rows hold no per-modality
    scores: only the protocols in `PAPER_PROTOCOLS` give them."""
    paper = paper_rows(rows, context)
    if not paper:
        raise ValueError(
            f"no paper layout for protocol {context.protocol!r}: its rows hold no per-modality "
            f"scores; evaluate with one of {', '.join(PAPER_PROTOCOLS)}"
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(paper[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in paper)
    write_text_atomic(out / f"{PAPER_TABLE}.csv", buf.getvalue())
    write_text_atomic(out / f"{PAPER_TABLE}.md", paper_markdown(paper, head, context))
    return [f"{PAPER_TABLE}.csv", f"{PAPER_TABLE}.md"]


@dataclass
class ReproducedFigures:
    """What `load_results` reads back from a `reproduce` folder: the table rows (numbers as
    numbers), headline, manifest, and the data behind the layer-sweep and reward figures."""

    rows: list[dict]
    headline: list[dict]
    manifest: dict
    probes: dict[float, dict]  # forget ratio -> the probe's locate evidence
    curves: dict[float, list[dict]]  # forget ratio -> stage 2 metrics rows


def load_results(out_dir: str | Path) -> ReproducedFigures:
    """Read a `reproduce` folder (e.g. the committed `figures/`) without running anything."""
    out = Path(out_dir)
    missing = [n for n in ("manifest.json", "main_table.csv") if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{out} is not a reproduce folder: {', '.join(missing)} missing; run "
            f"`asru-lab reproduce --out {out}` first"
        )
    manifest = json.loads((out / "manifest.json").read_text())
    with open(out / "main_table.csv", newline="") as fh:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    probes, curves = {}, {}
    for cell in manifest["cells"]:
        path = out / cell["cache_file"]
        if cell["method"] == "asru" and path.is_file():
            record = json.loads(path.read_text())["record"]
            curves[cell["forget_ratio"]] = record.get("reinforce", {}).get("metrics", [])
    for name in manifest.get("probes", []):
        probe_dir = out / name
        ratio = float(probe_dir.parent.name.removeprefix("ratio-"))
        if (probe_dir / "probe.json").is_file():
            probes[ratio] = SteeringProbe.load(probe_dir).evidence
    return ReproducedFigures(rows, manifest["headline"], manifest, probes, curves)


def _number(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
