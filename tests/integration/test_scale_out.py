"""Stage 2 scales out through `accelerate`, not through anything home-made: the CPU config
starts two processes that train one model over gloo; the GPU configs are well-formed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@pytest.mark.slow
def test_accelerate_launch_runs_three_grpo_steps_on_two_cpu_processes(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "final"
    cmd = [str(accelerate), "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")]
    cmd += ["-m", "asru_lab.cli", "reinforce", "--out", str(out), "--steps", "3", "--quiet"]
    cmd += ["--n-forget", "8", "--n-boundary", "8", "--batch-size", "4", "--num-generations", "4"]
    cmd += ["--boundary", "random"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "reinforce.json").read_text())
    assert record["world_size"] == 2
    assert record["steps"] == 3
    assert (out / "config.json").is_file() and (out / "training" / "metrics.jsonl").is_file()
    assert "on 2 process(es)" in done.stdout


@pytest.mark.parametrize(
    ("name", "kind"), [("fsdp_multi_gpu.yaml", "FSDP"), ("deepspeed_zero2.yaml", "DEEPSPEED")]
)
def test_gpu_configs_are_well_formed(name, kind):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["distributed_type"] == kind
    assert config["num_processes"] >= 2 and config["use_cpu"] is False
    if kind == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] == 2
    else:
        wrapped = config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
        from transformers.models.qwen3_vl import modeling_qwen3_vl

        assert all(hasattr(modeling_qwen3_vl, cls) for cls in wrapped)  # real class names
