"""Resume survives a damaged newest checkpoint: stage 1.2 warns, continues from the older one
and ends where an uninterrupted run ends; stage 2 picks the newest readable TRL checkpoint;
with no readable checkpoint either says so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import quick_probe
from asru_lab.stages.redirect import RedirectConfig, RedirectError, redirect
from asru_lab.stages.reinforce import ReinforceError, _resume_checkpoint

# 4 SGD steps, a checkpoint after each of the first 3; the last 2 are kept (step 2 and 3).
TINY = {
    "solver": "sgd",
    "max_forget": 8,
    "max_retain": 8,
    "epochs": 1,
    "checkpoint_every": 1,
    "keep_checkpoints": 2,
    "progress": False,
}


@pytest.fixture(scope="module")
def probe(lm, bench) -> SteeringProbe:
    return quick_probe(lm, bench, n_examples=8)


def down_proj(lm, layer: int) -> torch.Tensor:
    return lm.adapter.layer(lm.model, layer).mlp.down_proj.weight.detach().clone()


@pytest.fixture()
def finished(lm, bench, probe, tmp_path: Path) -> tuple[RedirectConfig, torch.Tensor]:
    """A completed run's config (checkpoints in tmp_path) and its final weights."""
    config = RedirectConfig(checkpoint_dir=str(tmp_path / "checkpoints"), **TINY)
    out, record = redirect(lm, probe, bench, config)
    assert record["resumed_from"] is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-0000002",
        "step-0000003",
    ]
    return config, down_proj(out, probe.layer)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(lm, bench, probe, finished):
    config, reference = finished
    directory = Path(config.checkpoint_dir)
    truncate(directory / "step-0000003" / "trainable.safetensors")
    resume = dataclasses.replace(config, resume=True)
    with pytest.warns(UserWarning, match=r"step-0000003: trainable.safetensors does not load"):
        out, record = redirect(lm, probe, bench, resume)
    assert record["resumed_from"] == 2  # the older checkpoint, not a fresh start
    assert torch.equal(down_proj(out, probe.layer), reference)
    # the damaged one is kept aside for inspection; training wrote a good step 3 again
    assert (directory / "damaged-step-0000003").is_dir()
    assert (directory / "step-0000003" / "state.json").is_file()


def test_state_json_that_does_not_parse_counts_as_damaged(lm, bench, probe, finished):
    config, _ = finished
    directory = Path(config.checkpoint_dir)
    (directory / "step-0000003" / "state.json").write_text('{"step": 3, "par')
    resume = dataclasses.replace(config, resume=True)
    with pytest.warns(UserWarning, match=r"step-0000003: state.json does not parse.*step-0000002"):
        _, record = redirect(lm, probe, bench, resume)
    assert record["resumed_from"] == 2


def test_no_readable_checkpoint_is_an_error(lm, bench, probe, finished):
    config, _ = finished
    directory = Path(config.checkpoint_dir)
    (directory / "step-0000003" / "state.json").unlink()
    older = directory / "step-0000002" / "trainable.safetensors"
    tensors = load_file(older)
    missing = next(k for k in tensors if k.startswith("param."))
    save_file({k: v for k, v in tensors.items() if k != missing}, older)
    resume = dataclasses.replace(config, resume=True)
    with pytest.raises(RedirectError, match="no checkpoint in .* can be read") as raised:
        redirect(lm, probe, bench, resume)
    assert "step-0000003: state.json is missing" in str(raised.value)
    assert f"step-0000002: tensor {missing} is missing" in str(raised.value)
    assert (directory / "step-0000003").is_dir()  # nothing was moved or deleted


# --- stage 2: TRL's checkpoint-N folders ------------------------------------------------------


def fake_trl_checkpoint(path: Path, step: int) -> None:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"weight": torch.full((4, 4), float(step))}, path / "model.safetensors")
    torch.save({"state": {}}, path / "optimizer.pt")


def test_stage2_resume_skips_a_damaged_trl_checkpoint(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        fake_trl_checkpoint(tmp_path / f"checkpoint-{step}", step)
    assert _resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    truncate(tmp_path / "checkpoint-6" / "model.safetensors")
    truncate(tmp_path / "checkpoint-4" / "optimizer.pt")
    with pytest.warns(UserWarning, match=r"checkpoint-6: model.safetensors does not load.*"):
        assert _resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2",
        "damaged-checkpoint-4",
        "damaged-checkpoint-6",
    ]
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{")
    with pytest.raises(ReinforceError, match=r"no checkpoint .* checkpoint-2: trainer_state.json"):
        _resume_checkpoint(tmp_path)
