"""`reproduce`'s tables, written and read back: `main_table.csv` / `.md` (one row per method
and forget ratio: the evaluation JSON flattened with dots, then `ue` and `gq`), `summary.md`,
`headline.json`, and `load_results` for a finished folder such as the committed `figures/`."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from asru_lab.artifacts import write_json_atomic, write_text_atomic
from asru_lab.data.schema import EVAL_SPLITS
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
        lines += [
            "",
            "| forget ratio | ASRU vs | UE base → ASRU | UE gain | GQ base → ASRU | GQ ×|",
        ]
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
    return "\n".join(lines) + "\n"


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
