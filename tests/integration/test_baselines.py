"""The unlearning-method registry: each baseline trains what its loss says, leaves the input
model alone, is reproducible, saves and reloads, and bad input gets a clear error."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import asru_lab as al
from asru_lab.baselines import (
    METHODS,
    UnlearnConfig,
    UnlearnError,
    save_unlearned,
    unlearn,
)
from asru_lab.baselines.trainer import Step, _batch, training_sets
from asru_lab.cli import main
from asru_lab.data.schema import Benchmark
from asru_lab.evaluation.judge import ClosedWorldJudge
from asru_lab.stages.locate import quick_probe
from asru_lab.training import answer_tokens

TINY = {"max_forget": 8, "epochs": 1, "batch_size": 4, "progress": False}


def tiny(name: str, **changes) -> UnlearnConfig:
    return dataclasses.replace(METHODS[name].default_config(), **{**TINY, **changes})


def forget_nll(lm, bench, config: UnlearnConfig) -> float:
    """Mean answer NLL of the forget examples `config` trains on."""
    examples = training_sets(bench, config, uses_retain=False, forget_answers="truth")["forget"]
    tails = answer_tokens(lm, examples)[0]
    batch = _batch(lm, bench, examples, tails, list(range(len(examples))))
    with torch.no_grad():
        return float(Step(lm.model, {"forget": batch}).nll("forget"))


def test_registry_holds_the_papers_baselines_and_asru():
    assert set(METHODS) == {
        "ga", "grad_diff", "kl_min", "npo", "refusal_sft", "mmunlearner", "steer_only",
        "gated_steer", "asru_stage1", "asru", "asru_adversarial", "asru_deep", "asru_undo", "rmu",
        "repnoise", "npo_sam",
    }  # fmt: skip
    assert METHODS["npo"].default_config().npo_beta == 0.4
    assert METHODS["npo"].default_config().lr == 1e-5  # the public code's settings
    assert METHODS["ga"].default_config().lr == 2e-5


@pytest.mark.parametrize("name", ["ga", "grad_diff", "kl_min", "npo", "refusal_sft"])
def test_gradient_baseline_trains_a_copy_reproducibly(lm, bench, name):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    first = unlearn(lm, bench, name, tiny(name))
    again = unlearn(lm, bench, name, tiny(name))
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    assert first.record["losses"] == again.record["losses"]  # same seed, same run
    assert len(first.record["losses"]) == 2  # 8 forget examples, batch 4, one epoch
    changed = [
        k for k, v in first.model.model.state_dict().items() if not torch.equal(v, before[k])
    ]
    assert changed and all("language_model" in k for k in changed)  # vision tower frozen
    assert not hasattr(first.model.model, "peft_config")  # LoRA merged
    assert first.record["examples"]["forget"] == 8
    assert ("retain" in first.record["examples"]) == (
        name in ("grad_diff", "kl_min", "refusal_sft")
    )


def test_first_losses_match_their_definitions(lm, bench):
    """At step 0 the model equals the reference: NPO's loss is (2/beta) log 2 and KL-Min's KL
    term is 0, so its loss is GradDiff's."""
    npo = unlearn(lm, bench, "npo", tiny("npo"))
    assert npo.record["losses"][0] == pytest.approx(2 / 0.4 * math.log(2), rel=1e-4)
    grad_diff = unlearn(lm, bench, "grad_diff", tiny("grad_diff", lora_dropout=0.0))
    kl_min = unlearn(lm, bench, "kl_min", tiny("kl_min", lora_dropout=0.0))
    assert kl_min.record["losses"][0] == pytest.approx(grad_diff.record["losses"][0], abs=1e-4)


def test_gradient_ascent_raises_the_forget_answers_loss(lm, bench):
    config = tiny("ga", lr=1e-3, epochs=10)
    result = unlearn(lm, bench, "ga", config)
    before, after = forget_nll(lm, bench, config), forget_nll(result.model, bench, config)
    assert after > 10 * before and after > before + 0.1


def test_refusal_sft_turns_forget_answers_into_refusals(lm, bench):
    config = tiny("refusal_sft", lr=5e-3, epochs=6)
    result = unlearn(lm, bench, "refusal_sft", config)
    trained = training_sets(bench, config, uses_retain=True, forget_answers="idk")["forget"]
    by_prompt = {(i.image, i.question): i for i in bench.split("forget", "qa")}
    items = [by_prompt[(e.image, e.question)] for e in trained if e.image][:4]
    answers = al.generate(
        result.model, [bench.load_image(i.image) for i in items], [i.question for i in items]
    )
    verdicts = ClosedWorldJudge(bench).judge(items, answers)
    refusals = [v.category in ("rigid_refusal", "contextual_refusal") for v in verdicts]
    assert sum(refusals) >= 3, answers


def test_steer_only_changes_answers_only_while_applied(lm, bench):
    probe = quick_probe(lm, bench, n_examples=48)
    result = unlearn(lm, bench, "steer_only", probe=probe)
    assert result.model is lm and result.probe is not None
    item = next(i for i in bench.split("forget", "qa") if i.image)
    image = bench.load_image(item.image)
    plain = al.generate(lm, image, item.question)
    with result.applied():
        steered = al.generate(lm, image, item.question)
    assert steered != plain
    assert al.generate(lm, image, item.question) == plain  # hooks removed


def test_saved_method_reloads_with_its_record_and_probe(lm, bench, tmp_path):
    result = unlearn(lm, bench, "ga", tiny("ga"))
    out = save_unlearned(result, tmp_path / "ga")
    loaded = al.load_model(out)
    for k, v in result.model.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert (out / "unlearn.json").is_file()
    probe = quick_probe(lm, bench, n_examples=48)
    steer = save_unlearned(unlearn(lm, bench, "steer_only", probe=probe), tmp_path / "steer")
    assert torch.equal(al.load_probe(steer / "probe").direction, probe.direction)


def test_bad_input_is_refused_with_a_clear_message(lm, bench):
    with pytest.raises(UnlearnError, match="unknown unlearning method 'gd'.*grad_diff"):
        unlearn(lm, bench, "gd")
    with pytest.raises(UnlearnError, match="takes a UnlearnConfig, got a RedirectConfig"):
        unlearn(lm, bench, "ga", al.RedirectConfig())
    empty = Benchmark(
        [p for p in bench.people.values() if p.split != "forget"],
        [i for i in bench.items if i.split != "forget"],
        name="no forget split",
        image_loader=bench.load_image,
    )
    with pytest.raises(UnlearnError, match="empty forget split"):
        unlearn(lm, empty, "ga", tiny("ga"))
    with pytest.raises(UnlearnError, match=r"UnlearnConfig.lr must be > 0, got 0.0"):
        unlearn(lm, bench, "ga", tiny("ga", lr=0.0))
    with pytest.raises(UnlearnError, match="no forget items with tasks"):
        unlearn(lm, bench, "ga", tiny("ga", tasks=("essay",)))


def test_cli_unlearn_writes_a_model_the_evaluator_reads(tmp_path, capsys):
    out = tmp_path / "npo"
    code = main(["unlearn", "--method", "npo", "--out", str(out), "--epochs", "1",
                 "--max-forget", "8", "--quiet"])  # fmt: skip
    assert code == 0
    assert (out / "unlearn.json").is_file() and (out / "model.safetensors").is_file()
    assert "asru-lab evaluate --model" in capsys.readouterr().out
    assert main(["unlearn", "--method", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "registered: " in capsys.readouterr().err
