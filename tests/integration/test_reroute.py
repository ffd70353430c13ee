"""Deep ASRU's stage 1.0 (reroute): the forget people's early states moved to their strangers',
the other prompts' held, the layer chosen by causal tracing, bad settings refused by name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asru_lab.stages.reroute import (
    RerouteConfig,
    RerouteError,
    choose_layer,
    pairs,
    reroute,
    strangers_for,
)

TINY = RerouteConfig(layer=2, steps=6, batch_size=4, lr=3e-3, progress=False)


def test_each_forget_person_gets_a_stranger_of_their_own(bench):
    strangers = strangers_for(bench, seed=0)
    forget = {i.person_id for i in bench.questions("forget", "qa")}
    assert set(strangers) == forget
    names = [name for name, _ in strangers.values()]
    assert len(set(names)) == len(names)
    stranger_names = {p.name for p in bench.people.values() if p.split == "stranger"}
    assert set(names) <= stranger_names and all(img for _, img in strangers.values())
    assert strangers_for(bench, seed=0) == strangers != strangers_for(bench, seed=1)


def test_pairs_swap_the_portrait_or_the_name_and_nothing_else(bench):
    strangers = strangers_for(bench, seed=0)
    twins = pairs(bench, strangers)
    by_name = [p for p in twins if p.item.image is None]
    by_image = [p for p in twins if p.item.image is not None]
    assert by_name and by_image
    for p in by_image:
        assert p.question == p.item.question and p.image == strangers[p.item.person_id][1]
    for p in by_name:
        own = bench.people[p.item.person_id].name
        assert own not in p.question and strangers[p.item.person_id][0] in p.question
        assert p.question == p.item.question.replace(own, strangers[p.item.person_id][0])


def test_the_layer_is_where_the_image_tokens_still_carry_the_identity(lm, bench):
    layer, fractions = choose_layer(lm, bench, 0.9)
    assert fractions[layer] >= 0.9 and all(f < 0.9 for f in fractions[layer + 1 :])
    assert 0 <= layer < lm.num_layers


def test_with_names_the_layer_is_the_later_of_both_hops(lm, bench, monkeypatch):
    from asru_lab.stages import reroute as module

    image, _ = choose_layer(lm, bench, 0.9)
    layer, fractions = choose_layer(lm, bench, 0.9, names=True)
    assert set(fractions) == {"image", "name"} and len(fractions["name"]) == lm.num_layers
    name = fractions["name"]
    peak = max(f for f in name if f is not None)
    assert peak >= 0.05  # the embedded model's names carry their facts early (README)
    by_name = max(k for k, f in enumerate(name) if (f or 0) >= 0.9 * peak)
    assert layer == max(image, by_name)
    # a name hop that reaches later than the image's moves the layer there
    late = [0.0] * (lm.num_layers - 1) + [0.4]
    monkeypatch.setattr(module, "name_fractions", lambda *a: late)
    assert choose_layer(lm, bench, 0.9, names=True)[0] == lm.num_layers - 1
    # names whose tokens carry nothing leave the image's layer
    monkeypatch.setattr(module, "name_fractions", lambda *a: [0.01] * lm.num_layers)
    assert choose_layer(lm, bench, 0.9, names=True)[0] == image


def test_reroute_moves_the_forget_states_and_leaves_the_model_given_unchanged(lm, bench):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    model, record = reroute(lm, bench, TINY)
    assert all(lm.model.state_dict()[k].equal(v) for k, v in before.items())
    assert record["layer"] == 2 and record["traced_fractions"] is None
    gaps = [h["forget_gap"] for h in record["history"]]
    assert record["history"][0]["step"] == 0 and gaps[-1] < gaps[0]
    original = dict(lm.model.named_parameters())
    changed = [n for n, p in model.model.named_parameters() if not p.equal(original[n])]
    assert changed and all(".mlp." in n for n in changed)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in changed}
    assert sorted(layers) == [0, 1, 2]  # only the MLPs of layers 0..2
    assert not any(p.requires_grad for p in model.model.parameters())
    again, _ = reroute(lm, bench, TINY)
    assert all(
        a.equal(b) for a, b in zip(model.model.parameters(), again.model.parameters(), strict=True)
    )  # seeded


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.0), ("steps", 0), ("layer", -1), ("trace_threshold", 1.5), ("lora_r", 0)],
)
def test_settings_out_of_range_are_refused_by_name(field, value):
    with pytest.raises(RerouteError, match=field):
        RerouteConfig(**{field: value})


def test_unknown_modules_and_splits_are_refused():
    with pytest.raises(RerouteError, match="modules must be some of"):
        RerouteConfig(modules=("o_proj",))
    with pytest.raises(RerouteError, match="retain_splits must be some of"):
        RerouteConfig(retain_splits=("forget",))


def test_a_layer_beyond_the_model_is_refused_with_its_range(lm, bench):
    with pytest.raises(RerouteError, match=r"layer 9 does not exist.*0\.\.5"):
        reroute(lm, bench, dataclasses.replace(TINY, layer=9))


def test_an_empty_stranger_pool_is_refused(bench, monkeypatch):
    real = bench.questions

    def no_strangers(split, *a, **k):
        return [] if split == "stranger" else real(split, *a, **k)

    monkeypatch.setattr(bench, "questions", no_strangers)
    with pytest.raises(RerouteError, match="0 strangers with a portrait and a name"):
        strangers_for(bench, seed=0)


def test_the_edit_is_not_one_direction(lm, bench):
    """Per-person targets: the change at the forget people's image tokens is not rank one."""
    from asru_lab.generation import encode_items
    from asru_lab.stages.reroute import residual_at

    model, _ = reroute(lm, bench, dataclasses.replace(TINY, steps=10))
    items = [i for i in bench.questions("forget", "qa") if i.image][::40][:8]
    batch = encode_items(lm, bench, items)
    with torch.no_grad():
        old = residual_at(lm.model, lm, batch, 2)[:, -1]
        new = residual_at(model.model, model, batch, 2)[:, -1]
    singular = torch.linalg.svdvals(new - old)
    assert singular[1] > 0.05 * singular[0]


