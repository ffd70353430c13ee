"""Membership inference on the embedded model: Min-K%++'s statistics come from the same forward
pass as the answer log-probs, the reference attack scores against the retrain oracle (and says
why it is skipped without one), and an audit reports every score."""

from __future__ import annotations

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, AuditReport, audit
from asru_lab.auditing.attacks import Subject
from asru_lab.auditing.measure import sample
from asru_lab.auditing.readout import SCORES, membership
from asru_lab.evaluation.probability import answer_logprobs, answer_token_stats

SMALL = AuditConfig(max_items=4, attacks=("membership",), progress=False)
KINDS = [*SCORES, *(f"fact_{kind}" for kind in SCORES), "reference", "fact_reference"]


@pytest.fixture(scope="module")
def oracle() -> al.LoadedModel:
    return al.load_oracle()


def test_token_stats_share_the_answer_logprobs_forward_pass(lm, bench):
    items = (
        bench.questions("forget", "qa", image_only=True)[:3] + bench.questions("retain", "qa")[:2]
    )
    answers = [i.answer for i in items] + [""]
    items = [*items, items[0]]  # an empty answer scores its end of turn, as answer_logprobs does
    logps = answer_logprobs(lm, bench, items, answers, batch_size=4)
    stats = answer_token_stats(lm, bench, items, answers, batch_size=4)
    for lp, s in zip(logps, stats, strict=True):
        assert torch.equal(lp, s.logprob)
        assert (s.mean <= 0).all() and (s.std >= 0).all()
    # a known answer's tokens are mostly its positions' likeliest: at or above their mean
    known = torch.cat([s.logprob - s.mean for s in stats[:-1]])
    assert (known >= -1e-9).double().mean() > 0.9


def test_the_reference_attack_scores_against_the_oracle(lm, bench, oracle):
    subject = Subject(lm, bench, SMALL)
    out, records = membership(subject, oracle)
    members = [r for r in records if r["group"] == "member"]
    # the members membership asks about: the same seeded sample
    asked = sample(bench.questions("forget", "qa", image_only=True), 4, SMALL.seed, "mia:in")
    assert [i.answer for i in asked] == [r["answer"] for r in members]
    theirs = answer_logprobs(oracle, bench, asked, [i.answer for i in asked], batch_size=32)
    for record, lp in zip(members, theirs, strict=True):
        assert record["reference"] == pytest.approx(record["loss"] + float(lp.mean()), abs=1e-6)
    # the oracle never saw the forget people: the vanilla model's excess likelihood finds them
    assert out["reference_auc"] >= 0.9
    assert out["oracle_reference_auc"] == 0.5  # the oracle against itself: every score 0

    itself, records = membership(subject, lm)  # an "oracle" that is the audited model
    assert all(r["reference"] == 0 and r["fact_reference"] == 0 for r in records)
    assert itself["reference_auc"] == 0.5


def test_the_reference_attack_is_skipped_without_an_oracle(lm, bench):
    out, records = membership(Subject(lm, bench, SMALL), None)
    assert "oracle" in out["reference_skipped"]
    assert not any(k.endswith("reference_auc") or k.startswith("oracle_") for k in out)
    assert "privleak" not in " ".join(out)
    assert all("reference" not in r for r in records)
    assert {f"{kind}_auc" for kind in KINDS[:-2]} <= set(out)


def test_an_audit_reports_every_score_over_the_answer_and_the_fact(lm, bench, oracle, tmp_path):
    report = audit(lm, bench, oracle=oracle, config=SMALL)
    block = report.results["membership"]
    for kind in KINDS:
        for key in (f"{kind}_auc", f"oracle_{kind}_auc", f"{kind}_privleak"):
            assert key in block, key
        assert 0 <= block[f"{kind}_auc"] <= 1
    assert block["n_fact_members"] == block["n_members"] == SMALL.max_items
    assert report.summary["mia_auc"] == block["loss_auc"]
    assert report.summary["mia_fact_auc"] == block["fact_loss_auc"]
    scored = [r for r in report.records if r["attack"] == "membership"]
    assert len(scored) == block["n_members"] + block["n_non_members"]
    assert all(set(KINDS) <= set(r) for r in scored)
    # the vanilla model knows its forget people's facts, not the never-seen people's
    assert block["fact_loss_auc"] >= 0.9
    again = AuditReport.load(report.save(tmp_path / "audit"))
    assert again.results["membership"] == block
