"""Silent wrong results (issue #29): saved answers are never replaced by a report, forget
quality against the oracle of another forget set is refused, and a relearning attack that
breaks the model is reported void, never as "not recovered"."""

from __future__ import annotations

import json

import pytest

import asru_lab as al
from asru_lab.auditing import AuditConfig, audit, summarize
from asru_lab.cli import main
from asru_lab.evaluation.probability import ProbabilityError
from asru_lab.models.embedded import embedded_dir, oracle_dir

QUICK = ["--splits", "forget", "--max-items", "2"]


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# --- saved answers are never replaced by a report ---------------------------------------------


def test_a_report_never_replaces_saved_answers(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", *QUICK, "--no-probabilities", "--out", str(out)]) == 0
    answers = tmp_path / "r.answers.json"
    saved = answers.read_bytes()
    capsys.readouterr()
    for argv in (
        ["--answers", str(answers), "--out", str(answers)],  # the case of the issue
        ["--answers", str(answers), "--out", str(answers), "--overwrite"],
        ["--out", str(answers)],  # --out naming an answers file, without --answers
        ["--answers", str(answers), "--out", str(out), "--items-out", str(answers)],
    ):
        assert main(["evaluate", *QUICK, "--no-probabilities", *argv]) == 2, argv
        assert "error:" in capsys.readouterr().err
        assert answers.read_bytes() == saved, argv
    # scoring the saved answers into a new report still works, and keeps them
    again = tmp_path / "again.json"
    args = ["--answers", str(answers), "--out", str(again)]
    assert main(["evaluate", *QUICK, "--no-probabilities", *args]) == 0
    assert answers.read_bytes() == saved
    assert json.loads(again.read_text())["splits"]["forget"]["mcq_acc"] is not None


# --- forget quality only against the oracle of the evaluated forget set ------------------------


@pytest.mark.parametrize(
    "forget_set",
    [["--seed", "1"], ["--forget-ratio", "0.15"], ["--forget-ratio", "0.05", "--seed", "3"]],
)
def test_the_oracle_of_another_forget_set_is_refused_as_reference(forget_set, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["evaluate", *QUICK, *forget_set, "--reference", str(oracle_dir()), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was built without the forget people" in err and "this forget set is" in err, err
    assert not out.exists() and not out.with_name("r.answers.json").exists()  # before any work


def test_a_reference_of_ones_own_or_the_right_oracle_is_accepted(lm, bench, tmp_path, capsys):
    for reference in ("oracle", str(embedded_dir())):  # the right oracle; no oracle record
        out = tmp_path / "r.json"
        argv = ["evaluate", *QUICK, "--reference", reference, "--out", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        assert json.loads(out.read_text())["splits"]["forget"]["forget_quality"] is not None
    other = al.load_benchmark(forget_ratio=0.05)
    with pytest.raises(ProbabilityError, match="built without the forget people"):
        al.evaluate(lm, other, al.EvalConfig(splits=("forget",), max_items=2, progress=False),
                    reference=al.load_model(oracle_dir()))  # fmt: skip


# --- an attack that breaks the model is void --------------------------------------------------

TINY_RELEARN = AuditConfig(
    attacks=("relearn",),
    max_items=2,
    relearn_steps=(0, 2),
    relearn_batch_size=2,
    relearn_checkpointing=False,
    progress=False,
)


def test_a_relearning_attack_that_breaks_the_model_is_void_not_a_recovery(lm, bench, tmp_path):
    from dataclasses import replace

    config = replace(TINY_RELEARN, relearn_modes=("lora",), relearn_lr=(10.0,))  # absurd
    report = audit(lm, bench, config=config)
    s = report.summary
    broken = [r for r in report.records if r["attack"] == "relearn_forget_lora_lr10_k2"]
    assert broken and not any(r["leak"] for r in broken)  # the numbers that used to be shown
    assert s["relearn_leak_k2"] is None and s["relearn_benign_leak_k2"] is None
    void = s["void_attacks"]
    assert (
        "relearn_forget_lora_lr10_k2: the attack broke the model: retain recall 1.00 -> 0.00"
        in (void)
    )
    # the taught half went with the rest: the setting failed its control, so every k is void
    assert "relearn_forget_lora_lr10: the taught half was not relearned (taught leak" in void
    assert s["relearn_leak_k0"] is None
    assert not s["recovered_by"].startswith("relearn")
    saved = al.AuditReport.load(report.save(tmp_path / "audit"))
    assert saved.summary == s
    from asru_lab.viz.audit import relearn_chart

    drawn = {t.name.split(":")[0]: t for t in relearn_chart(report.to_dict()).data}
    assert list(drawn[report.model["name"]].y) == [None, None]  # gaps, never "leak 0"
    # the control is drawn for the void setting: it shows why it is void
    assert list(drawn["control"].y) == [
        p["taught_leak"] for p in report.results["relearn"]["settings"][0]["curves"]["forget"]
    ]
    # sane learning rates keep the model, and the vanilla model knows the taught half: valid
    sane = audit(lm, bench, config=TINY_RELEARN).summary
    assert sane["void_attacks"] is None and sane["relearn_leak_k2"] is not None


def test_an_ablation_that_breaks_the_model_is_void_and_a_broken_model_is_judged_as_it_is():
    results = {
        "none": {"forget_leak": 0.0, "retain_recall": 0.9},
        "ablation": {
            "per_layer": {"forget_leak": 0.0, "retain_recall": 0.1},  # broke it
            "everywhere": {"forget_leak": 0.3, "retain_recall": 0.8},  # kept it
        },
    }
    s = summarize(results)
    assert "ablation_per_layer: the attack broke the model" in s["void_attacks"]
    assert s["recovered_leak"] == 0.3 and s["recovered_by"] == "ablation_everywhere"
    # a model that already answers little of retain (e.g. after GA) cannot be broken further
    results["none"]["retain_recall"] = 0.06
    results["ablation"]["per_layer"]["retain_recall"] = 0.0
    assert summarize(results)["void_attacks"] is None
