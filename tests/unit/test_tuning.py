"""The tuning rule of `reproduce` (runs.tuning): the validation forget set, the choice, the knob."""

from __future__ import annotations

import pytest

import asru_lab as al
from asru_lab.baselines import METHODS, UnlearnConfig, UnlearnError
from asru_lab.baselines.asru import AsruConfig
from asru_lab.data.schema import BenchmarkError
from asru_lab.runs.tuning import (
    TuningConfig,
    choose,
    knob_of,
    set_knob,
    validation_benchmark,
)


def points(*rows):
    return [
        {"value": v, "forget_leak": leak, "forget_mcq": mcq, "retain_accuracy": acc}
        for v, leak, mcq, acc in rows
    ]


def test_the_most_forgetting_setting_within_the_retain_budget_is_chosen():
    swept = points((1, 1.0, 1.0, 1.0), (2, 0.5, 0.9, 0.97), (3, 0.0, 0.3, 0.80))
    chosen = choose(swept, reference=1.0, max_drop=0.05)
    assert chosen == {"value": 2, "admissible": True, "reason": chosen["reason"]}
    assert [p["admissible"] for p in swept] == [True, True, False]
    assert swept[2]["retain_drop"] == pytest.approx(0.2)
    # ties in forget leak go to the lower forget MCQ, then to the weaker setting
    tie = points((1, 0.0, 0.5, 1.0), (2, 0.0, 0.2, 1.0), (3, 0.0, 0.2, 1.0))
    assert choose(tie, reference=1.0, max_drop=0.05)["value"] == 2


def test_criterion_attacked_ranks_by_the_union_under_the_cheap_attacks():
    """A setting that only hides (no plain leak, everything back under attack) loses to one
    that leaks a little plainly but keeps less under attack."""
    swept = points((1, 0.0, 0.2, 1.0), (2, 0.1, 0.3, 1.0))
    swept[0]["attacked_leak"], swept[1]["attacked_leak"] = 1.0, 0.3
    assert choose(swept, reference=1.0, max_drop=0.05)["value"] == 1
    chosen = choose(swept, reference=1.0, max_drop=0.05, criterion="attacked")
    assert chosen["value"] == 2 and "attacked_leak" in chosen["reason"]
    with pytest.raises(UnlearnError, match="criterion must be one of leak, attacked"):
        TuningConfig(criterion="attack")


def test_without_an_admissible_setting_the_smallest_drop_is_taken_with_a_warning():
    swept = points((1, 0.0, 0.2, 0.5), (2, 0.0, 0.1, 0.7))
    with pytest.warns(UserWarning, match="no setting keeps retain accuracy"):
        chosen = choose(swept, reference=1.0, max_drop=0.05)
    assert chosen["value"] == 2 and not chosen["admissible"]


def test_the_validation_forget_set_is_disjoint_from_the_reported_one(bench):
    val = validation_benchmark(bench, seed=3)
    reported = {p.id for p in bench.people_in("forget")}
    chosen = {p.id for p in val.people_in("forget")}
    assert len(chosen) == len(reported) and not reported & set(val.people)
    assert not reported & {i.person_id for i in val.items}
    assert chosen <= {p.id for p in bench.people_in("retain")}
    assert {i.person_id for i in val.split("forget")} == chosen and not val.split("test")
    assert len(val.people_in("retain")) == len(bench.people_in("retain")) - len(chosen)
    assert validation_benchmark(bench, seed=3).fingerprint() == val.fingerprint()
    assert validation_benchmark(bench, seed=4).fingerprint() != val.fingerprint()
    with pytest.raises(BenchmarkError, match="needs at least"):
        validation_benchmark(bench, n=100)


def test_knobs_are_registered_and_set_on_nested_configs():
    assert {m for m, entry in METHODS.items() if entry.knob is None} == set()
    assert knob_of("ga", TuningConfig()).field == "lr"
    assert knob_of("asru", TuningConfig()).field == "redirect.lam"
    tuned = set_knob(AsruConfig(), "redirect.lam", 8.0)
    assert tuned.redirect.lam == 8.0 and AsruConfig().redirect.lam == 5.0
    assert set_knob(UnlearnConfig(), "lr", 1e-4).lr == 1e-4
    with pytest.raises(UnlearnError, match="has no field 'alpha'"):
        set_knob(UnlearnConfig(), "alpha", 2.0)
    with pytest.raises(UnlearnError, match="is empty"):
        knob_of("ga", TuningConfig(grids={"ga": ()}))
    with pytest.raises(UnlearnError, match=r"max_retain_drop must be in \[0, 1\]"):
        TuningConfig(max_retain_drop=5)


def test_reproduce_cli_offers_the_untuned_settings(capsys):
    from asru_lab.cli import main

    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-tuning" in text and "--max-retain-drop" in text
    assert al.ReproduceConfig(tuning=None).tuning is None


def test_memory_savers_are_not_in_reproduces_cache_key():
    """Activation checkpointing computes the same numbers (tested in the integration tests), so
    turning it on must reuse a cached cell; a setting that changes results must not."""
    from dataclasses import replace

    from asru_lab.auditing import AuditConfig
    from asru_lab.runs.reproduce import _keyable, cache_key

    base = AsruConfig()
    saved = replace(base, reinforce=replace(base.reinforce, activation_checkpointing=True))
    assert cache_key(_keyable(saved)) == cache_key(_keyable(base))
    audit = AuditConfig()
    assert cache_key(_keyable(replace(audit, relearn_checkpointing=False))) == cache_key(
        _keyable(audit)
    )
    other = replace(base, reinforce=replace(base.reinforce, learning_rate=1e-3))
    assert cache_key(_keyable(other)) != cache_key(_keyable(base))
