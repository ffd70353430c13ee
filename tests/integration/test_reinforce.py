"""Stage 2 (`reinforce`): a short GRPO run on the embedded model trains a copy, logs what a
user watches (metrics.jsonl, dashboard.html, held-out rates, samples), saves a loadable model;
bad configurations get clear errors before any training."""

from __future__ import annotations

import json

import pytest
import torch

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError
from asru_lab.reinforce import (
    ReinforceConfig,
    ReinforceError,
    boundary_dataset,
    boundary_set,
    reinforce,
    save_reinforced,
)
from asru_lab.rewards import RewardError

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
    assert [r["step"] for r in probes] == [2, 4]
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
    assert sorted(data.column_names) == ["answer", "image", "item", "prompt", "split", "value"]
    assert sorted(data["split"]) == ["forget"] * 8 + ["retain"] * 8
    assert bench.items[data[0]["item"]].value == data[0]["value"]


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
