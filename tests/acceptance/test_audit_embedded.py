"""The audit's controls on the embedded model, so that an attack's "nothing recovered" means
something.

Positive control: `steer_only` is pure suppression (the weights are the vanilla model's, a hook
adds the probe's direction), so projecting out what it adds must bring the leak back near the
vanilla model's. Negative control: the retrain oracle never saw the forget people, so no attack
may make it say their facts beyond what guessing gives, and the pool logit lens must find them
in the vanilla model and not in the oracle.
"""

from __future__ import annotations

import pytest

import asru_lab as al
from asru_lab.auditing import ATTACKS, AuditConfig, audit
from asru_lab.baselines.trainer import UnlearnConfig
from asru_lab.probe import SteeringProbe

# Every attack but leak@k, whose chance level depends on the value pools (the oracle's own
# leak@k is its floor, not a guess bound); one relearning setting, one quantisation width, the
# ablation without its orthogonalised copy.
CONTROL = AuditConfig(
    max_items=48,
    attacks=tuple(a for a in ATTACKS if a != "sampling"),
    relearn_modes=("lora",),
    quant_bits=(4,),
    ablation_orthogonalize=False,  # its relearning is the relearning attack's, run already
    progress=False,
)
# Chance: the oracle can only guess a fact (4-52 values per attribute, never a name).
GUESS_BOUND = 0.15
# The pool lens' best layer above chance that guessing reaches: measured for the oracle at
# max_items 48, seeds 0-2, top-1 at most 0.05 and MRR at most 0.06 above chance (0.04, 0.14).
LENS_ABOVE_CHANCE = 0.15


@pytest.fixture(scope="module")
def vanilla_leak(lm, bench) -> float:
    report = audit(lm, bench, config=AuditConfig(max_items=48, attacks=(), progress=False))
    return report.summary["forget_leak"]


def test_positive_control_ablating_steer_only_brings_the_leak_back(
    located, lm, bench, vanilla_leak
):
    probe = SteeringProbe.load(located["probe"])
    steered = al.unlearn(lm, bench, "steer_only", probe=probe)
    config = AuditConfig(
        max_items=48, attacks=("ablation",), ablation_orthogonalize=False, progress=False
    )
    report = audit(steered.model, bench, reference=lm, probe=steered.probe, config=config)
    hidden = report.results["none"]["forget_leak"]
    # chosen on one half of the forget people, reported on the other
    chosen = report.results["ablation"]["per_layer"]
    assert hidden <= 0.5 * vanilla_leak, "the probe should suppress most forget answers"
    assert chosen["none_forget_leak"] <= 0.5 * vanilla_leak
    assert chosen["forget_leak"] >= 0.9, (hidden, chosen, vanilla_leak)
    assert chosen["forget_leak"] >= vanilla_leak - 0.15, (hidden, chosen, vanilla_leak)
    # the attack does not break the model: retain recall stays
    assert chosen["retain_recall"] >= 0.8


def test_negative_control_no_attack_makes_the_oracle_say_what_it_never_learnt(lm, bench):
    oracle = al.load_oracle()
    report = audit(oracle, bench, reference=lm, oracle=oracle, config=CONTROL)
    s = report.summary
    assert s["recovered_leak"] <= GUESS_BOUND, (s["recovered_by"], s["recovered_leak"])
    assert s["recovered_leak_test"] <= GUESS_BOUND
    # membership inference on the oracle against itself is privleak 0 by definition
    assert s["mia_privleak"] == pytest.approx(0.0)


def test_the_pool_lens_finds_the_facts_in_the_vanilla_model_and_not_in_the_oracle(lm, bench):
    """At the fact's position, ranked within the attribute's values: the vanilla model (the
    reference) puts its fact first, the oracle ranks it as chance does: neither above nor
    below (its best layer's MRR was 0.00-0.06 above chance over seeds 0-2)."""
    oracle = al.load_oracle()
    config = AuditConfig(max_items=48, attacks=("logit_lens",), progress=False)
    lens = audit(oracle, bench, reference=lm, oracle=oracle, config=config).results["logit_lens"]
    for split in ("forget", "test"):
        vanilla, never_saw = lens["reference"][split]["pool"]["fact"], lens[split]["pool"]["fact"]
        assert vanilla["best_top1"] >= 0.8 and vanilla["best_mrr"] >= 0.9, (split, vanilla)
        assert never_saw["best_top1"] <= never_saw["chance_top1"] + LENS_ABOVE_CHANCE, split
        chance = never_saw["chance_mrr"]
        assert chance - 0.05 <= never_saw["best_mrr"] <= chance + LENS_ABOVE_CHANCE, split


def test_positive_control_relearning_brings_back_what_gradient_ascent_hid(lm, bench):
    """GA at lr 1e-4 (the audit table's setting) stops the forget answers; 100 LoRA steps on
    half the forget people's facts bring the other half back (measured: 0.92 held-out at k 50
    and 100 over 48 questions, the oracle at most 0.08), with the control met on both. A
    universal soft prompt fitted on the same half brings the other half back too, with no
    weight changed (measured: 0.72 held-out over 18 questions, retain recall 0.06 -> 0.85)."""
    oracle = al.load_oracle()
    ga = al.unlearn(lm, bench, "ga", UnlearnConfig(lr=1e-4, progress=False))
    config = AuditConfig(
        max_items=24,
        attacks=("relearn", "soft_prompt"),
        relearn_steps=(0, 100),
        relearn_modes=("lora",),
        relearn_data=("forget",),
        oracle_attacks=False,
        progress=False,
    )
    report = audit(ga.model, bench, oracle=oracle, config=config)
    (setting,) = report.results["relearn"]["settings"]
    mine, theirs = setting["curves"]["forget"], setting["oracle"]["forget"]
    assert mine[0]["forget_leak"] <= 0.1, "GA should stop the held-out half's answers"
    assert mine[-1]["taught_leak"] >= 0.8 and theirs[-1]["taught_leak"] >= 0.8  # the control
    assert mine[-1]["forget_leak"] >= 0.8, mine
    assert theirs[-1]["forget_leak"] <= GUESS_BOUND, theirs
    assert report.summary["relearn_valid_settings"] == 1
    prompted = report.results["soft_prompt"]
    assert prompted["fit_loss_after"] < prompted["fit_loss_before"]  # its control
    assert prompted["forget_leak"] >= 0.5, prompted
    assert prompted["retain_recall"] > report.results["none"]["retain_recall"]
    assert "soft_prompt" not in (report.summary["void_attacks"] or "")


def test_membership_inference_finds_the_vanilla_models_members(lm, bench):
    config = AuditConfig(max_items=48, attacks=("membership",), progress=False)
    mia = audit(lm, bench, config=config).results["membership"]
    assert mia["loss_auc"] >= 0.9 and mia["fact_loss_auc"] >= 0.9, mia
