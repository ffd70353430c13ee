"""Stage 1.2 (`redirect`): the exact solver really is the optimum, SGD trains what it is told
and resumes exactly, the result saves and reloads, and bad input gets a clear error."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError
from asru_lab.models.loading import ModelLoadError
from asru_lab.probe import ProbeError, SteeringProbe
from asru_lab.stages.locate import quick_probe
from asru_lab.stages.redirect import (
    RedirectConfig,
    RedirectError,
    objective,
    prepare_data,
    redirect,
    save_redirected,
)

SMALL = {"max_forget": 24, "max_retain": 48, "progress": False}


@pytest.fixture(scope="module")
def probe(lm, bench) -> SteeringProbe:
    """A knowledge-absence direction from small sets, at the top layer, with every layer's."""
    return quick_probe(lm, bench, n_examples=48)


@pytest.fixture(scope="module")
def closed(lm, bench, probe):
    return redirect(lm, probe, bench, RedirectConfig(**SMALL))


def down_proj(lm, layer):
    return lm.adapter.layer(lm.model, layer).mlp.down_proj.weight.detach()


def test_closed_form_edits_one_matrix_by_a_rank_one_update_along_v(lm, probe, closed):
    out, record = closed
    assert record["solver"] == "closed_form"
    assert record["trainable"] == [lm.adapter.mlp_out_path(probe.layer)]
    before = dict(lm.model.named_parameters())
    changed = [n for n, p in out.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [f"{lm.adapter.mlp_out_path(probe.layer)}.weight"]
    delta = (down_proj(out, probe.layer) - down_proj(lm, probe.layer)).double()
    s = torch.linalg.svdvals(delta)
    assert s[1] < 1e-4 * s[0]  # rank one
    u = torch.linalg.svd(delta).U[:, 0]
    cosine = abs(float(u @ probe.direction.double())) / float(probe.direction.norm())
    assert cosine > 0.9999  # the update writes along v


def test_input_model_is_not_modified(lm, bench, probe):
    snapshot = {n: (p.clone(), p.requires_grad) for n, p in lm.model.named_parameters()}
    redirect(lm, probe, bench, RedirectConfig(**SMALL))
    redirect(lm, probe, bench, RedirectConfig(solver="sgd", epochs=1, **SMALL))
    for name, param in lm.model.named_parameters():
        assert torch.equal(param, snapshot[name][0]), name
        assert param.requires_grad == snapshot[name][1], name


def test_only_the_trained_module_is_copied(lm, probe, closed):
    """No full model clone: every weight but the trained down_proj shares the input model's
    memory (at 8B the clone would be 17.5 GB in bf16), tied weights stay tied."""
    out, record = closed
    before = dict(lm.model.named_parameters())
    trained = f"{record['trainable'][0]}.weight"
    for name, param in out.model.named_parameters():
        shared = param.data_ptr() == before[name].data_ptr()
        assert shared == (name != trained), name
        assert param is not before[name]  # its own requires_grad
    assert out.model.lm_head.weight is out.adapter.embed_tokens(out.model).weight
    with pytest.raises(ModelLoadError, match="no such module"):
        lm.clone(copy_only=["model.language_model.layers.99"])


def test_closed_form_objective_matches_forward_passes(lm, bench, probe, closed):
    out, record = closed
    measured = objective(out, lm, probe, bench, RedirectConfig(**SMALL))
    analytic = record["objective"]["terms"]
    for key in ("forget", "retain", "preserve", "total"):
        assert measured[key] == pytest.approx(analytic[key], rel=1e-4, abs=1e-6), key
    assert record["objective"]["final"] < 0.5 * record["objective"]["initial"]
    untouched = objective(lm, lm, probe, bench, RedirectConfig(**SMALL))
    assert untouched["total"] == pytest.approx(record["objective"]["initial"], rel=1e-4)


def test_closed_form_is_the_minimum(lm, bench, probe, closed):
    """Any other update of the same matrix does worse: the closed form is the optimum."""
    out, record = closed
    config = RedirectConfig(**SMALL)
    data = prepare_data(lm, bench, config)
    delta = down_proj(out, probe.layer) - down_proj(lm, probe.layer)
    g = torch.Generator().manual_seed(0)
    for scale in (0.9, 1.1):
        other = lm.clone()
        with torch.no_grad():
            down_proj(other, probe.layer).add_(scale * delta)
        assert (
            objective(other, lm, probe, bench, config, data=data)["total"]
            > record["objective"]["final"]
        )
    other = lm.clone()
    with torch.no_grad():
        noise = torch.randn(delta.shape, generator=g) * delta.norm() * 0.01 / delta.numel() ** 0.5
        down_proj(other, probe.layer).add_(delta + noise)
    assert (
        objective(other, lm, probe, bench, config, data=data)["total"]
        > record["objective"]["final"]
    )


def test_closed_form_beats_three_epochs_of_sgd_on_the_same_data(lm, bench, probe, closed):
    _, exact = closed
    _, sgd = redirect(lm, probe, bench, RedirectConfig(solver="sgd", **SMALL))
    assert sgd["solver"] == "sgd" and sgd["steps"] == 3 * 12  # 24 forget examples, batch 2
    assert len(sgd["losses"]["forget"]) == len(sgd["losses"]["retain"]) == 36
    assert exact["objective"]["final"] <= sgd["objective"]["final"]
    assert sgd["objective"]["final"] < sgd["objective"]["initial"]  # SGD does make progress


def test_early_exit_computes_the_same_training(lm, bench, probe):
    low = probe.at_layer(lm, 1)
    config = RedirectConfig(solver="sgd", epochs=1, **SMALL)
    _, fast = redirect(lm, low, bench, config)
    _, full = redirect(lm, low, bench, dataclasses.replace(config, early_exit=False))
    assert fast["losses"]["forget"] == pytest.approx(full["losses"]["forget"], rel=1e-5)
    assert fast["objective"]["final"] == pytest.approx(full["objective"]["final"], rel=1e-5)


def test_sgd_trains_lora_and_several_modules(lm, bench, probe):
    out, record = redirect(lm, probe, bench, RedirectConfig(lora_r=4, lr=1e-3, epochs=1, **SMALL))
    assert record["solver"] == "sgd"  # auto: LoRA needs SGD
    assert record["trainable_parameters"] == 4 * (576 + 192)
    assert not hasattr(out.model, "peft_config")  # merged back into a plain model
    assert record["objective"]["final"] < record["objective"]["initial"]
    modules = ("mlp.down_proj", "mlp.up_proj", "self_attn.o_proj")  # or a whole block: "mlp"
    out, record = redirect(lm, probe, bench, RedirectConfig(modules=modules, epochs=1, **SMALL))
    assert record["solver"] == "sgd" and len(record["trainable"]) == 3
    before = dict(lm.model.named_parameters())
    changed = {n for n, p in out.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{name}.weight" for name in record["trainable"]}
    out, record = redirect(lm, probe, bench, RedirectConfig(modules=("mlp",), epochs=1, **SMALL))
    changed = {n for n, p in out.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{record['trainable'][0]}.{k}_proj.weight" for k in ("gate", "up", "down")}


def test_input_site_trains_the_layer_below(lm, bench, probe):
    below = dataclasses.replace(probe, site="input")
    out, record = redirect(lm, below, bench, RedirectConfig(**SMALL))
    assert record["trainable"] == [lm.adapter.mlp_out_path(probe.layer - 1)]
    measured = objective(out, lm, below, bench, RedirectConfig(**SMALL))
    assert measured["total"] == pytest.approx(record["objective"]["final"], rel=1e-4)


@pytest.mark.filterwarnings("ignore:the closed-form system is singular")  # 72 tokens, 576 inputs
def test_answer_end_positions_and_the_paper_preset(lm, bench, probe):
    config = RedirectConfig.paper(solver="closed_form", **SMALL)
    assert (config.alpha, config.preserve_weight, config.positions) == (1.0, 0.0, "answer_end")
    out, record = redirect(lm, probe, bench, config)
    assert record["config"]["positions"] == "answer_end"
    measured = objective(out, lm, probe, bench, config)
    tolerance = 1e-6 * record["objective"]["initial"]  # few tokens: a near-perfect fit
    assert measured["total"] == pytest.approx(record["objective"]["final"], abs=tolerance)


def test_same_seed_same_model(lm, bench, probe, closed):
    out, _ = closed
    again, _ = redirect(lm, probe, bench, RedirectConfig(**SMALL))
    assert torch.equal(down_proj(again, probe.layer), down_proj(out, probe.layer))
    one, _ = redirect(lm, probe, bench, RedirectConfig(solver="sgd", epochs=1, **SMALL))
    two, _ = redirect(lm, probe, bench, RedirectConfig(solver="sgd", epochs=1, **SMALL))
    assert torch.equal(down_proj(one, probe.layer), down_proj(two, probe.layer))


def test_saved_model_reloads_with_its_record(lm, bench, probe, closed, tmp_path):
    out, record = closed
    path = save_redirected(out, record, tmp_path / "stage1")
    loaded = al.load_model(path)
    assert torch.equal(down_proj(loaded, probe.layer), down_proj(out, probe.layer))
    saved = json.loads((path / "redirect.json").read_text())
    assert saved["objective"] == record["objective"]
    for key in ("config", "probe", "solver", "seconds", "examples", "objective"):
        assert key in saved
    assert saved["probe"]["fingerprint"] == record["probe"]["fingerprint"]
    assert loaded.info["redirect"]["solver"] == "closed_form"


# --- resume ----------------------------------------------------------------------------------


def run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "asru_lab.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(probe, tmp_path):
    probe_dir = probe.save(tmp_path / "probe")
    common = ["redirect", "--probe", str(probe_dir), "--solver", "sgd", "--quiet"]
    common += ["--max-forget", "40", "--max-retain", "40", "--checkpoint-every", "4"]
    killed = tmp_path / "killed"
    proc = run_cli([*common, "--out", str(killed)])
    deadline = time.time() + 300
    checkpoints = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if len(list(checkpoints.glob("step-*"))) >= 2:  # mid-training, after >= 2 checkpoints
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "redirect.json").exists()
    # without --resume the old checkpoints are not silently overwritten
    assert main([*common, "--out", str(killed)]) == 2
    assert main([*common, "--out", str(killed), "--resume"]) == 0
    resumed = json.loads((killed / "redirect.json").read_text())
    assert resumed["resumed_from"] >= 4
    straight = tmp_path / "straight"
    assert main([*common, "--out", str(straight)]) == 0
    reference = json.loads((straight / "redirect.json").read_text())
    assert reference["resumed_from"] is None
    assert resumed["steps"] == reference["steps"] == 60
    assert abs(resumed["objective"]["final"] - reference["objective"]["final"]) <= 1e-4
    assert resumed["losses"]["forget"] == pytest.approx(reference["losses"]["forget"], abs=1e-4)


def test_resume_refuses_a_checkpoint_of_another_configuration(lm, bench, probe, tmp_path):
    config = RedirectConfig(
        solver="sgd", epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every=2, **SMALL
    )
    redirect(lm, probe, bench, config)
    assert list(tmp_path.glob("step-*"))
    other = dataclasses.replace(config, lr=5e-4, resume=True)
    with pytest.raises(RedirectError, match="different run.*config"):
        redirect(lm, probe, bench, other)


# --- bad input -------------------------------------------------------------------------------


def test_probe_whose_layer_the_model_lacks(lm, bench, probe):
    deeper = dataclasses.replace(probe, layer=lm.num_layers + 2)
    with pytest.raises(ProbeError, match="'layer' is 8.*layers 0..5"):
        redirect(lm, deeper, bench, RedirectConfig(**SMALL))
    with pytest.raises(ProbeError, match="operation"):
        redirect(lm, dataclasses.replace(probe, operation="ablate"), bench, RedirectConfig())


def test_trainable_module_that_does_not_exist(lm, bench, probe):
    with pytest.raises(RedirectError, match=r"'mlp\.down_projection' does not exist.*down_proj"):
        redirect(lm, probe, bench, RedirectConfig(modules=("mlp.down_projection",), **SMALL))
    low = probe.at_layer(lm, 2)
    above = lm.adapter.mlp_out_path(4)
    with pytest.raises(RedirectError, match="above the loss site"):
        redirect(lm, low, bench, RedirectConfig(modules=(above,), **SMALL))
    with pytest.raises(RedirectError, match="LoRA.*linear layers.*Qwen3VLTextMLP"):
        redirect(lm, probe, bench, RedirectConfig(modules=("mlp",), lora_r=4, **SMALL))
    with pytest.raises(RedirectError, match="closed_form.*not possible.*LoRA"):
        redirect(lm, probe, bench, RedirectConfig(solver="closed_form", lora_r=4, **SMALL))
    with pytest.raises(RedirectError, match="unknown solver"):
        RedirectConfig(solver="newton")


def test_forget_set_empty_after_filtering(lm, bench, probe):
    forget_text_only = [i for i in bench.items if not (i.split == "forget" and i.image)]
    text_only_bench = bench.subset(forget_text_only)
    with pytest.raises(BenchmarkError, match="no forget examples.*text_only=False"):
        redirect(lm, probe, text_only_bench, RedirectConfig(text_only=False, **SMALL))
    with pytest.raises(BenchmarkError, match="not in .*forget split"):
        redirect(lm, probe, bench, RedirectConfig(forget_people=("nobody",), **SMALL))


def test_singular_system_falls_back_to_ridge_and_says_so(lm, bench, probe):
    config = RedirectConfig(max_forget=2, max_retain=2, preserve_weight=0.0, progress=False)
    with pytest.warns(UserWarning, match="singular.*ridge"):
        out, record = redirect(lm, probe, bench, config)
    info = record["closed_form"]
    assert info["singular"] and info["ridge"] > 0
    assert torch.isfinite(down_proj(out, probe.layer)).all()
    assert record["objective"]["final"] < record["objective"]["initial"]


def test_cli_redirect_and_its_errors(probe, tmp_path, capsys):
    probe_dir = probe.save(tmp_path / "probe")
    out = tmp_path / "model"
    small = ["--max-forget", "16", "--max-retain", "16", "--quiet"]
    assert main(["redirect", "--probe", str(probe_dir), "--out", str(out), *small]) == 0
    assert "closed_form: objective" in capsys.readouterr().out
    assert (out / "redirect.json").is_file() and al.load_model(out).name.endswith("+redirect")
    bad = ["redirect", "--probe", str(probe_dir), "--out", str(tmp_path / "x"), *small]
    assert main([*bad, "--modules", "mlp.nothing"]) == 2
    assert "mlp.nothing" in capsys.readouterr().err
    (probe_dir / "probe.safetensors").write_bytes(b"damaged")
    assert main(bad) == 2
    assert "damaged" in capsys.readouterr().err
    assert not Path(tmp_path / "x").exists()
