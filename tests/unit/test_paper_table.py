"""The paper's layout of `reproduce`'s rows (`runs.tables.write_paper_table`, the trade-off
figure per ratio): written from synthetic cell results, no model run."""

from __future__ import annotations

import csv

import pytest

from asru_lab.runs.tables import PaperContext, flatten, paper_rows, write_paper_table
from asru_lab.viz.reproduce import write_paper_figures

CONTEXT = PaperContext(
    protocol="asru_paper",
    about="The `asru_paper` protocol: the ASRU authors' variant of MLLMU-Bench's evaluation.",
    model="org/<b>model</b>",
    weights_sha256="0123abcd",
    data="the embedded synthetic benchmark",
    seed=3,
    eval_seed=5,
    max_items=64,
    shots=1,
    judge="asru_lab's closed-world judge",
)


def split_scores(mcq: float, modalities=("image", "text"), n: int = 64) -> dict:
    """A split as the mllmu protocol reports it: overall and per modality."""
    per = {"mcq_acc": mcq, "cloze_acc": mcq / 2, "rougeL_f": 0.5, "bleu": 0.25}
    counts = {"mcq": n, "cloze": n, "qa": n}
    return {
        **per,
        "counts": counts,
        "by_modality": {m: {**per, "counts": counts} for m in modalities},
    }


def row(method: str, ratio: float, forget_mcq: float, quality: float | None, **more) -> dict:
    """A `reproduce` row: the evaluation splits flattened, forget quality, UE and GQ."""
    modalities = more.pop("modalities", ("image", "text"))
    splits = {
        "forget": split_scores(forget_mcq, modalities),
        "test": split_scores(forget_mcq, modalities, n=30),
        "retain": split_scores(0.95, modalities),
    }
    flat = {"method": method, "forget_ratio": ratio, **flatten(splits)}
    if quality is not None:
        flat["forget.forget_quality"] = quality
    return flat | {"ue": more.get("ue"), "gq": more.get("gq")}


RATIOS = (0.05, 0.1, 0.15)
ROWS = [
    r
    for k, ratio in enumerate(RATIOS)
    for r in (
        row("vanilla", ratio, 1.0, 1e-6, ue=0.0, gq=0.0),
        row("ga", ratio, 0.6, 0.01 * (k + 1), ue=0.5, gq=0.5),
        row("asru", ratio, 0.3, 0.2 * (k + 1), ue=0.9, gq=4.5),
        row("oracle", ratio, 0.25, 1.0, ue=1.0, gq=4.0),
    )
]
HEAD = [
    {
        "forget_ratio": ratio,
        "baseline": "ga",
        "ue_baseline": 0.5,
        "ue_asru": 0.9,
        "ue_gain_pct": 80.0,
        "gq_baseline": 0.5,
        "gq_asru": 4.5,
        "gq_factor": 9.0,
    }
    for ratio in RATIOS
]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_row_per_ratio_questions_and_method_each_oracle_its_ratios_own(tmp_path):
    assert write_paper_table(ROWS, HEAD, CONTEXT, tmp_path) == ["paper_table.csv", "paper_table.md"]
    table = read_csv(tmp_path / "paper_table.csv")
    keys = [(float(r["forget_ratio"]), r["questions"], r["method"]) for r in table]
    methods = ["vanilla", "ga", "asru", "oracle"]
    assert keys == [(x, m, name) for x in RATIOS for m in ("image", "text") for name in methods]
    for split in ("forget", "test", "retain"):
        for metric in ("mcq_acc", "cloze_acc", "rougeL_f", "bleu", "n_mcq", "n_cloze", "n_qa"):
            assert f"{split}.{metric}" in table[0], (split, metric)
    # every row's forget quality is the one measured at its own ratio (against that ratio's oracle)
    ga = {
        float(r["forget_ratio"]): float(r["forget_quality"]) for r in table if r["method"] == "ga"
    }
    assert ga == pytest.approx({0.05: 0.01, 0.1: 0.02, 0.15: 0.03})
    assert {r["forget_quality"] for r in table if r["method"] == "oracle"} == {"1.0"}
    assert {float(r["forget.mcq_acc"]) for r in table if r["method"] == "asru"} == {0.3}
    assert {r["test.n_mcq"] for r in table} == {"30"}
    # every number carries what it was measured under
    for r in table:
        assert (r["protocol"], r["model"], r["seed"], r["eval_seed"], r["max_items"]) == (
            "asru_paper", "org/<b>model</b>", "3", "5", "64"
        )  # fmt: skip


