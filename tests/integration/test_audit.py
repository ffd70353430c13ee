"""`audit` on the embedded model at a small size: every attack runs and reports, the report
round-trips, a seed repeats it, the command line writes it, and bad input is refused with a
message naming the problem."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import asru_lab as al
from asru_lab.auditing import (
    AUDIT_PROTOCOL,
    AuditConfig,
    AuditError,
    AuditReport,
    audit,
    check_oracle,
)
from asru_lab.cli import main
from asru_lab.data.schema import Benchmark
from asru_lab.models.embedded import oracle_dir
from tests.tiny_models import make_tiny_qwen2_5_vl

SMALL = AuditConfig(max_items=4, relearn_steps=(0, 2), progress=False)


@pytest.fixture(scope="module")
def report(lm, bench) -> AuditReport:
    return audit(lm, bench, reference=lm, config=SMALL)


def test_every_attack_reports_on_forget_and_test(report):
    results = report.results
    assert set(results) == {"none", *SMALL.attacks, "leaks", "union"}  # no oracle given
    for block in (results["none"], results["prefill"]):
        assert {"forget_leak", "test_leak", "n_forget", "n_test"} <= set(block)
    assert set(results["inputs"]) == set(SMALL.perturbations)
    curves = results["relearn"]["curves"]
    assert [p["steps"] for p in curves["forget"]] == [0, 2]
    assert [p["steps"] for p in curves["benign"]] == [0, 2]
    assert set(results["relearn"]["taught_people"]).isdisjoint(
        results["relearn"]["measured_people"]
    )
    assert len(results["linear_probe"]["accuracy"]) == report.model["num_layers"]
    # the probe's test set is sampled like every other measurement: at most max_items per split
    assert 0 < results["linear_probe"]["n_test"] <= 2 * SMALL.max_items
    assert 0 < results["linear_probe"]["n_train"] <= 8 * SMALL.max_items
    assert results["logit_lens"]["forget"]["n"] > 0
    assert 0 <= results["membership"]["loss_auc"] <= 1
    # audited against itself the vanilla model has no direction to ablate: it refuses nothing
    # (no refusal direction) and its states are the reference's; the audit says so
    why = results["ablation"]["per_layer"]["skipped"]
    assert why.startswith("no candidate direction") and "a refusal direction needs both" in why
    assert "the audited model's states equal the reference's there" in why


def test_vanilla_model_leaks_everywhere(report):
    """The reference audited against itself: everything is known, nothing is hidden."""
    s = report.summary
    assert s["forget_leak"] >= 0.75
    assert s["recovered_leak"] >= s["forget_leak"]
    assert s["mia_auc"] >= 0.9  # its forget people's answers are far likelier than strangers'
    assert s["ablation_leak"] is None  # nothing to ablate, so no ablation leak


def test_every_answer_is_in_the_records(report):
    attacks = {r["attack"] for r in report.records}
    assert {"none", "ablation_fit_none", "prefill", "input_jpeg", "logit_lens"} <= attacks
    relearnt = {
        "relearn_k0",
        "relearn_benign_lora_lr0.001_k2",
        "relearn_unrelated_full_lr0.0003_k2",
    }
    assert {*relearnt, "membership", "quantize"} <= attacks
    prefill = [r for r in report.records if r["attack"] == "prefill"]
    assert all(r["prefix"] and r["answer"] is not None for r in prefill)


def test_report_round_trips_with_its_page(report, tmp_path):
    out = report.save(tmp_path / "audit")
    again = AuditReport.load(out)
    assert again.summary == report.summary
    assert again.results == json.loads(json.dumps(report.results))
    assert again.records == json.loads(json.dumps(report.records))
    page = (out / "audit.html").read_text()
    assert "Relearning attack" in page and "Leak under each attack" in page


def test_a_seed_repeats_the_audit(lm, bench, report):
    asked = ("prefill", "relearn", "mcq_likelihood")  # relearning's points hold the MCQ's
    again = audit(lm, bench, reference=lm, config=replace(SMALL, attacks=asked))
    assert again.results["prefill"] == report.results["prefill"]
    assert again.results["relearn"] == report.results["relearn"]
    other = audit(lm, bench, config=replace(SMALL, attacks=(), seed=1))
    assert [r["question"] for r in other.records] != [
        r["question"] for r in report.records if r["attack"] == "none"
    ]


def test_the_audited_model_is_not_changed(lm, bench):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    audit(lm, bench, config=replace(SMALL, attacks=("relearn", "ablation")))
    after = lm.model.state_dict()
    assert all(after[k].equal(v) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_cli_audit_writes_the_report(tmp_path, capsys):
    out = tmp_path / "audit"
    args = ["audit", "--out", str(out), "--max-items", "3", "--relearn-steps", "0", "1"]
    grid = ["--relearn-modes", "lora", "--relearn-lr", "2e-3", "--relearn-data", "forget"]
    assert main([*args, *grid, "--attacks", "prefill", "relearn", "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.split("\nwrote")[0])
    report = AuditReport.load(out)
    assert printed.rstrip().splitlines()[-1] == report.verdict("the embedded model")
    assert report.summary == summary
    assert set(report.results) == {
        *("none", "prefill", "relearn", "leaks", "union", "oracle_union", "oracle_side")
    }
    # the relearning grid the flags asked: one LoRA setting taught the forget facts alone
    (setting,) = report.results["relearn"]["settings"]
    assert (setting["mode"], setting["lr"], set(setting["curves"])) == ("lora", 2e-3, {"forget"})
    assert report.reference is not None  # the embedded model, the default reference
    assert (out / "items.jsonl").is_file() and (out / "audit.html").is_file()


# --- bad input ---------------------------------------------------------------------------------


def test_reference_of_another_architecture_is_refused(lm, bench, tmp_path):
    other = al.load_model(make_tiny_qwen2_5_vl(tmp_path / "qwen25"))
    with pytest.raises(AuditError, match="reference") as info:
        audit(lm, bench, reference=other, config=SMALL)
    assert "hidden_size" in str(info.value) and lm.name in str(info.value)


def test_empty_forget_split_is_refused(lm, bench):
    kept = [i for i in bench.items if i.split not in ("forget", "test")]
    people = [
        replace(p, split="retain") if p.split == "forget" else p for p in bench.people.values()
    ]
    empty = Benchmark(people, kept, name="no-forget", image_loader=bench.load_image)
    with pytest.raises(AuditError, match="forget split of no-forget is empty"):
        audit(lm, empty, config=SMALL)


def test_oracle_of_another_forget_set_is_refused_naming_both(lm, bench):
    other = al.load_benchmark(forget_ratio=0.05)
    fake = lm.clone()
    fake.info = {
        "oracle": {
            "forget_ratio": 0.05,
            "split_seed": 0,
            "forget_ids": sorted(p.id for p in other.people.values() if p.split == "forget"),
        }
    }
    with pytest.raises(AuditError, match="forget_ratio 0.05") as info:
        audit(lm, bench, oracle=fake, config=SMALL)
    message = str(info.value)
    assert "forget_ratio 0.1" in message
    for pid in sorted(p.id for p in bench.people.values() if p.split == "forget")[:3]:
        assert pid in message


def test_a_model_without_an_oracle_record_is_not_an_oracle(lm, bench):
    with pytest.raises(AuditError, match="not a retrain oracle"):
        check_oracle(lm, bench)


def test_the_shipped_oracle_fits_the_default_forget_set(bench):
    assert (oracle_dir(0.1, 0) / "config.json").is_file(), "the oracle must ship"
    oracle = al.load_oracle()
    check_oracle(oracle, bench)  # built without exactly these forget people
    assert oracle.info["oracle"]["forget_ratio"] == 0.1
    with pytest.raises(AuditError, match="build-embedded --oracle --forget-ratio 0.15"):
        al.load_oracle(0.15, 0)


# --- reproduce --audit -------------------------------------------------------------------------


def test_reproduce_audit_adds_columns_the_oracle_row_and_figures(tmp_path):
    config = al.ReproduceConfig(
        methods=("ga",),
        forget_ratios=(0.1,),
        evaluate=al.EvalConfig(max_items=4),
        configs={"ga": al.UnlearnConfig(max_forget=8, epochs=1, batch_size=4)},
        samples=1,
        progress=False,
        png=False,
        audit=AuditConfig(
            max_items=3, relearn_steps=(0, 1), attacks=("prefill", "relearn", "linear_probe")
        ),
    )
    result = al.reproduce(tmp_path / "r", config)
    by_method = {r["method"]: r for r in result.rows}
    assert set(by_method) == {"vanilla", "ga", "oracle"}
    for row in by_method.values():
        for column in ("audit.prefill_leak", "audit.relearn_settings", "audit.probe_acc_best"):
            assert row[column] is not None, (row["method"], column)
        # one step teaches the oracle nothing: every relearning curve fails its control
        assert row["audit.relearn_leak_k1"] is None and row["audit.relearn_valid_settings"] == 0
        assert "audit.recovered_leak" in row
    # the oracle never saw the forget people: its prefill leak is far below the vanilla model's
    assert by_method["oracle"]["audit.prefill_leak"] < by_method["vanilla"]["audit.prefill_leak"]
    figures = set(result.manifest["figures"])
    assert {"audit_relearn.html", "audit_probe_layers.html", "audit_lens_layers.html",
            "audit_hidden_or_forgotten.html"} <= figures  # fmt: skip
    assert all(c["audit_cached"] is False for c in result.manifest["cells"])
    # what the attacks measure is in every audit cache key: a changed attack is measured again
    cached = list((tmp_path / "r" / "cache").rglob("*.audit-*.json"))
    assert cached
    assert all(
        json.loads(f.read_text())["key_fields"]["protocol"] == AUDIT_PROTOCOL for f in cached
    )
    again = al.reproduce(tmp_path / "r", config)
    assert all(c["cached"] and c["audit_cached"] for c in again.manifest["cells"])
    assert again.rows == result.rows


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--relearn-steps", "10", "5"], "strictly increasing"),
        (["--relearn-steps", "-1", "5"], ">= 0"),
        (["--oracle", "EMBEDDED"], "not a retrain oracle"),
        (["--attacks", "jailbreak"], "'jailbreak'"),
        (["--relearn-data", "benign"], "relearn_data must be 'forget'"),
        (["--quant-bits", "3"], "quant_bits must be some of (4, 8)"),
        (["--all-items"], "give --all-items or --max-items, not both"),
    ],
)
def test_cli_audit_refuses_bad_input_before_any_work(tmp_path, capsys, extra, words):
    from asru_lab.models.embedded import embedded_dir

    extra = [str(embedded_dir()) if x == "EMBEDDED" else x for x in extra]
    out = tmp_path / "audit"
    assert main(["audit", "--out", str(out), "--max-items", "2", *extra, "--quiet"]) != 0
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists()


def test_every_attack_has_its_interval_and_the_oracle_under_the_same_attack_beside_it(lm, bench):
    from asru_lab.auditing import run

    oracle = al.load_oracle()
    config = replace(SMALL, attacks=("prefill", "quantize"), quant_bits=(4,))
    report = audit(lm, bench, oracle=oracle, config=config)
    leaks = report.results["leaks"]
    assert {"none", "prefill", "prefill_generic", "quantize_int4", "quantize_int4+prefill"} <= set(
        leaks
    )
    for name, row in leaks.items():
        cell = row["forget"]
        assert cell["lo"] <= cell["leak"] <= cell["hi"] and cell["n"] == SMALL.max_items, name
        # the oracle asked the very same questions under the very same attack
        assert cell["excess"] == pytest.approx(cell["leak"] - cell["oracle"]), name
    # the vanilla model knows its forget people, the oracle never met them
    assert leaks["none"]["forget"]["excess"] >= 0.5
    s = report.summary
    assert s["union_leak"] >= s["forget_leak"] and s["union_n"] == SMALL.max_items
    assert s["union_excess"] == pytest.approx(s["union_leak"] - s["oracle_union_leak"])
    # the page's first figure: union and attacks beside the oracle, with their intervals
    from asru_lab.viz.audit import audit_figures

    figure = audit_figures(report.to_dict())[0]
    assert figure.layout.title.text.startswith("Leak against the oracle under the same attack")
    mine, theirs = figure.data
    assert mine.x[0] == "union (any attack)" and mine.y[0] == s["union_leak"]
    assert theirs.y[0] == s["oracle_union_leak"] and len(mine.error_y.array) == len(mine.x)
    # a second audit against the same oracle and settings reuses the oracle's answers
    cached = len(run._ORACLE_AUDITS)
    again = audit(lm, bench, oracle=oracle, config=config)
    assert len(run._ORACLE_AUDITS) == cached and again.results["leaks"] == leaks
    # the oracle audited as itself has no second oracle run
    itself = audit(oracle, bench, oracle=oracle, config=config)
    assert (
        "oracle_union" not in itself.results
        and "excess" not in itself.results["leaks"]["none"]["forget"]
    )
