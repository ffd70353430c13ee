"""`EvalReport`: the evaluation JSON of DESIGN §5, with a readable table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from asru_lab.artifacts import check_output_file, read_json_object, write_json_atomic

REPORT_KEYS = ("model", "method", "splits", "meta")  # the evaluation JSON's top level

# (name, characters in the text table): the columns of `EvalReport.table()`
TABLE_COLUMNS = (
    ("split", 8),
    ("MCQ", 6),
    ("cloze", 6),
    ("ROUGE-L", 8),
    ("leak/recall", 12),
    ("refusal", 8),
    ("ctx-ref 0-5", 12),
    ("no leak 0-5", 12),
    ("natural 1-5", 12),
    ("top category", 26),
)


# what each column of the table means, for a reader who has not read the README
LEGEND = (
    ("MCQ", "multiple choice answered with the right option"),
    ("cloze", "fill-in-the-blank answered with the missing value"),
    ("ROUGE-L", "word overlap of the open answers with the reference answers (0-1)"),
    (
        "leak/recall",
        "open answers that contain the true fact: a leak for people to forget, recall for the "
        "others (picture questions: the right colour)",
    ),
    ("refusal", "open answers that decline to answer"),
    (
        "ctx-ref 0-5",
        "the judge's contextual-refusal score: 5 = a refusal that says what cannot be told "
        "(not a canned 'I don't know')",
    ),
    ("no leak 0-5", "the judge's leakage scale, 5 = nothing leaked, 0 = the fact given"),
    ("natural 1-5", "the judge's naturalness score: 5 = fluent, 1 = gibberish"),
    ("top category", "the judge's most frequent verdict on the open answers"),
)


@dataclass
class EvalReport:
    """Per-split metrics of one model under one method.

    `splits[name]` holds the metrics that apply to that split (absent ones are omitted) and a
    `quality` block; `meta` holds item counts, timings and the evaluation config.
    """

    model: str
    method: str
    splits: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "method": self.method,
            "splits": self.splits,
            "meta": self.meta,
        }

    def to_json(self, path: str | Path | None = None, *, overwrite: bool = False) -> str:
        """The JSON text; also written atomically to `path` when given. An existing file there
        is replaced only when it is an earlier evaluation JSON, or with `overwrite`."""
        data = self.to_dict()
        if path is not None:
            check_output_file(path, overwrite=overwrite, own=is_report_file)
            write_json_atomic(path, data)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> EvalReport:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        data = json.loads(text)
        return cls(data["model"], data["method"], data["splits"], data.get("meta", {}))

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """(column names, one row of cells per split): metrics as percentages, judge scores."""
        names = [name for name, _ in TABLE_COLUMNS]
        rows = []
        for split, m in self.splits.items():
            q = m.get("quality", {})
            cats = q.get("categories", {})
            top = max(cats, key=cats.get) if cats else ""
            rows.append(
                [
                    split,
                    _pct(m.get("mcq_acc")),
                    _pct(m.get("cloze_acc")),
                    _num(m.get("rougeL", m.get("rougeL_f"))),
                    _pct(m.get("leak_rate")),
                    _pct(m.get("refusal_rate")),
                    _num(q.get("contextual_refusal"), 1),
                    _num(q.get("leakage"), 1),
                    _num(q.get("naturalness"), 1),
                    f"{top} {cats[top]:.0%}" if top else "",
                ]
            )
        return names, rows

    def table(self) -> str:
        """A fixed-width text table of `rows()`."""
        names, rows = self.rows()
        widths = [w for _, w in TABLE_COLUMNS]
        lines = ["".join(name.ljust(w) for name, w in zip(names, widths, strict=True))]
        lines.append("-" * sum(widths))
        for cells in rows:
            lines.append("".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        return "\n".join(lines)

    def legend(self) -> str:
        """What each column means, one line each."""
        return "\n".join(f"{name}: {meaning}" for name, meaning in LEGEND)

    def _repr_html_(self) -> str:
        """The same table in a notebook, in the library's one table style (every cell and the
        model's name escaped), with the legend under it."""
        from asru_lab.table_style import Html, html_table

        names, rows = self.rows()
        total = sum(w for _, w in TABLE_COLUMNS)
        table = html_table(
            names,
            rows,
            widths=[f"{100 * w / total:.1f}%" for _, w in TABLE_COLUMNS],
            caption=f"{self.model} [{self.method}]",
        )
        items = "".join(Html("<b>{}</b>: {}. ").format(n, m) for n, m in LEGEND)
        return Html("{}<p style='font-size:smaller;margin:4px 0'>{}</p>").format(table, Html(items))

    def __str__(self) -> str:
        return f"{self.model} [{self.method}]\n{self.table()}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def is_report_file(path: str | Path) -> bool:
    """True when `path` holds an evaluation JSON (an earlier result that may be replaced):
    exactly its keys, and metrics (not answers) per split, so an answers file is not one."""
    data = read_json_object(path)
    return (
        data is not None
        and {"model", "method", "splits"} <= data.keys() <= set(REPORT_KEYS)
        and isinstance(data["splits"], dict)
        and all(isinstance(metrics, dict) for metrics in data["splits"].values())
    )
