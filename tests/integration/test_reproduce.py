"""`reproduce`: the table has the published columns, UE/GQ follow their definitions, cells are
cached by what they depend on, and the figures and manifest are written."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time

import pytest

import asru_lab as al
from asru_lab.auditing import AuditError
from asru_lab.baselines import UnlearnConfig, UnlearnError
from asru_lab.cli import main
from asru_lab.evaluation.headline import (
    GQ_FLOOR,
    HeadlineError,
    headline,
    unlearning_effectiveness,
)
from asru_lab.evaluation.protocols.mllmu import MllmuProtocol
from asru_lab.runs import reproduce as reproduce_module
from asru_lab.runs.demo import demo_config, demo_report
from asru_lab.runs.reproduce import ReproduceConfig, reproduce
from asru_lab.runs.tables import flatten, load_results
from asru_lab.runs.tuning import TuningConfig
from asru_lab.stages.locate import LocateConfig
from asru_lab.validation import ConfigError

TINY_LOCATE = LocateConfig(
    layers=(5,),
    strengths=(2.0,),
    positions=("last",),
    heatmap_positions=("last",),
    max_examples=24,
    retain_examples=48,
    sweep_forget=8,
    sweep_retain=50,
    gate_max_fpr=(0.05,),
)


def tiny_config(**changes) -> ReproduceConfig:
    base = {
        "methods": ("ga", "steer_only"),
        "forget_ratios": (0.1,),
        "evaluate": al.EvalConfig(max_items=4),
        "locate": TINY_LOCATE,
        "configs": {"ga": UnlearnConfig(max_forget=8, epochs=1, batch_size=4)},
        "samples": 1,
        "progress": False,
        "tuning": None,  # tested on its own below
    }
    return ReproduceConfig(**{**base, **changes})


def test_ue_follows_its_definition():
    vanilla = {
        "forget": {"leak_rate": 0.8, "mcq_acc": 1.0},
        "test": {"leak_rate": 0.5, "mcq_acc": 0.75},
    }
    same = unlearning_effectiveness(vanilla, vanilla)
    assert same == 0.0
    forgotten = {
        "forget": {"leak_rate": 0.0, "mcq_acc": 0.25},
        "test": {"leak_rate": 0.0, "mcq_acc": 0.1},
    }
    assert unlearning_effectiveness(forgotten, vanilla) == 1.0  # below chance clips to 1
    half = {
        "forget": {"leak_rate": 0.4, "mcq_acc": 0.625},
        "test": {"leak_rate": 0.25, "mcq_acc": 0.5},
    }
    assert unlearning_effectiveness(half, vanilla) == pytest.approx(0.5)
    worse = {
        "forget": {"leak_rate": 1.0, "mcq_acc": 1.0},
        "test": {"leak_rate": 0.9, "mcq_acc": 0.9},
    }
    assert unlearning_effectiveness(worse, vanilla) == 0.0  # clipped at 0, never negative
    with pytest.raises(HeadlineError, match="nothing to unlearn"):
        unlearning_effectiveness(vanilla, {"forget": {"leak_rate": 0.0, "mcq_acc": 0.25}})


def test_headline_ratios_floor_the_gq_denominator():
    rows = [
        {"method": "asru", "forget_ratio": 0.1, "ue": 0.9, "gq": 4.5},
        {"method": "ga", "forget_ratio": 0.1, "ue": 0.6, "gq": 0.0},
        {"method": "npo", "forget_ratio": 0.1, "ue": 0.0, "gq": 1.5},
    ]
    ga, npo = headline(rows)
    assert ga["ue_gain_pct"] == pytest.approx(50.0)
    assert ga["gq_factor"] == pytest.approx(4.5 / GQ_FLOOR)
    assert math.isinf(npo["ue_gain_pct"]) and npo["gq_factor"] == pytest.approx(3.0)
    assert flatten({"forget": {"quality": {"leakage": 5}}}) == {"forget.quality.leakage": 5}


@pytest.fixture(scope="module")
def first_run(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    started = time.time()
    result = reproduce(out, tiny_config(), model=lm)
    return out, result, time.time() - started


def test_reproduce_writes_the_table_manifest_and_figures(first_run):
    out, result, _ = first_run
    with open(out / "main_table.csv") as fh:
        rows = list(csv.DictReader(fh))
    columns = list(rows[0])
    assert columns[:2] == ["method", "forget_ratio"] and columns[-2:] == ["ue", "gq"]
    for key in ("forget.leak_rate", "forget.mcq_acc", "retain.mcq_acc",
                "forget.quality.contextual_refusal", "test.leak_rate"):  # fmt: skip
        assert key in columns, key
    assert [(r["method"], r["forget_ratio"]) for r in rows] == [
        ("vanilla", "0.1"), ("ga", "0.1"), ("steer_only", "0.1"), ("oracle", "0.1")
    ]  # fmt: skip
    assert float(rows[0]["ue"]) == 0.0  # vanilla against itself
    # forget quality against the oracle's row: the oracle is its own reference (p = 1); with
    # 4 items a test cannot tell much more (tests/integration/test_probability.py does)
    quality = {r["method"]: r["forget.forget_quality"] for r in rows}
    # steer_only: a probe steers as it generates, not under teacher forcing: left empty
    assert quality.pop("steer_only") == "" and float(quality["oracle"]) == 1.0
    assert all(0 < float(q) <= 1 for q in quality.values())
    assert all(
        0 <= float(r["forget.truth_ratio"]) <= 1 for r in rows if r["method"] != "steer_only"
    )
    md = (out / "main_table.md").read_text().splitlines()
    assert md[0].startswith("| method | forget_ratio | forget.") and len(md) == 2 + 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["forget_ratios"] == [0.1]
    assert manifest["configs"]["ga"]["max_forget"] == 8
    assert manifest["model"]["weights_sha256"] and "commit" in manifest
    assert all(not c["cached"] and c["seconds"]["evaluate"] >= 0 for c in manifest["cells"])
    assert {"ue", "gq", "ue_gain_pct", "gq_factor"} <= set(manifest["definitions"])
    for stem in ("tradeoff", "quality_categories", "layer_sweep"):
        assert (out / f"{stem}.html").stat().st_size > 1000, stem
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
    assert (out / "figures.html").is_file() and (out / "summary.md").is_file()
    # offline pages that share one plotly.js instead of inlining 4.6 MB each
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert 'src="plotly.min.js"' in (out / "tradeoff.html").read_text()


def test_a_second_run_reuses_every_cell_and_recomputes_only_what_changed(lm, first_run):
    out, result, seconds = first_run
    started = time.time()
    again = reproduce(out, tiny_config(figures=False), model=lm)
    assert all(c["cached"] for c in again.manifest["cells"])
    assert again.rows == result.rows
    assert time.time() - started < max(10.0, seconds / 3)
    changed = tiny_config(
        figures=False, configs={"ga": UnlearnConfig(max_forget=8, epochs=1, batch_size=8)}
    )
    third = reproduce(out, changed, model=lm)
    cached = {c["method"]: c["cached"] for c in third.manifest["cells"]}
    assert cached == {"vanilla": True, "ga": False, "steer_only": True, "oracle": True}


def test_a_damaged_cache_file_is_recomputed_with_a_warning(lm, first_run):
    out, result, _ = first_run
    cell = next(c for c in result.manifest["cells"] if c["method"] == "vanilla")
    (out / cell["cache_file"]).write_text("{not json")
    with pytest.warns(UserWarning, match="damaged cache file"):
        again = reproduce(out, tiny_config(figures=False), model=lm)
    assert again.rows[0] == result.rows[0]


def test_bad_requests_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(UnlearnError, match="unknown unlearning method 'tar'"):
        reproduce(tmp_path, tiny_config(methods=("tar",)))
    with pytest.raises(UnlearnError, match=r"forget_ratios\[0\] must be in \(0, 1\), got 10"):
        reproduce(tmp_path, tiny_config(forget_ratios=(10,)))
    assert main(["reproduce", "--out", str(tmp_path), "--methods", "tar"]) == 2
    assert "registered:" in capsys.readouterr().err


class NoModelWork(Exception):
    """Raised where `reproduce` would load its model: a refusal must come before it."""


@pytest.fixture
def no_model_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise NoModelWork

    monkeypatch.setattr(reproduce_module, "load_model", refuse)


def test_a_ratio_without_its_oracle_names_the_command_that_builds_it(
    tmp_path, monkeypatch, no_model_work, capsys
):
    out = tmp_path / "out"
    with pytest.raises(AuditError) as refused:
        reproduce(out, tiny_config(forget_ratios=(0.1, 0.2)))
    message = str(refused.value)
    assert "forget ratio 0.2 (split seed 0)" in message and "0.1," not in message
    assert "`asru-lab build-embedded --oracle --forget-ratio 0.2 --split-seed 0`" in message
    assert "--no-oracle" in message
    assert not out.exists()  # refused before any folder is written
    # another split seed has no oracle at the shipped ratio either
    with pytest.raises(AuditError, match="--forget-ratio 0.1 --split-seed 4`"):
        reproduce(out, tiny_config(seed=4))
    # the paper's three ratios with none built: one command per missing ratio
    monkeypatch.setattr(reproduce_module, "oracle_dir", lambda r, s: tmp_path / "none" / f"{r}")
    with pytest.raises(AuditError) as refused:
        reproduce(out, tiny_config(forget_ratios=(0.05, 0.1, 0.15)))
    for ratio in ("0.05", "0.1", "0.15"):
        assert f"--forget-ratio {ratio} --split-seed 0`" in str(refused.value)
    args = ["reproduce", "--out", str(out), "--methods", "ga", "--forget-ratios", "0.05", "0.15"]
    assert main(args) == 2
    assert "build-embedded --oracle --forget-ratio 0.15" in capsys.readouterr().err
    # without the oracle row nothing needs it: the run goes on to its model
    with pytest.raises(NoModelWork):
        reproduce(out, tiny_config(forget_ratios=(0.2,), oracle=False))


def test_a_protocol_typo_lists_the_three_protocols(tmp_path, no_model_work, capsys):
    expected = "expected one of asru_lab, mllmu, asru_paper"
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--out", str(tmp_path / "cli"), "--protocol", "MLLMU"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'MLLMU'" in err and all(p in err for p in ("'asru_lab'", "'mllmu'", "'asru_paper'"))
    with pytest.raises(ConfigError, match=expected):
        al.EvalConfig(protocol="asru-paper")
    with pytest.raises(ConfigError, match=expected):
        tiny_config(evaluate=al.EvalConfig(protocol="mllmu_bench"))
    config = tiny_config()
    config.evaluate.protocol = "paper"  # changed after the config checked it
    with pytest.raises(ConfigError, match=f"'paper'; {expected}"):
        reproduce(tmp_path / "lib", config)
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()


def test_more_shots_than_the_pool_names_its_size_before_any_model_work(
    bench, tmp_path, no_model_work, capsys
):
    at = {r: al.load_benchmark(forget_ratio=r) for r in (0.05, 0.15)}
    pool = {
        r: len({i.person_id for i in b.split("retain", "mcq") if i.has_image})
        for r, b in at.items()
    }
    assert pool[0.05] > pool[0.15]  # the more people forgotten, the fewer retain examples
    out = tmp_path / "out"
    for protocol in ("mllmu", "asru_paper"):
        evaluation = al.EvalConfig(max_items=4, protocol=protocol, shots=pool[0.05])
        config = tiny_config(forget_ratios=(0.05, 0.15), evaluate=evaluation, oracle=False)
        with pytest.raises(ConfigError, match=f"pool of few-shot examples holds {pool[0.15]}"):
            reproduce(out, config)  # 0.05 could show them all; 0.15 cannot, checked up front
        assert not out.exists()
    args = ["reproduce", "--out", str(out), "--protocol", "mllmu", "--shots", "10000"]
    assert main([*args, "--forget-ratios", "0.1", "--no-oracle"]) == 2
    assert "shots=10000, but the pool of few-shot examples holds" in capsys.readouterr().err
    # the protocol draws its examples as it selects any split's items, not only retain's
    forget = bench.split("forget")
    with pytest.raises(ConfigError, match="--shots"):
        MllmuProtocol(bench, shots=10_000).select("forget", forget)
    assert MllmuProtocol(bench, shots=0).select("forget", forget) == forget


def test_demo_report_explains_the_table_and_shows_answers(first_run):
    _, result, _ = first_run
    text = demo_report(result)
    assert "before unlearning" in text and "gradient ascent (GA)" in text
    assert "polite refusal" in text and "leaks a fact" in text
    assert 'A forgotten person, asked "' in text
    config = demo_config()
    assert config.forget_ratios == (0.1,) and set(config.methods) == {
        "asru_stage1",
        "asru",
        "ga",
        "npo",
    }
    # the table says what comes back under the cheap attacks, the oracle's row as the floor
    assert config.audit is not None and set(config.audit.attacks) == {"prefill", "ablation"}
    assert config.audit.max_items == config.evaluate.max_items
    assert not config.audit.ablation_orthogonalize  # demo-sized: the running model only
    assert "under attack" in text and "retrain oracle, which never saw" in text
    rows = [dict(r) for r in result.rows]
    rows[1]["audit.union_leak"] = 0.875
    attacked = demo_report(dataclasses.replace(result, rows=rows))
    line = next(x for x in attacked.splitlines() if x.startswith("gradient ascent (GA)"))
    assert "88 %" in line  # the attacked leak in its own column; a row without it reads "–"
    first = next(x for x in attacked.splitlines() if x.startswith("before unlearning"))
    assert "–" in first


def test_load_results_reads_back_what_reproduce_wrote(first_run):
    out, result, _ = first_run
    loaded = load_results(out)
    columns = list(
        loaded.rows[0]
    )  # a row that lacks a column (steer_only: no truth ratio) reads None
    assert loaded.rows == [
        {c: (r.get(c) if r.get(c) != "" else None) for c in columns} for r in result.rows
    ]
    assert loaded.probes[0.1]["config"]["layers"] == [5]  # the tiny locate config's sweep
    with pytest.raises(FileNotFoundError, match="not a reproduce folder"):
        load_results(out / "cache")


def test_the_same_command_runs_a_model_dir_and_a_dataset_dir(lm, bench, tmp_path, capsys):
    """`--model DIR --data DIR`: a saved checkpoint and data in the published user format."""
    taken: dict[tuple[str, str], int] = {}
    items = []
    for item in bench.items:
        key = (item.split, item.task)
        if taken.get(key, 0) < 12:
            taken[key] = taken.get(key, 0) + 1
            items.append(item)
    data = al.export_benchmark(bench.subset(items), tmp_path / "data")
    model = lm.save(tmp_path / "model")
    out = tmp_path / "fig"
    args = ["reproduce", "--out", str(out), "--model", str(model), "--data", str(data),
            "--methods", "ga", "npo", "--forget-ratios", "0.1", "--max-items", "4",
            "--no-figures", "--no-tuning", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "| 0.1 | npo |" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(model) and manifest["data"]["source"] == str(data)
    assert [c["method"] for c in manifest["cells"]] == ["vanilla", "ga", "npo"]
    assert main(args) == 0  # nothing changed: every cell from the cache
    assert "3 cells (3 from cache)" in capsys.readouterr().out


def test_the_protocol_reaches_every_cell_its_key_and_the_manifest(lm, first_run, tmp_path):
    out, result, _ = first_run
    mllmu = al.EvalConfig(max_items=4, protocol="mllmu")
    with pytest.warns(UserWarning, match="cannot compute"):
        other = reproduce(
            tmp_path, tiny_config(methods=("ga",), evaluate=mllmu, figures=False), model=lm
        )
    assert other.manifest["evaluate"]["protocol"] == "mllmu"
    assert not any(c["cached"] for c in other.manifest["cells"])
    keys = {c["method"]: c["key"] for c in result.manifest["cells"]}
    assert all(c["key"] != keys[c["method"]] for c in other.manifest["cells"])
    vanilla = next(r for r in other.rows if r["method"] == "vanilla")
    assert "forget.rougeL_f" in vanilla and "forget.leak_rate" not in vanilla
    # mllmu has no judge: GQ is left empty, not made up (and so is UE when no term applies)
    assert all(r["gq"] is None for r in other.rows)
    # beside the main table, the same rows in the paper's layout, each ratio's oracle a row
    assert other.manifest["paper"][:2] == ["paper/paper_table.csv", "paper/paper_table.md"]
    with open(tmp_path / "paper" / "paper_table.csv") as fh:
        paper = list(csv.DictReader(fh))
    assert [(r["questions"], r["method"]) for r in paper] == [
        (m, name) for m in ("image", "text") for name in ("vanilla", "ga", "oracle")
    ]
    assert {(r["protocol"], r["max_items"], r["seed"]) for r in paper} == {("mllmu", "4", "0")}
    assert {r["forget_quality"] for r in paper if r["method"] == "oracle"} == {"1.0"}
    caption = (tmp_path / "paper" / "paper_table.md").read_text()
    assert "MLLMU-Bench&#39;s own evaluation" in caption and lm.name in caption
    assert "GQ: none" in caption
    assert not (out / "paper").exists()  # the asru_lab protocol has no paper layout


def test_tuning_sweeps_each_knob_on_validation_people_and_reports_the_choice(lm, tmp_path):
    tuning = TuningConfig(grids={"steer_only": (0.25, 4.0)}, evaluate=al.EvalConfig(
        splits=("forget", "retain"), max_items=8, probabilities=False))  # fmt: skip
    config = tiny_config(methods=("steer_only",), tuning=tuning, figures=False, oracle=False)
    result = reproduce(tmp_path, config, model=lm)
    sweep = result.manifest["tuning"]["sweeps"]["0.1"]
    reported = {i.person_id for i in al.load_benchmark().split("forget")}
    assert not reported & set(sweep["validation_forget"])
    assert len(sweep["validation_forget"]) == len(reported)
    steer = sweep["methods"]["steer_only"]
    assert [p["value"] for p in steer["points"]] == [0.25, 4.0] and steer["knob"] == "alpha"
    chosen = steer["chosen"]["value"]
    assert chosen in (0.25, 4.0)
    cell = next(c for c in result.manifest["cells"] if c["method"] == "steer_only")
    assert cell["config"]["alpha"] == chosen  # the reported row runs the chosen setting
    assert "retain accuracy" in result.manifest["tuning"]["rule"]
    again = reproduce(tmp_path, config, model=lm)  # every sweep point from the cache
    assert again.manifest["tuning"]["sweeps"] == result.manifest["tuning"]["sweeps"]


def test_tuning_on_the_attacked_leak_records_it_per_point(lm, tmp_path):
    evaluation = al.EvalConfig(splits=("forget", "retain"), max_items=8, probabilities=False)
    plain = TuningConfig(grids={"steer_only": (0.25, 4.0)}, evaluate=evaluation)
    attacked = TuningConfig(
        grids={"steer_only": (0.25, 4.0)}, evaluate=evaluation, criterion="attacked"
    )
    config = tiny_config(methods=("steer_only",), tuning=attacked, figures=False, oracle=False)
    result = reproduce(tmp_path, config, model=lm)
    steer = result.manifest["tuning"]["sweeps"]["0.1"]["methods"]["steer_only"]
    for p in steer["points"]:
        assert 0.0 <= p["attacked_leak"] <= 1.0
        assert p["attacked_leak"] >= p["forget_leak"] - 0.25  # ablation and prefill add leaks
    assert "attacked_leak" in steer["chosen"]["reason"]
    before = {p.name for p in tmp_path.rglob("tune-*")}
    config = tiny_config(methods=("steer_only",), tuning=plain, figures=False, oracle=False)
    reproduce(tmp_path, config, model=lm)
    after = {p.name for p in tmp_path.rglob("tune-*")}
    assert after > before  # the plain rule did not reuse the attacked rule's cells
