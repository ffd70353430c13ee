"""Direction ablation v2 on the embedded model: candidates over kinds x positions x layer spans,
fitted and chosen on one half of the forget people and reported on the other, and weight
orthogonalisation that leaves no component along the direction anywhere in the residual stream
(without touching the audited model)."""

from __future__ import annotations

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, audit
from asru_lab.auditing.ablation import candidates, orthogonalized
from asru_lab.auditing.measure import last_states
from asru_lab.validation import ConfigError

SMALL = AuditConfig(
    attacks=("ablation",),
    max_items=6,
    ablation_top=1,
    relearn_steps=(0, 2),
    relearn_checkpointing=False,
    progress=False,
)


@pytest.fixture(scope="module")
def report(lm, bench):
    """The oracle audited against the vanilla model: it refuses the forget people, and its
    states differ from the reference's, so every kind of direction exists."""
    return audit(al.load_oracle(), bench, reference=lm, config=SMALL)


def test_directions_are_chosen_on_one_half_and_reported_on_the_other(report, bench):
    ablation = report.results["ablation"]
    search = ablation["per_layer"]["search"]
    fit, held = set(search["fit_people"]), set(search["held_out_people"])
    forget = {i.person_id for i in bench.split("forget")}
    assert fit and held and fit.isdisjoint(held) and fit | held == forget
    # every (kind, position) with a direction gives 3 spans and one candidate per layer
    kinds = {(c["kind"], c["position"]) for c in search["candidates"]}
    assert len(search["candidates"]) == len(kinds) * (3 + report.model["num_layers"])
    assert len(kinds) + len(search["skipped"]) == 9
    readiness = [c["readiness"] for c in search["candidates"]]
    assert readiness == sorted(readiness, reverse=True)
    assert ablation["per_layer"]["span"] in ("all", "early", "late")
    assert ablation["everywhere"]["span"].startswith("from")
    by = {}
    for r in report.records:
        by.setdefault(r["attack"], []).append(r)
    # fitted-half answers are the fitted people's; reported answers the held-out people's
    fitted = [r for name, rs in by.items() if name.startswith("ablation_fit_") for r in rs]
    assert fitted and {r["person_id"] for r in fitted} <= fit
    for variant in ("per_layer", "everywhere", "orthogonalized"):
        asked = [r for r in by[f"ablation_{variant}"] if r["split"] != "retain"]
        assert asked and {r["person_id"] for r in asked} <= held
        block = ablation[variant]
        assert block["n_forget"] == sum(r["split"] == "forget" for r in asked)
        assert 0 <= block["retain_recall"] <= 1 and "none_forget_leak" in block
    relearnt = ablation["orthogonalized+relearn"]
    assert relearnt["setting"] == "lora_lr0.001" and [p["steps"] for p in relearnt["curve"]] == [
        0,
        2,
    ]
    # 2 steps teach the oracle nothing: the relearning of the orthogonalised copy is void
    assert "the taught half was not relearned" in relearnt["void"]
    assert "ablation_orthogonalized+relearn" in report.summary["void_attacks"]


def test_orthogonalised_weights_never_write_the_direction(lm, bench):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    u = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    twin = orthogonalized(lm, u)
    items = bench.questions("forget", "qa", image_only=True)[:3]
    items += [i for i in bench.questions("retain", "qa") if not i.has_image][:2]
    unit = u / u.norm()
    states = last_states(twin, bench, items, batch_size=8)  # [items, layers, hidden]
    along = (states.double() @ unit.double()).abs()
    assert float(along.max()) < 1e-3 * float(states.norm(dim=-1).min())
    # the same direction is well present in the untouched model's stream
    plain = last_states(lm, bench, items, batch_size=8).double() @ unit.double()
    assert float(plain.abs().max()) > 100 * float(along.max())
    after = lm.model.state_dict()
    assert all(after[k].equal(v) for k, v in before.items())


def test_the_candidates_of_one_direction_per_layer():
    directions = torch.arange(4 * 3, dtype=torch.float64).reshape(4, 3)
    found = candidates(directions, stride=2)
    assert list(found) == ["all", "early", "late", "from0", "from2"]
    assert sorted(found["early"]) == [0, 1] and sorted(found["late"]) == [2, 3]
    assert all(found["from2"][k].equal(directions[2]) for k in range(4))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"ablation_kinds": ("reference", "caa")}, r"ablation_kinds must be some of \('reference'"),
        ({"ablation_positions": ()}, "ablation_positions must be some of"),
        ({"ablation_top": 0}, "ablation_top"),
        ({"ablation_layer_stride": 0}, "ablation_layer_stride"),
    ],
)
def test_ablation_settings_out_of_range_are_refused(fields, words):
    with pytest.raises(ConfigError, match=words):
        AuditConfig(**fields)


# --- few-shot in-context relearning ---------------------------------------------------------


def test_in_context_relearning_shows_taught_facts_and_asks_held_out_people(lm, bench, monkeypatch):
    from asru_lab.auditing import in_context as module

    seen = []
    real = module.generate_chats

    def spy(model, chats, images, **kwargs):
        seen.extend(chats)
        return real(model, chats, images, **kwargs)

    monkeypatch.setattr(module, "generate_chats", spy)
    config = AuditConfig(attacks=("in_context",), max_items=6, in_context_shots=3, progress=False)
    report = audit(lm, bench, config=config)
    block = report.results["in_context"]
    taught, held = set(block["taught_people"]), set(block["measured_people"])
    people = {(i.question, i.image): i.person_id for i in bench.items}
    answers = {(i.question, i.image): i.answer for i in bench.items}
    measured = [r for r in report.records if r["attack"] == "in_context"]
    control = [r for r in report.records if r["attack"] == "in_context_control"]
    assert measured and len(control) == len(measured) == len(seen) // 2
    assert {r["person_id"] for r in measured} <= held and {
        r["person_id"] for r in control
    } <= taught
    for chat in seen:
        *shots, asked = chat
        assert len(shots) == 3 and asked.reply is None
        # every shot is a taught person's question answered with its reference answer
        assert all(people[s.text, s.image] in taught for s in shots)
        assert all(s.reply == answers[s.text, s.image] for s in shots)
    assert block["n_forget"] + block["n_test"] == len(measured)
    # the embedded model never saw a multi-turn chat: it does not answer the shown question
    # again from its context, so the attack is void here, and says why
    assert block["control_leak"] < 0.8
    assert "in_context: the model did not answer from its context" in report.summary["void_attacks"]
    assert report.summary["in_context_leak"] is None
