"""A NaN or an infinity never becomes a model: a bad number on the command line is refused
before any work, and a training or solving step that leaves non-finite weights or loss stops
the run with a clear error and saves nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from asru_lab.baselines import METHODS, UnlearnError, unlearn
from asru_lab.cli import main
from asru_lab.data.schema import Benchmark
from asru_lab.probe import ProbeError
from asru_lab.stages.finetune import FinetuneConfig, FinetuneError, finetune
from asru_lab.stages.locate import LocateConfig, locate, quick_probe
from asru_lab.stages.redirect import RedirectConfig, RedirectError, redirect
from asru_lab.stages.reinforce import REINFORCE_FILE, ReinforceConfig, ReinforceError, reinforce
from asru_lab.validation import ConfigError

TINY = {"max_forget": 4, "max_retain": 4, "progress": False}


@pytest.fixture(scope="module")
def probe(lm, bench):
    return quick_probe(lm, bench, n_examples=8)


@pytest.fixture(scope="module")
def probe_dir(probe, tmp_path_factory):
    return probe.save(tmp_path_factory.mktemp("nonfinite") / "probe")


def poison_gradients(monkeypatch) -> None:
    """Make the clipping step fill every gradient with NaN, as an overflowed backward would."""

    def clip(parameters, max_norm, *args, **kwargs):
        for p in parameters:
            if p.grad is not None:
                p.grad.fill_(float("nan"))
        return torch.tensor(float("nan"))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


# --- refused before any work ----------------------------------------------------------------


@pytest.mark.parametrize("option", ["--lam", "--alpha"])
def test_cli_redirect_refuses_nan(option, probe_dir, tmp_path, capsys):
    out = tmp_path / "stage1"
    code = main(["redirect", "--probe", str(probe_dir), "--out", str(out), option, "nan"])
    assert code == 2
    field = option.removeprefix("--")
    assert f"RedirectConfig.{field} must be a finite number, got nan" in capsys.readouterr().err
    assert not out.exists()


def test_cli_evaluate_refuses_a_nan_steering_strength(probe_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["evaluate", "--probe", str(probe_dir), "--alpha", "nan", "--out", str(out)])
    assert code == 2
    assert "alpha must be a finite number, got nan" in capsys.readouterr().err
    assert not out.exists()


def test_steering_with_an_infinite_strength_is_refused(lm, probe):
    with pytest.raises(ProbeError, match="alpha must be a finite number, got inf"):
        with probe.apply(lm, alpha=float("inf")):
            pass


def test_fields_set_after_construction_are_checked_when_the_stage_starts(lm, bench):
    config = FinetuneConfig(progress=False)
    config.lr = float("nan")  # as `asru-lab finetune --lr nan` sets it
    with pytest.raises(FinetuneError, match="FinetuneConfig.lr must be a finite number, got nan"):
        finetune(lm, bench, config)
    located = LocateConfig(progress=False)
    located.strengths = (1.0, float("inf"))  # as `asru-lab locate --strengths 1 inf` sets it
    with pytest.raises(ConfigError, match=r"LocateConfig.strengths\[1\] must be a finite"):
        locate(lm, bench, located)


# --- stopped after the step that went wrong -------------------------------------------------


@pytest.mark.parametrize("lam", [1e150, 1e300])
def test_closed_form_whose_update_overflows_is_refused(lm, bench, probe, lam):
    with pytest.warns(UserWarning, match="singular"):  # 4 + 4 prompts pin down few inputs
        with pytest.raises(RedirectError, match=r"closed_form solver left NaN or infinite weig"):
            redirect(lm, probe, bench, RedirectConfig(lam=lam, **TINY))


def test_sgd_stops_at_the_first_non_finite_loss(lm, bench, probe, tmp_path):
    huge = dataclasses.replace(
        probe, direction=probe.direction / probe.direction.abs().max() * 3e38
    )
    config = RedirectConfig(solver="sgd", epochs=1, batch_size=2, **TINY)
    with pytest.raises(RedirectError, match=r"step 1 of 2\) left a non-finite objective \(inf\)"):
        redirect(lm, huge, bench, config)


def test_sgd_whose_weights_blow_up_stops_and_writes_no_checkpoint(lm, bench, probe, tmp_path):
    config = RedirectConfig(
        solver="sgd",
        epochs=1,
        batch_size=2,
        lr=1e30,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        checkpoint_every=1,
        **TINY,
    )
    with pytest.raises(RedirectError, match=r"non-finite.*lower lr \(now 1e\+30\)"):
        redirect(lm, probe, bench, config)
    assert not list(tmp_path.glob("checkpoints/step-*"))


def test_cli_redirect_that_diverges_saves_nothing(probe_dir, tmp_path, capsys):
    out = tmp_path / "stage1"
    args = [
        "--solver",
        "sgd",
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--max-forget",
        "4",
        "--max-retain",
        "4",
    ]
    code = main(["redirect", "--probe", str(probe_dir), "--out", str(out), *args, "--quiet"])
    assert code == 2
    assert "nothing was saved" in capsys.readouterr().err
    assert not (out / "redirect.json").exists()
    assert not list(out.glob("**/*.safetensors"))


def checkpointed_run(lm, bench, probe, checkpoints) -> RedirectConfig:
    """One SGD epoch that keeps its last checkpoint in `checkpoints`; returns its config."""
    config = RedirectConfig(
        solver="sgd",
        epochs=1,
        batch_size=2,
        checkpoint_dir=str(checkpoints),
        checkpoint_every=1,
        keep_checkpoints=1,
        **TINY,
    )
    redirect(lm, probe, bench, config)
    return config


def test_resume_refuses_a_checkpoint_holding_nan(lm, bench, probe, tmp_path):
    config = checkpointed_run(lm, bench, probe, tmp_path)
    (checkpoint,) = tmp_path.glob("step-*")
    tensors_file = checkpoint / "trainable.safetensors"
    tensors = load_file(str(tensors_file))
    name = next(k for k in tensors if k.startswith("param."))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(tensors_file))
    with pytest.raises(RedirectError, match=rf"{name} \(1 of \d+ values\) holds NaN"):
        redirect(lm, probe, bench, dataclasses.replace(config, resume=True))


def test_resume_refuses_a_state_with_a_nan_loss_or_a_bool_step(lm, bench, probe, tmp_path):
    config = checkpointed_run(lm, bench, probe, tmp_path)
    resumed = dataclasses.replace(config, resume=True)
    (checkpoint,) = tmp_path.glob("step-*")
    state_file = checkpoint / "state.json"
    state = json.loads(state_file.read_text())
    for change, message in (
        ({"losses": {**state["losses"], "forget": [float("nan")]}}, r"losses\['forget'\]\[0\]"),
        ({"step": True}, "step must be an integer, got True"),
        ({"param_groups": [{**state["param_groups"][0], "lr": float("inf")}]}, r"lr = inf"),
    ):
        state_file.write_text(json.dumps({**state, **change}))
        with pytest.raises(RedirectError, match=message):
            redirect(lm, probe, bench, resumed)


def test_grpo_stops_when_a_step_leaves_nan_weights(lm, bench, tmp_path):
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    config = ReinforceConfig(
        n_forget=2,
        n_boundary=2,
        boundary="random",
        max_steps=1,
        batch_size=4,
        num_generations=4,
        max_completion_length=8,
        probe_every=0,
        save_steps=1,
        progress=False,
    )
    with pytest.raises(ReinforceError, match=r"NaN or infinite weights in .* at step 1"):
        reinforce(lm, bench, config, output_dir=tmp_path, callbacks=[Poison()])
    assert not list(tmp_path.glob("checkpoint-*"))
    assert not (tmp_path / REINFORCE_FILE).exists()


def test_baseline_whose_last_step_leaves_nan_weights_is_refused(lm, bench, monkeypatch):
    poison_gradients(monkeypatch)
    config = dataclasses.replace(
        METHODS["ga"].default_config(), max_forget=4, batch_size=4, epochs=1, progress=False
    )
    with pytest.raises(UnlearnError, match=r"ga: training left NaN or infinite weights in"):
        unlearn(lm, bench, "ga", config)


def test_finetune_whose_last_step_leaves_nan_weights_is_refused(lm, bench, monkeypatch):
    poison_gradients(monkeypatch)
    four = [i for i in bench.items if i.split == "forget" and i.task == "cloze"][:4]
    small = Benchmark(list(bench.people.values()), four, name="four", image_loader=bench.load_image)
    config = FinetuneConfig(epochs=1, batch_size=4, splits=("forget",), progress=False)
    with pytest.raises(FinetuneError, match="training left NaN or infinite weights in"):
        finetune(lm, small, config)