def test_deep_asru_reroutes_then_runs_asru_on_the_rerouted_model(lm, bench, monkeypatch):
    from dataclasses import replace

    from asru_lab.baselines import METHODS, Unlearned, unlearn
    from asru_lab.baselines import deep as deep_module

    given = []

    def asru(model, b, config, probe):  # ASRU itself is tested elsewhere; here the chain
        given.append((model, config))
        return Unlearned("asru", model.clone(), {"method": "asru", "seconds": {"stage1": 1.0}})

    monkeypatch.setattr(deep_module, "run_full", asru)
    config = replace(deep_module.DeepAsruConfig(), reroute=TINY)
    result = unlearn(lm, bench, "asru_deep", config, probe=object())
    ((rerouted, asru_config),) = given
    assert asru_config is config.asru and result.method == "asru_deep"
    early = f"{lm.adapter.mlp_path(0)}.down_proj.weight"
    assert not rerouted.model.state_dict()[early].equal(lm.model.state_dict()[early])
    assert result.record["reroute"]["layer"] == TINY.layer
    assert set(result.record["seconds"]) == {"reroute", "stage1"}
    assert METHODS["asru_deep"].knob.field == "asru.redirect.lam"


def test_asru_adversarial_is_asru_with_an_adversarial_stage_2(lm, bench, monkeypatch):
    from asru_lab.baselines import METHODS, unlearn
    from asru_lab.baselines import asru as asru_module

    config = METHODS["asru_adversarial"].default_config()
    assert config.reinforce.adversarial == ("prefill", "ablation")
    assert METHODS["asru"].default_config().reinforce.adversarial == ()
    seen = []
    monkeypatch.setattr(asru_module, "redirect", lambda m, p, b, c: (m, {"seconds": 1.0}))

    def reinforce(model, b, c, output_dir, probe):
        seen.append(c)
        (output_dir / "metrics.jsonl").write_text("")
        return model, {"seconds": 2.0}

    monkeypatch.setattr(asru_module, "reinforce", reinforce)
    result = unlearn(lm, bench, "asru_adversarial", config, probe=object())
    assert seen == [config.reinforce] and result.method == "asru_adversarial"
    assert result.record["method"] == "asru_adversarial"
