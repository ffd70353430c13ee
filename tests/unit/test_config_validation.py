"""Every config and every probe file refuses a number that is not finite, of the wrong type or
out of range, with its own error class and a message that names the field and the value."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import asru_lab
from asru_lab.auditing import AuditConfig
from asru_lab.baselines.asru import AsruConfig
from asru_lab.baselines.deep import DeepAsruConfig
from asru_lab.baselines.gated_steer import GatedSteerConfig
from asru_lab.baselines.mmunlearner import MMUnlearnerConfig
from asru_lab.baselines.npo_sam import NpoSamConfig
from asru_lab.baselines.registry import UnlearnError
from asru_lab.baselines.repnoise import RepNoiseConfig
from asru_lab.baselines.rmu import RmuConfig
from asru_lab.baselines.steer_only import SteerOnlyConfig
from asru_lab.baselines.trainer import UnlearnConfig
from asru_lab.baselines.undo import UndoConfig
from asru_lab.causal import CausalTraceConfig, CausalTraceError
from asru_lab.data.schema import BenchmarkError
from asru_lab.data.synthetic import SyntheticConfig
from asru_lab.directions import threshold_at_fpr
from asru_lab.evaluation.harness import EvalConfig
from asru_lab.probe import MemorisationGate, ProbeError, SteeringProbe
from asru_lab.runs.build_embedded import BuildConfig, FormatStageConfig
from asru_lab.runs.pipeline import PipelineConfig
from asru_lab.runs.reproduce import ReproduceConfig
from asru_lab.runs.tuning import TuningConfig
from asru_lab.stages.distill import DistillConfig, DistillError
from asru_lab.stages.finetune import FinetuneConfig, FinetuneError
from asru_lab.stages.locate import LocateConfig
from asru_lab.stages.redirect import RedirectConfig, RedirectError
from asru_lab.stages.reinforce import ReinforceConfig, ReinforceError
from asru_lab.stages.reroute import RerouteConfig, RerouteError
from asru_lab.validation import ConfigError

CONFIGS = {
    RedirectConfig: RedirectError,
    DistillConfig: DistillError,
    RerouteConfig: RerouteError,
    ReinforceConfig: ReinforceError,
    LocateConfig: ConfigError,
    EvalConfig: ConfigError,
    UnlearnConfig: UnlearnError,
    AsruConfig: UnlearnError,
    UndoConfig: UnlearnError,
    DeepAsruConfig: UnlearnError,
    RmuConfig: UnlearnError,
    RepNoiseConfig: UnlearnError,
    NpoSamConfig: UnlearnError,
    SteerOnlyConfig: UnlearnError,
    GatedSteerConfig: UnlearnError,
    MMUnlearnerConfig: UnlearnError,
    TuningConfig: UnlearnError,
    FinetuneConfig: FinetuneError,
    CausalTraceConfig: CausalTraceError,
    ReproduceConfig: UnlearnError,
    PipelineConfig: ConfigError,
    BuildConfig: ConfigError,
    FormatStageConfig: ConfigError,
    SyntheticConfig: BenchmarkError,
    AuditConfig: ConfigError,
}


def fields_of(kinds: tuple) -> list:
    """(config, error, field) for every field annotated as one of `kinds` (or it | None)."""
    found = []
    for config, error in CONFIGS.items():
        for name, hint in typing.get_type_hints(config).items():
            options = set(typing.get_args(hint)) - {type(None)} or {hint}
            if options <= set(kinds):
                found.append(pytest.param(config, error, name, id=f"{config.__name__}.{name}"))
    return found


def refused(error: type[Exception], message: str):
    return pytest.raises(error, match=re.escape(message))


def test_every_config_in_the_package_is_covered():
    source = Path(asru_lab.__file__).parent
    names = {
        match
        for path in source.rglob("*.py")
        for match in re.findall(r"^class (\w+Config)\b", path.read_text(), re.M)
    }
    assert names == {c.__name__ for c in CONFIGS}


@pytest.mark.parametrize("config, error", CONFIGS.items(), ids=lambda c: c.__name__)
def test_defaults_and_paper_settings_stay_valid(config, error):
    config()
    if callable(getattr(config, "paper", None)):
        config.paper()


@pytest.mark.parametrize("config, error, name", fields_of((float,)))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_nan_and_infinity(config, error, name, value):
    with refused(error, f"{config.__name__}.{name} must be a finite number, got {value!r}"):
        config(**{name: value})


@pytest.mark.parametrize("config, error, name", fields_of((float,)))
def test_every_float_field_refuses_a_string_and_a_bool(config, error, name):
    with refused(error, f"{config.__name__}.{name} must be a number"):
        config(**{name: "0.5"})
    with refused(error, "got True"):
        config(**{name: True})


@pytest.mark.parametrize("config, error, name", fields_of((int,)))
def test_every_int_field_refuses_a_bool_and_a_fraction(config, error, name):
    with refused(error, f"{config.__name__}.{name} must be an integer"):
        config(**{name: True})
    with refused(error, f"{config.__name__}.{name} must be an integer"):
        config(**{name: 2.5})


def test_bool_fields_refuse_a_string():
    with refused(RedirectError, "RedirectConfig.resume must be True or False, got 'no'"):
        RedirectConfig(resume="no")


@pytest.mark.parametrize(
    "config, error, name",
    [
        (RedirectConfig, RedirectError, "lr"),
        (UnlearnConfig, UnlearnError, "lr"),
        (FinetuneConfig, FinetuneError, "lr"),
        (ReinforceConfig, ReinforceError, "learning_rate"),
        (BuildConfig, ConfigError, "lr"),
    ],
)
@pytest.mark.parametrize("value", [0, -1, -1e-4])
def test_learning_rates_must_be_positive(config, error, name, value):
    with refused(error, f"{config.__name__}.{name} must be > 0, got {value!r}"):
        config(**{name: value})


@pytest.mark.parametrize("value", [0, -3])
def test_max_items_must_be_at_least_one_or_none(value):
    with refused(ConfigError, f"EvalConfig.max_items must be >= 1, got {value}"):
        EvalConfig(max_items=value)
    assert EvalConfig(max_items=None).max_items is None


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: RedirectConfig(epochs=True), RedirectError, "RedirectConfig.epochs must be an"),
        (lambda: UnlearnConfig(epochs=0), UnlearnError, "UnlearnConfig.epochs must be >= 1, got 0"),
        (lambda: RedirectConfig(max_forget=0), RedirectError, "max_forget must be >= 1, got 0"),
        (lambda: RedirectConfig(batch_size=0), RedirectError, "batch_size must be >= 1, got 0"),
        (lambda: RedirectConfig(alpha=-1.0), RedirectError, "alpha must be >= 0, got -1.0"),
        (lambda: RedirectConfig(lam="3"), RedirectError, "lam must be a number, got '3'"),
        (lambda: ReinforceConfig(top_p=1.5), ReinforceError, "top_p must be in (0, 1], got 1.5"),
        (lambda: ReinforceConfig(num_generations=1), ReinforceError, "must be >= 2, got 1"),
        (lambda: LocateConfig(holdout=1.0), ConfigError, "holdout must be in (0, 1), got 1.0"),
        (
            lambda: LocateConfig(gate_max_fpr=(0.01, 1.5)),
            ConfigError,
            "LocateConfig.gate_max_fpr[1] must be in [0, 1], got 1.5",
        ),
        (
            lambda: LocateConfig(strengths=(1.0, math.nan)),
            ConfigError,
            "LocateConfig.strengths[1] must be a finite number, got nan",
        ),
        (
            lambda: LocateConfig(layers=3),
            ConfigError,
            "LocateConfig.layers must be a tuple of integers or None, got 3",
        ),
        (
            lambda: ReinforceConfig(rewards=("contextual", "length"), reward_weights=(1, math.inf)),
            ReinforceError,
            "ReinforceConfig.reward_weights[1] must be a finite number, got inf",
        ),
        (lambda: UnlearnConfig(lora_dropout=1.0), UnlearnError, "must be in [0, 1), got 1.0"),
        (lambda: CausalTraceConfig(min_drop=-0.1), CausalTraceError, "[0, 1], got -0.1"),
        (lambda: CausalTraceConfig(max_people=0), CausalTraceError, "must be >= 1, got 0"),
        (
            lambda: BuildConfig(task_weights={"picture": math.nan}),
            ConfigError,
            "BuildConfig.task_weights['picture'] must be a finite number, got nan",
        ),
        (lambda: SyntheticConfig(n_known=0), BenchmarkError, "n_known must be >= 1, got 0"),
        (
            lambda: ReproduceConfig(forget_ratios=(0.1, 1.5)),
            UnlearnError,
            "ReproduceConfig.forget_ratios[1] must be in (0, 1), got 1.5",
        ),
        (lambda: SteerOnlyConfig(alpha=math.nan), UnlearnError, "alpha must be a finite number"),
    ],
)
def test_out_of_range_and_ill_typed_values_are_refused(make, error, message):
    with refused(error, message):
        make()


def test_ordinary_values_stay_valid():
    RedirectConfig(lam=3, alpha=0, preserve_weight=0, max_retain=None, lr=1)  # ints for floats
    RedirectConfig(max_forget=np.int64(8), lam=np.float32(5.0))
    ReinforceConfig(epochs=2, reward_weights=None, max_steps=-1, probe_every=0)
    LocateConfig(layers=(-1, 4), strengths=(1,), heatmap_positions=("last", -2, "prompt"))
    LocateConfig(max_retain_drop=0.0)  # no retain change allowed: no warning, no division by 0
    EvalConfig(max_items=1, splits=["forget"])
    UnlearnConfig(lora_r=0, max_retain=None)


def test_a_gate_that_never_fires_keeps_its_threshold_in_range():
    assert threshold_at_fpr(torch.tensor([1.0]), torch.tensor([1.0, 1.0]), 0.0) <= 1.0


# --- probes -----------------------------------------------------------------------------------


HIDDEN = 8
MODEL = {
    "name": "tiny",
    "revision": None,
    "family": "qwen3_vl",
    "hidden_size": HIDDEN,
    "num_layers": 2,
    "config_sha256": "0" * 64,
}


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    gate = MemorisationGate(torch.zeros(2, HIDDEN), 0.0, 0.5)
    return SteeringProbe(torch.ones(HIDDEN), 1, MODEL, alpha=2.0, gate=gate).save(tmp_path / "p")


def tamper(probe_dir: Path, change) -> None:
    path = probe_dir / "probe.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def set_gate(key, value):
    return lambda meta: meta["gate"].update({key: value})


def set_field(key, value):
    return lambda meta: meta.update({key: value})


@pytest.mark.parametrize(
    "change, message",
    [
        (set_field("alpha", math.nan), "SteeringProbe.alpha must be a finite number, got nan"),
        (set_field("alpha", "2"), "SteeringProbe.alpha must be a number, got '2'"),
        (set_gate("bias", math.nan), "MemorisationGate.bias must be a finite number, got nan"),
        (set_gate("bias", -math.inf), "MemorisationGate.bias must be a finite number, got -inf"),
        (
            set_gate("threshold", math.nan),
            "MemorisationGate.threshold must be a finite number, got nan",
        ),
        (set_gate("threshold", 1.5), "MemorisationGate.threshold must be in [0, 1], got 1.5"),
        (set_gate("threshold", None), "MemorisationGate.threshold must be a number, got None"),
        (set_field("layer", True), "SteeringProbe.layer must be an integer, got True"),
        (set_field("layer", 1.5), "SteeringProbe.layer must be an integer, got 1.5"),
        (set_field("layer", "1"), "SteeringProbe.layer must be an integer, got '1'"),
        (set_field("layer", -1), "SteeringProbe.layer must be >= 0, got -1"),
    ],
)
def test_a_probe_file_with_a_bad_number_is_refused(probe_dir, change, message):
    assert SteeringProbe.load(probe_dir).alpha == 2.0
    tamper(probe_dir, change)
    with pytest.raises(ProbeError, match=re.escape(f"{probe_dir / 'probe.json'}: {message}")):
        SteeringProbe.load(probe_dir)


def test_a_probe_built_in_code_is_checked_the_same_way():
    with refused(ProbeError, "SteeringProbe.layer must be an integer, got True"):
        SteeringProbe(torch.ones(HIDDEN), True, MODEL)
    with refused(ProbeError, "MemorisationGate.threshold must be in [0, 1], got 1.5"):
        MemorisationGate(torch.zeros(HIDDEN), 0.0, 1.5)
    probe = SteeringProbe(torch.ones(HIDDEN), 1, MODEL)
    with refused(ProbeError, "SteeringProbe.alpha must be a finite number, got nan"):
        dataclasses.replace(probe, alpha=math.nan)