def test_the_markdown_caption_names_protocol_model_items_and_seeds(tmp_path):
    write_paper_table(ROWS, HEAD, CONTEXT, tmp_path)
    text = (tmp_path / "paper_table.md").read_text()
    assert text.startswith("# Paper layout: protocol `asru_paper`")
    for expected in ("authors&#39; variant", "weights sha256 0123abcd", "seeded 3",
                     "at most 64 items per split and task", "sampled with seed 5",
                     "1 few-shot example", "closed-world judge"):  # fmt: skip
        assert expected in text, expected
    assert "<b>" not in text and "&lt;b&gt;model&lt;/b&gt;" in text  # the model name is escaped
    for ratio in ("0.05", "0.1", "0.15"):
        assert f"## Forget ratio {ratio}" in text
    assert "forget image 64/64/64; forget text 64/64/64; test image 30/30/30" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| questions |"))
    assert "forget MCQ ↓" in header and "retain BLEU ↑" in header and "UE ↑" in header
    assert "MLLMU" not in header  # a column is the protocol's, named in the caption
    assert sum(line.startswith("| text | oracle |") for line in lines) == 3
    assert "| 0.1 | ga | 0.500 → 0.900 | +80.0 % | 0.50 → 4.50 | 9.0× |" in text


def test_a_number_the_evaluation_could_not_give_is_a_dash_and_an_empty_cell(tmp_path):
    rows = [row("vanilla", 0.1, 0.2, None), row("ga", 0.1, 0.2, None)]  # no oracle, at chance
    write_paper_table(rows, [], CONTEXT, tmp_path)
    table = read_csv(tmp_path / "paper_table.csv")
    assert {(r["forget_quality"], r["ue"], r["gq"]) for r in table} == {("", "", "")}
    text = (tmp_path / "paper_table.md").read_text()
    assert "| image | ga |" in text and text.count("| – | – | – |") == 4
    assert "ASRU over the baselines" not in text


def test_image_only_rows_have_no_text_rows_and_method_names_are_escaped(tmp_path):
    rows = [row("<script>x</script>", 0.1, 0.5, 0.5, modalities=("image",))]
    write_paper_table(rows, [], CONTEXT, tmp_path)
    assert [r["questions"] for r in read_csv(tmp_path / "paper_table.csv")] == ["image"]
    text = (tmp_path / "paper_table.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text


def test_rows_of_a_protocol_without_per_modality_scores_have_no_paper_layout(tmp_path):
    asru_lab_row = {"method": "vanilla", "forget_ratio": 0.1, "forget.leak_rate": 1.0}
    assert paper_rows([asru_lab_row], CONTEXT) == []
    with pytest.raises(ValueError, match="evaluate with one of mllmu, asru_paper"):
        write_paper_table([asru_lab_row], [], CONTEXT, tmp_path)
    assert not (tmp_path / "paper_table.csv").exists()


def test_a_trade_off_figure_per_ratio_named_by_ratio_and_protocol(tmp_path):
    rows = [r | {"retain.leak_rate": None} for r in ROWS]  # mllmu: no retain recall
    rows[1] = rows[1] | {"method": "<img src=x onerror=alert(1)>"}
    written = write_paper_figures(rows, tmp_path, "asru_paper", png=False)
    stems = ["tradeoff_ratio0_05", "tradeoff_ratio0_1", "tradeoff_ratio0_15"]
    assert set(written) == {*(f"{s}.html" for s in stems), "plotly.min.js", "figures.html"}
    page = (tmp_path / "tradeoff_ratio0_1.html").read_text()
    assert "forget ratio 0.1 (protocol asru_paper)" in page
    assert "retain MCQ accuracy" in page and "mean of recall and MCQ" not in page
    assert (
        "&lt;img src=x onerror=alert(1)&gt;" in (tmp_path / "tradeoff_ratio0_05.html").read_text()
    )
    assert "forget ratio 0.15" in (tmp_path / "figures.html").read_text()
