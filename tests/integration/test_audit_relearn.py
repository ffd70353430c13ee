"""The relearning attack on the embedded model: the taught half scored at every k on the
audited model and on the oracle (the control), a setting that did not teach it void, full
fine-tuning training the vision tower of a copy while the audited model stays bit-identical,
and teaching data that holds no forget person's fact where it should hold none."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, AuditError, AuditReport, audit
from asru_lab.auditing.relearn import area, fine_tuned, halves, teaching_data
from asru_lab.data.schema import Benchmark, contains_value
from asru_lab.evaluation.harness import forget_people

TINY = AuditConfig(
    attacks=("relearn",),
    max_items=4,
    relearn_steps=(0, 2),
    relearn_batch_size=2,
    relearn_lr=(2e-3,),
    relearn_full_lr=(3e-4,),
    relearn_checkpointing=False,
    progress=False,
)


@pytest.fixture(scope="module")
def oracle() -> al.LoadedModel:
    return al.load_oracle()


@pytest.fixture(scope="module")
def report(lm, bench, oracle) -> AuditReport:
    return audit(lm, bench, oracle=oracle, config=TINY)


def _state(lm) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def _same(lm, before: dict[str, torch.Tensor]) -> bool:
    after = lm.model.state_dict()
    return set(after) == set(before) and all(after[k].equal(v) for k, v in before.items())


def test_the_taught_half_is_scored_at_every_k_on_the_model_and_the_oracle(report):
    relearned = report.results["relearn"]
    settings = relearned["settings"]
    assert [(s["mode"], s["lr"]) for s in settings] == [("lora", 2e-3), ("full", 3e-4)]
    for setting in settings:
        assert set(setting["curves"]) == {"forget", "benign", "unrelated"}
        for curve in (setting["curves"]["forget"], setting["oracle"]["forget"]):
            assert [p["steps"] for p in curve] == [0, 2]
            assert all(p["n_taught"] == 4 and 0 <= p["taught_leak"] <= 1 for p in curve)
        assert setting["auc"] == area(setting["curves"]["forget"])
        assert setting["excess_auc"] == pytest.approx(setting["auc"] - setting["oracle_auc"])
    # the taught questions are the taught people's, the held-out ones the others'
    relearnt = [r for r in report.records if "relearn" in r["attack"]]
    taught = {r["person_id"] for r in relearnt if r["half"] == "taught"}
    held = {r["person_id"] for r in relearnt if r["half"] == "held_out"}
    assert taught <= set(relearned["taught_people"]) and held <= set(relearned["measured_people"])
    assert any(r["attack"].startswith("oracle_relearn_forget_full") for r in relearnt)
    # the vanilla model knows the taught half; 2 steps teach the oracle, who never saw it, nothing
    vanilla, oracle = settings[0]["curves"]["forget"][-1], settings[0]["oracle"]["forget"][-1]
    assert vanilla["taught_leak"] >= 0.75 and oracle["taught_leak"] <= 0.25
    void = report.summary["void_attacks"]
    leak = oracle["taught_leak"]
    reason = f"the taught half was not relearned by the oracle (taught leak {leak:.2f} < 0.8)"
    assert f"relearn_forget_lora_lr0.002: {reason}" in void
    assert report.summary["relearn_leak_k2"] is None
    assert report.summary["relearn_valid_settings"] == 0
    # the chart's curves: the worst case at each k over the valid settings (none here)
    assert relearned["curves"]["forget"] == [
        {"steps": 0, "forget_leak": None},
        {"steps": 2, "forget_leak": None},
    ]
    # one report's chart also draws the control and the oracle's held-out curve (the floor)
    from asru_lab.viz.audit import relearn_chart

    drawn = {t.name.split(":")[0]: list(t.y) for t in relearn_chart(report.to_dict()).data}
    floor = [max(s["oracle"]["forget"][k]["forget_leak"] for s in settings) for k in (0, 1)]
    assert drawn["oracle"] == floor
    taught = [max(s["curves"]["forget"][k]["taught_leak"] for s in settings) for k in (0, 1)]
    assert drawn["control"] == taught


def test_a_setting_that_does_not_teach_the_taught_half_is_void(bench, oracle):
    # audited as a model that never saw the forget people, at a rate that moves nothing
    config = replace(TINY, relearn_modes=("lora",), relearn_lr=(1e-9,))
    s = audit(oracle, bench, config=config).summary
    reason = "the taught half was not relearned (taught leak 0.00 < 0.8)"
    for kind in ("forget", "benign", "unrelated"):
        assert f"relearn_{kind}_lora_lr1e-09: {reason}" in s["void_attacks"]
    assert s["relearn_leak_k0"] is None and s["relearn_leak_k2"] is None
    assert s["relearn_worst_leak"] is None and s["relearn_auc"] is None
    assert not s["recovered_by"].startswith("relearn")


def test_a_setting_that_diverges_is_void_and_the_sweep_goes_on(bench, oracle, monkeypatch):
    from asru_lab.auditing import relearn as module

    real = module.fine_tuned

    def blowing_up(lm, bench, items, mode, lr, config, *args):
        if lr == 1.0:  # the model's loss stops being finite at the first step
            raise module.Diverged(f"relearn diverged: the loss became nan at step 1 (lr {lr:g})")
        yield from real(lm, bench, items, mode, lr, config, *args)

    monkeypatch.setattr(module, "fine_tuned", blowing_up)
    config = replace(
        TINY, relearn_modes=("lora",), relearn_lr=(1.0, 2e-3), relearn_data=("forget",)
    )
    report = audit(oracle, bench, config=config)
    settings = {s["name"]: s for s in report.results["relearn"]["settings"]}
    assert "lr 1" in settings["lora_lr1"]["diverged"]["audited_forget"]
    assert [p["steps"] for p in settings["lora_lr1"]["curves"]["forget"]] == [0]
    assert "relearn_forget_lora_lr1: the fine-tune diverged" in report.summary["void_attacks"]
    # the next setting still ran to its last k
    assert [p["steps"] for p in settings["lora_lr0.002"]["curves"]["forget"]] == [0, 2]
    assert "diverged" not in settings["lora_lr0.002"]


def test_full_fine_tuning_trains_the_vision_tower_of_a_copy_only(lm, bench):
    before = _state(lm)
    items = bench.questions("forget", "qa", image_only=True)[:4]
    config = replace(TINY, relearn_steps=(1,))
    language = {id(p) for p in lm.adapter.language_model(lm.model).parameters()}
    language.add(id(lm.adapter.lm_head(lm.model).weight))
    # the vision tower and the merger: every parameter outside the language model and its head
    outside = {n for n, p in lm.model.named_parameters() if id(p) not in language}
    merger = f"{lm.adapter.visual_projector_path}."
    for mode in ("full", "lora"):
        for _, twin in fine_tuned(lm, bench, items, mode, 1e-3, config):
            copy = dict(twin.model.named_parameters())
            changed = {n for n in outside if not copy[n].equal(before[n])}
            if mode == "full":
                assert all(copy[n].requires_grad for n in copy)  # every parameter trains
                assert any(n.startswith(merger) for n in changed)
                assert any(not n.startswith(merger) for n in changed)  # the tower's own
            else:
                assert not changed  # LoRA trains the language model's linears only
    assert _same(lm, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_the_teaching_data_of_each_kind(bench):
    taught, _ = halves(forget_people(bench), seed=0)
    data = teaching_data(bench, TINY, taught)
    assert {i.person_id for i in data["forget"]} == set(taught)
    assert all(i.split == "retain" for i in data["benign"])
    assert len(data["unrelated"]) == len(data["benign"]) == len(data["forget"])
    # the unrelated data: picture questions about people outside the forget set, no fact of theirs
    forgotten = set(forget_people(bench))
    facts = {i.value for split in ("forget", "test") for i in bench.split(split)}
    for item in data["unrelated"]:
        assert item.split == "general" and item.person_id not in forgotten
        assert not any(contains_value(item.answer, fact) for fact in facts), item
    # a benchmark without picture questions says so and teaches the other kinds
    kept = [i for i in bench.items if i.split != "general"]
    plain = Benchmark(
        list(bench.people.values()), kept, name="plain", image_loader=bench.load_image
    )
    assert "plain has no picture questions" in teaching_data(plain, TINY, taught)["unrelated"]
    # only the kinds asked are taught; "forget" carries the control, so it is always among them
    only = replace(TINY, relearn_data=("forget", "unrelated"))
    assert list(teaching_data(bench, only, taught)) == ["forget", "unrelated"]


def test_relearning_checkpoints_activations_for_large_models_only(lm, monkeypatch):
    from asru_lab.auditing import relearn as module

    assert not module.checkpointing(lm, AuditConfig())  # the embedded model: time only
    assert module.checkpointing(lm, AuditConfig(relearn_checkpointing=True))
    monkeypatch.setattr(module, "CHECKPOINT_FROM", 1000)  # as if it had a billion parameters
    assert module.checkpointing(lm, AuditConfig())
    assert not module.checkpointing(lm, AuditConfig(relearn_checkpointing=False))


def test_full_relearning_that_does_not_fit_is_refused_before_any_copy(lm, bench, monkeypatch):
    from asru_lab.auditing import relearn as module

    monkeypatch.setattr(module, "available_memory", lambda device: 1024**2)  # 1 MiB free
    asked = []
    monkeypatch.setattr(
        "asru_lab.auditing.attacks.no_attack", lambda *a: asked.append(a) or ({}, [])
    )
    config = replace(TINY, relearn_modes=("full",), relearn_data=("forget",))
    with pytest.raises(AuditError, match=r"full-parameter relearning needs about .* GiB") as info:
        audit(lm, bench, config=config)
    assert not asked  # refused before the first attack's work
    monkeypatch.undo()
    monkeypatch.setattr(module, "available_memory", lambda device: 1024**2)
    assert "relearn_modes=('lora',)" in str(info.value) and "0.0 GiB is free" in str(info.value)
    # LoRA shares the weights: it is not refused
    assert audit(lm, bench, config=replace(config, relearn_modes=("lora",))).results["relearn"]


def test_the_oracle_is_relearnt_once_per_process(lm, bench, oracle, monkeypatch):
    """`reproduce --audit` audits many methods against one oracle: its curves are run once."""
    from asru_lab.auditing import relearn as module

    config = replace(TINY, relearn_modes=("lora",), relearn_data=("forget",), seed=7)
    calls = []
    real = module.fine_tuned

    def counting(model, *args, **kwargs):
        calls.append(model is oracle)
        yield from real(model, *args, **kwargs)

    monkeypatch.setattr(module, "fine_tuned", counting)
    first = audit(lm, bench, oracle=oracle, config=config)
    assert calls == [False, True]
    second = audit(lm.clone(), bench, oracle=oracle, config=config)
    assert calls == [False, True, False]  # the second audited model only

    def oracle_side(report):
        curves = [s["oracle"] for s in report.results["relearn"]["settings"]]
        answers = [r for r in report.records if r["attack"].startswith("oracle_relearn")]
        return curves, answers

    assert oracle_side(first) == oracle_side(second) and oracle_side(first)[1]
    assert first.summary["relearn_oracle_auc"] == second.summary["relearn_oracle_auc"]
    # a report's curves are its own: editing one leaves the cache (and the next report) intact
    second.results["relearn"]["settings"][0]["oracle"]["forget"].clear()
    third = audit(lm, bench, oracle=oracle, config=config)
    assert oracle_side(third) == oracle_side(first)
