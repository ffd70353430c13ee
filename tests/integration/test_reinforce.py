"""Stage 2 (`reinforce`): a short GRPO run on the embedded model trains a copy, logs what a
user watches (metrics.jsonl, dashboard.html, held-out rates, samples), saves a loadable model;
bad configurations get clear errors before any training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError
from asru_lab.rewards import RewardError
from asru_lab.stages.reinforce import (
    ReinforceConfig,
    ReinforceError,
    boundary_dataset,
    boundary_set,
    reinforce,
    save_reinforced,
)

SHORT = {
    "n_forget": 8,
    "n_boundary": 8,
    "boundary_candidates": 256,
    "max_steps": 4,
    "batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 24,
    "logging_steps": 1,
    "probe_every": 2,
    "probe_examples": 4,
    "save_steps": 2,
    "temperature": 3.0,  # the vanilla model is peaked: rollouts must differ to have advantages
    "progress": False,
}


@pytest.fixture(scope="module")
def run(lm, bench, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("reinforce")
    config = ReinforceConfig(rewards=("contextual", "length"), reward_weights=(1.0, 0.2), **SHORT)
    snapshot = {n: p.clone() for n, p in lm.model.named_parameters()}
    model, record = reinforce(lm, bench, config, output_dir=out_dir)
    return {"dir": out_dir, "model": model, "record": record, "snapshot": snapshot}


def test_grpo_trains_a_copy(lm, run):
    for name, param in lm.model.named_parameters():
        assert torch.equal(param, run["snapshot"][name]), name
    params = run["model"].model.named_parameters()
    changed = [n for n, p in params if not torch.equal(p, run["snapshot"][n])]
    assert changed, "GRPO changed no weight"
    assert run["record"]["steps"] == 4
    assert run["model"].name.endswith("+reinforce")


def test_a_copy_of_the_trained_model_computes_with_its_own_weights(bench, run):
    """TRL leaves an instance-level forward that calls the trained object's own bound forward;
    a deep copy kept it, so a copy (relearning, quantisation, distillation) silently ran the
    original's weights: fine-tuning it moved nothing. The result carries no such patch, and a
    copy of a model that does is cleaned by `clone`."""
    from asru_lab.generation import encode_items
    from asru_lab.models.loading import drop_forward_patches

    model = run["model"]
    assert not _patches(model.model)
    patched = model.clone()
    original = patched.model.forward
    patched.model.forward = lambda *a, **k: original(*a, **k)  # a trainer's patch, by closure
    twin = patched.clone()
    assert not _patches(twin.model)
    assert drop_forward_patches(patched.model) == ["<root>"]
    with torch.no_grad():
        for p in twin.model.parameters():
            p.mul_(0.5)
        batch = encode_items(twin, bench, bench.questions("retain", "qa")[:2])
        mine = twin.model(**batch).logits
        theirs = patched.model(**batch).logits
    assert not torch.allclose(mine, theirs)


def _patches(model: torch.nn.Module) -> list[str]:
    """Modules whose instance `forward` is not nnsight's controller (which is copy-safe)."""
    from nnsight.intervention.source import Controller

    return [
        name
        for name, m in model.named_modules()
        if "forward" in m.__dict__ and not isinstance(m.__dict__["forward"], Controller)
    ]


def test_dropping_a_trainer_patch_keeps_nnsight_tracing(bench, run):
    """A model traced by nnsight carries nnsight's controller as every module's `forward`:
    removing a trainer's patch must leave those in place (and re-instrument a module whose
    controller the patch displaced), or every later trace fails with 'already ran past it'."""
    from asru_lab.capture import capture
    from asru_lab.models.loading import drop_forward_patches

    items = bench.questions("retain", "qa")[:2]
    twin = run["model"].clone()
    before = capture(twin, bench, items, layers=[1, 3], keep_raw=True, progress=False)
    original = twin.model.forward  # nnsight's controller, now installed on the root
    twin.model.forward = lambda *a, **k: original(*a, **k)
    assert drop_forward_patches(twin.model) == ["<root>"]
    for copy in (twin, twin.clone()):
        after = capture(copy, bench, items, layers=[1, 3], keep_raw=True, progress=False)
        for layer in (1, 3):
            torch.testing.assert_close(after.raw[layer], before.raw[layer])


