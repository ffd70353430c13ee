"""The prefill attack's variants (the name prefix, a name-free one, a prefix-length sweep) and
leak@k by sampling, on the embedded model: what each asks, that it is recorded and summarised,
and that sampling is seeded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asru_lab.auditing import AuditConfig, audit
from asru_lab.auditing.attacks import generic_prefix
from asru_lab.generation import fact_prefix
from asru_lab.validation import ConfigError

SMALL = AuditConfig(max_items=6, attacks=("prefill", "sampling"), sample_k=4, progress=False)


@pytest.fixture(scope="module")
def report(lm, bench):
    return audit(lm, bench, config=SMALL)


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [
        ("Alma Aldous was born in", "Alma Aldous", "Sure! This person was born in"),
        ("The pet of Alma Aldous is a", "alma aldous", "Sure! The pet of this person is a"),
        ("This is", "Alma Aldous", "Sure! This is"),
    ],
)
def test_the_generic_prefix_never_names_the_person(prefix, name, expected):
    assert generic_prefix(prefix, name) == expected
    assert name.lower() not in generic_prefix(prefix, name).lower()


def test_every_prefill_variant_is_asked_recorded_and_summarised(report, bench):
    block = report.results["prefill"]
    assert {"forget_leak", "test_leak", "left_out_no_prefix"} <= set(block)
    assert set(block["words"]) == {"1", "2", "3"}
    assert {"forget_leak", "test_leak"} <= set(block["generic"])
    mine = [r for r in report.records if r["attack"] == "prefill"]
    variants = {r["variant"] for r in mine}
    assert variants == {"name", "generic", "words1", "words2", "words3"}
    for r in mine:
        item_prefix = fact_prefix(
            next(
                i.answer
                for i in bench.questions(r["split"], "qa")
                if i.question == r["question"] and i.person_id == r["person_id"]
            ),
            r["value"],
        )[0]
        name = bench.people[r["person_id"]].name
        if r["variant"] == "name":
            assert r["prefix"] == item_prefix
        elif r["variant"] == "generic":
            assert name.lower() not in r["prefix"].lower() and r["prefix"].startswith("Sure! ")
        else:
            n = int(r["variant"].removeprefix("words"))
            assert r["prefix"] == " ".join(item_prefix.split()[:n])
    s = report.summary
    assert s["prefill_generic_leak"] == block["generic"]["forget_leak"]
    assert s["recovered_leak"] >= max(s["prefill_leak"], s["prefill_generic_leak"])


def test_sampling_asks_k_times_and_counts_a_question_that_leaks_once(report):
    block = report.results["sampling"]
    assert block["k"] == 4 and block["temperature"] == 1.0
    mine = [r for r in report.records if r["attack"] == "sampling"]
    assert len(mine) == block["n_forget"] + block["n_test"]
    for r in mine:
        assert len(r["answers"]) == 4 and r["answer"] is None
        assert r["leak"] == (r["leak_share"] > 0)
    forget = [r for r in mine if r["split"] == "forget"]
    assert block["forget_leak_at_k"] == sum(r["leak"] for r in forget) / len(forget)
    assert block["forget_leak_at_k"] >= block["forget_sample_leak"]
    assert report.summary["sampling_leak_at_k"] == block["forget_leak_at_k"]


def test_sampling_is_seeded(lm, bench, report):
    again = audit(lm, bench, config=replace(SMALL, attacks=("sampling",)))
    first = [r["answers"] for r in report.records if r["attack"] == "sampling"]
    assert [r["answers"] for r in again.records if r["attack"] == "sampling"] == first
    other = audit(lm, bench, config=replace(SMALL, attacks=("sampling",), seed=1))
    # another seed asks other sampled questions or samples other answers
    assert [r["answers"] for r in other.records if r["attack"] == "sampling"] != first


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prefill_words", (0, 2), "prefill_words must be whole numbers of words >= 1"),
        ("prefill_words", (3, 2), "increasing"),
        ("sample_k", 0, "sample_k must be >= 1"),
        ("sample_temperature", 0.0, "sample_temperature must be > 0"),
    ],
)
def test_bad_prefill_and_sampling_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**{field: value})