def test_metrics_dashboard_and_held_out_rates_are_written(run):
    rows = [json.loads(x) for x in (run["dir"] / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "reward" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for r in logged:
        assert {"rewards/contextual/mean", "rewards/length/mean", "kl"} <= set(r)
        assert r["reward"] == pytest.approx(
            r["rewards/contextual/mean"] + 0.2 * r["rewards/length/mean"], abs=1e-4
        )
    probes = [r for r in rows if "probe/forget_refusal" in r]
    assert [r["step"] for r in probes] == [0, 2, 4]  # step 0: the baseline, before training
    assert all(0 <= r["probe/retain_recall"] <= 1 for r in probes)
    samples = logged[-1]["samples"]
    assert {s["split"] for s in samples} <= {"forget", "retain"} and samples[0]["completion"]
    page = (run["dir"] / "dashboard.html").read_text()
    assert "plotly" in page.lower() and "Latest samples" in page
    assert sorted(p.name for p in run["dir"].glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


def test_saved_model_reloads(run, tmp_path):
    path = save_reinforced(run["model"], run["record"], tmp_path / "final")
    loaded = al.load_model(path)
    saved = dict(run["model"].model.named_parameters())
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, saved[name]), name
    assert json.loads((path / "reinforce.json").read_text())["steps"] == 4


def test_boundary_set_is_nearest_to_the_forget_set(lm, bench):
    config = ReinforceConfig(**SHORT)
    forget, boundary, stats = boundary_set(lm, bench, config)
    assert len(forget) == len(boundary) == 8
    assert all(i.split == "forget" and i.image for i in forget)
    assert all(i.split == "retain" for i in boundary)
    means = stats["projection_mean"]
    assert means["forget"] > means["retain"]  # the direction tells forget from retain
    assert means["boundary"] > means["retain"]  # and the boundary is the forget-like end
    _, random_boundary, random_stats = boundary_set(
        lm, bench, ReinforceConfig(**{**SHORT, "boundary": "random"})
    )
    assert random_stats == {"mode": "random"} and len(random_boundary) == 8
    data = boundary_dataset(bench, forget, boundary)
    assert sorted(data.column_names) == [
        "answer", "image", "item", "prefill", "prompt", "split", "value",
    ]  # fmt: skip
    assert set(data["prefill"]) == {""}  # no adversarial prefill unless asked
    assert sorted(data["split"]) == ["forget"] * 8 + ["retain"] * 8
    assert bench.items[data[0]["item"]].value == data[0]["value"]


def test_a_boundary_set_given_back_is_used_and_not_computed_again(lm, bench, monkeypatch):
    from asru_lab.stages import reinforce as module

    config = ReinforceConfig(**{**SHORT, "max_steps": 1, "probe_every": 0})
    found = boundary_set(lm, bench, config)

    def again(*args, **kwargs):
        raise AssertionError("the boundary set was computed again")

    monkeypatch.setattr(module, "boundary_set", again)
    _, record = reinforce(lm, bench, config, boundary=found)
    assert record["boundary"] == found[2] and record["examples"]["forget"] == len(found[0])


def test_a_boundary_set_from_elsewhere_is_refused_by_name(lm, bench):
    from asru_lab.stages.reinforce import check_boundary

    config = ReinforceConfig(**SHORT)
    forget, boundary, stats = boundary_set(
        lm, bench, ReinforceConfig(**{**SHORT, "boundary": "random"})
    )
    with pytest.raises(ReinforceError, match="takes what boundary_set"):
        check_boundary((forget, boundary), bench, config)
    with pytest.raises(ReinforceError, match="mode 'random', the config asks 'nearest'"):
        check_boundary((forget, boundary, stats), bench, config)
    with pytest.raises(ReinforceError, match="its boundary items are not the retain questions"):
        check_boundary((forget, forget, {"mode": "nearest"}), bench, config)
    with pytest.raises(ReinforceError, match="at most 8"):
        check_boundary((forget, boundary * 2, {"mode": "nearest"}), bench, config)
    other = bench.subset([dataclasses.replace(i) for i in bench.items])  # equal, not the same
    with pytest.raises(ReinforceError, match="not items of"):
        check_boundary((forget, boundary, {"mode": "nearest"}), other, config)


def test_cli_reinforce_writes_model_and_training_log(tmp_path):
    out = tmp_path / "final"
    args = ["reinforce", "--out", str(out), "--steps", "2", "--n-forget", "4", "--quiet"]
    args += ["--n-boundary", "4", "--batch-size", "8", "--num-generations", "4"]
    args += ["--boundary", "random"]
    assert main(args) == 0
    assert (out / "config.json").is_file() and (out / "reinforce.json").is_file()
    assert (out / "training" / "metrics.jsonl").is_file()
    assert (out / "training" / "dashboard.html").is_file()
    assert al.load_model(out).name.endswith("+reinforce")
    assert main(args) == 2  # an earlier run's log is there: needs --resume


def test_bad_configurations_are_refused_before_training(lm, bench, tmp_path):
    with pytest.raises(RewardError, match="unknown reward 'kindness'.*contextual"):
        reinforce(lm, bench, ReinforceConfig(rewards=("kindness",)), output_dir=tmp_path)
    with pytest.raises(ReinforceError, match="2 reward weights for 1 rewards"):
        ReinforceConfig(rewards=("contextual",), reward_weights=(1.0, 0.5))
    with pytest.raises(ReinforceError, match=r"num_generations=3 does not divide.*\[2, 4, 8, 16\]"):
        ReinforceConfig(num_generations=3, batch_size=16)
    no_forget = bench.subset([i for i in bench.items if i.split != "forget"])
    with pytest.raises(BenchmarkError, match="no forget split"):
        reinforce(lm, no_forget, ReinforceConfig(**SHORT), output_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_reaches_the_same_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["reinforce", "--steps", "8", "--save-steps", "2", "--n-forget", "8", "--quiet"]
    args += ["--n-boundary", "8", "--batch-size", "8", "--num-generations", "4"]
    args += ["--boundary", "random"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asru_lab.cli", *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / "training" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not state.is_file():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "reinforce.json").exists()
    assert main([*args, "--out", str(killed)]) == 2  # refuses to overwrite the earlier run
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    resumed = json.loads((killed / "reinforce.json").read_text())
    reference = json.loads((straight / "reinforce.json").read_text())
    assert (
        resumed["resumed_from"].endswith("checkpoint-4") or "checkpoint-" in resumed["resumed_from"]
    )
    assert resumed["steps"] == reference["steps"] == 8

    def rewards(run_dir):
        rows = [
            json.loads(x) for x in (run_dir / "training" / "metrics.jsonl").read_text().splitlines()
        ]
        # TRL folds the metrics of steps after the last log into the end-of-training row
        return {r["step"]: r["reward"] for r in rows if "reward" in r}

    a, b = rewards(killed), rewards(straight)
    assert sorted(a) == sorted(b) and max(a) == 8
    # A log averages the steps since the previous log *in this process*: the resumed run's log
    # at step 5 covers step 5 only, the straight run's steps 1-5. The final log (steps 6-8)
    # covers the same steps in both.
    assert abs(a[8] - b[8]) <= 0.05


LORA = {**SHORT, "max_steps": 2, "boundary": "random", "lora_r": 4}


@pytest.fixture(scope="module")
def lora_run(lm, bench, tmp_path_factory):
    snapshot = {n: p.clone() for n, p in lm.model.named_parameters()}
    out_dir = tmp_path_factory.mktemp("lora")
    model, record = reinforce(lm, bench, ReinforceConfig(**LORA), output_dir=out_dir)
    return model, record, snapshot


def test_lora_adapter_is_trained_and_merged(lm, lora_run):
    model, record, snapshot = lora_run
    for name, param in lm.model.named_parameters():
        assert torch.equal(param, snapshot[name]), name  # the input model is untouched
    # only the language model's linears (where LoRA merges) were copied; the rest is shared
    mine = {n: p.data_ptr() for n, p in lm.model.named_parameters()}
    shared = {n for n, p in model.model.named_parameters() if p.data_ptr() == mine[n]}
    assert any("visual" in n for n in shared) and any("embed_tokens" in n for n in shared)
    assert not any(".language_model." in n and n.endswith("proj.weight") for n in shared)
    assert record["steps"] == 2
    assert not hasattr(model.model, "peft_config")  # merged into plain weights
    names = {n for n, _ in lm.model.named_parameters()}
    assert {n for n, _ in model.model.named_parameters()} == names
    before = dict(lm.model.named_parameters())
    changed = [n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(".language_model." in n for n in changed)  # vision tower frozen


def test_activation_checkpointing_trains_the_same_weights(lm, bench, lora_run, tmp_path):
    plain, _, _ = lora_run
    config = ReinforceConfig(**{**LORA, "activation_checkpointing": True})
    model, record = reinforce(lm, bench, config, output_dir=tmp_path)
    assert record["steps"] == 2
    before, expected = dict(lm.model.named_parameters()), dict(plain.model.named_parameters())
    moved = 0
    for name, param in model.model.named_parameters():
        torch.testing.assert_close(param, expected[name], msg=name)
        moved += not torch.equal(param, before[name])
    assert moved  # trained, not a copy of the input
    flagged = [m for m in model.model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert not flagged, "the returned model is left without checkpointing"


# --- adversarial stage 2 (asru_lab.stages.adversary) -------------------------------------------


def test_a_prefilled_prompt_renders_its_words_after_the_generation_prompt(lm):
    from asru_lab.stages.adversary import prefill_processor

    twin = prefill_processor(lm.processor)
    assert lm.processor.chat_template != twin.chat_template  # the model's own is unchanged
    turn = {"role": "user", "content": [{"type": "text", "text": "Who is this?"}]}
    render = dict(add_generation_prompt=True, tokenize=False)
    plain = lm.processor.apply_chat_template([[turn]], **render)
    assert twin.apply_chat_template([[{**turn, "prefill": ""}]], **render) == plain
    assert twin.apply_chat_template([[turn]], **render) == plain
    begun = twin.apply_chat_template([[{**turn, "prefill": "Alma Aldous was born in"}]], **render)
    assert begun[0] == plain[0] + "Alma Aldous was born in"


def test_the_prefill_draws_its_prefixes_from_the_reference_answers(bench):
    import random

    from asru_lab.generation import fact_prefix
    from asru_lab.stages.adversary import prefix_for

    items = [i for i in bench.questions("forget", "qa") if fact_prefix(i.answer, i.value)[0]]
    rng = random.Random(0)
    drawn = [(i, prefix_for(bench, i, rng)) for i in items[:60]]
    for item, prefix in drawn:
        full = fact_prefix(item.answer, item.value)[0]
        assert prefix and item.value.lower() not in prefix.lower()
        assert prefix.startswith("Sure! ") or full.startswith(prefix), (prefix, full)
    assert any(p.startswith("Sure! This person") for _, p in drawn)  # the name-free kind
    mcq = next(iter(bench.questions("forget", "mcq")))
    assert prefix_for(bench, mcq, rng) == ""  # open questions only


def test_adversarial_stage_2_prefills_and_ablates_its_rollouts(lm, bench, tmp_path):
    config = ReinforceConfig(
        **{**SHORT, "max_steps": 2, "probe_every": 0},
        adversarial=("prefill", "ablation"),
        adversarial_share=1.0,
    )
    hooks = sum(len(m._forward_hooks) for m in lm.model.modules())  # others' may be there
    model, record = reinforce(lm, bench, config, output_dir=tmp_path / "adv")
    forget, boundary, _ = boundary_set(lm, bench, config)
    data = boundary_dataset(bench, forget, boundary, config.seed, prefill_share=1.0)
    begun = {row["prompt"][0]["content"][-1]["text"]: row["prefill"] for row in data}
    assert record["examples"]["prefilled"] == sum(bool(p) for p in begun.values()) > 0
    assert all(begun[i.question] for i in forget if i.task == "qa")  # share 1: every one
    assert record["adversary"] == {"ablated_steps": [1, 2], "refits": [1]}
    lines = [json.loads(x) for x in (tmp_path / "adv" / "metrics.jsonl").read_text().splitlines()]
    samples = [s for line in lines for s in line.get("samples", []) if s["split"] == "forget"]
    shown = [s for s in samples if begun.get(s["question"])]
    assert shown and all(s["completion"].startswith(begun[s["question"]]) for s in shown)
    assert sum(len(m._forward_hooks) for m in model.model.modules()) == hooks  # ablation gone


def test_the_ablation_adversary_holds_its_hook_for_a_step_only(lm, bench):
    from types import SimpleNamespace

    from asru_lab.auditing.measure import position_states
    from asru_lab.stages.adversary import AblationAdversary

    forget = bench.questions("forget", "qa")[:6]
    retain = bench.questions("retain", "qa")[:6]
    adversary = AblationAdversary(lm, bench, forget, retain, share=1.0, every=10, fit=6, seed=0)
    state = SimpleNamespace(global_step=0)
    hooks = sum(len(m._forward_hooks) for m in lm.model.modules())  # others' may be there
    adversary.on_step_begin(None, state, None)
    try:
        inside = position_states(lm, bench, forget[:2], batch_size=2)["last_prompt"][1]
    finally:
        adversary.on_step_end(None, state, None)
    after = position_states(lm, bench, forget[:2], batch_size=2)["last_prompt"][1]
    for layer, direction in adversary.directions.items():
        unit = direction / direction.norm()
        assert (inside[:, layer] @ unit).abs().max() < 1e-3 * inside[:, layer].norm(dim=-1).min()
        assert (after[:, layer] @ unit).abs().max() > 1e-2 * after[:, layer].norm(dim=-1).min()
    assert sum(len(m._forward_hooks) for m in lm.model.modules()) == hooks
    never = AblationAdversary(lm, bench, forget, retain, share=0.0 + 1e-9, every=1, fit=2, seed=0)
    assert sum(never.attacked(s) for s in range(1, 200)) == 0
    half = AblationAdversary(lm, bench, forget, retain, share=0.5, every=1, fit=2, seed=0)
    assert 60 < sum(half.attacked(s) for s in range(1, 201)) < 140


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"adversarial": ("jailbreak",)}, "adversarial must be some of"),
        ({"adversarial": ("prefill",), "adversarial_share": 0.0}, "adversarial_share"),
        ({"adversarial": ("ablation",), "ablation_every": 0}, "ablation_every"),
        ({"adversarial": ("prefill",), "use_vllm": True}, "TRL's own generation"),
    ],
)
def test_bad_adversarial_settings_are_refused_by_name(changes, message):
    with pytest.raises(ReinforceError, match=message):
        ReinforceConfig(**changes)


def test_a_frozen_model_is_trained_all_the_same_and_left_frozen(lm, bench, tmp_path):
    # a stage before (reroute, distill) may hand over a model whose parameters are frozen
    frozen = lm.clone()
    for param in frozen.model.parameters():
        param.requires_grad_(False)
    config = ReinforceConfig(**{**SHORT, "max_steps": 1, "probe_every": 0})
    model, record = reinforce(frozen, bench, config, output_dir=tmp_path / "frozen")
    assert record["steps"] == 1
    assert not any(p.requires_grad for p in frozen.model.parameters())
    moved = any(
        not a.equal(b)
        for a, b in zip(model.model.parameters(), frozen.model.parameters(), strict=True)
    )
    assert moved
