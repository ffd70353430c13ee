"""gated_steer: the located probe's direction moved off the retain activations' principal
subspace, gated; it still forgets, leaves retain prompts alone, saves and reloads like any probe,
is reproducible, and bad settings get a clear error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import asru_lab as al
from asru_lab.baselines import METHODS, UnlearnError, save_unlearned, unlearn
from asru_lab.baselines.gated_steer import GatedSteerConfig, retain_sample
from asru_lab.capture import capture
from asru_lab.cli import main
from asru_lab.data.schema import contains_value, stratified_sample
from asru_lab.stages.locate import quick_probe

SMALL = {"n_retain": 64, "progress": False}


@pytest.fixture(scope="module")
def probe() -> al.SteeringProbe:
    """The committed probe of the embedded model (`al.locate`'s default sweep: layer 5, gated)."""
    return al.load_probe(Path(__file__).resolve().parents[2] / "figures" / "causal" / "probe")


@pytest.fixture(scope="module")
def small(lm, bench, probe):
    """gated_steer on 64 retain prompts."""
    return unlearn(lm, bench, "gated_steer", GatedSteerConfig(**SMALL), probe=probe)


@pytest.fixture(scope="module")
def held_out(bench):
    """Retain generation questions gated_steer did not read (image and text-only)."""
    read = {(i.image, i.question) for i in retain_sample(bench, GatedSteerConfig(**SMALL))}
    pool = [i for i in bench.questions("retain", "qa") if (i.image, i.question) not in read]
    return stratified_sample(pool, 32, random.Random(1))


def test_direction_is_orthogonal_to_the_retain_subspace(lm, bench, probe, small):
    items = retain_sample(bench, GatedSteerConfig(**SMALL))
    raw = capture(
        lm, bench, items, layers=[probe.layer], site=probe.site, keep_raw=True, progress=False
    ).raw[probe.layer]
    h = raw.double()
    eigenvalues, eigenvectors = torch.linalg.eigh(h.T @ h)
    rank = small.record["null_space"]["rank"]
    basis = eigenvectors[:, -rank:]  # the top `rank` principal directions, uncentered
    share = float(eigenvalues[-rank:].sum() / eigenvalues.sum())
    assert share == pytest.approx(small.record["null_space"]["energy_kept"], abs=1e-9)
    assert share >= 0.7 and rank < lm.hidden_size
    new, old = small.probe.direction.double(), probe.direction.double()
    assert float((basis.T @ new).norm() / new.norm()) < 1e-5
    kept = old - basis @ (basis.T @ old)  # the projection, rescaled to |v| (keep_norm)
    assert torch.allclose(new, kept * old.norm() / kept.norm(), atol=1e-3)
    cosine = float(new @ old / (new.norm() * old.norm()))
    assert cosine == pytest.approx(small.record["null_space"]["cosine"], abs=1e-5)
    assert small.record["null_space"]["removed_norm"] == pytest.approx(
        float((old - kept).norm()), rel=1e-5
    )


def test_retain_activations_reach_the_edit_less_than_steer_only(lm, bench, probe, small, held_out):
    """On retain prompts it never read, the activations' component along the steered direction
    is far smaller than along steer_only's."""
    before = probe.project(lm, bench, held_out).abs().mean()
    after = small.probe.project(lm, bench, held_out).abs().mean()
    assert after < 0.75 * before, (float(before), float(after))


def test_it_still_forgets_and_leaves_retain_answers_alone(lm, bench, small, held_out):
    forget = stratified_sample(bench.questions("forget", "qa"), 8, random.Random(0))
    retain = held_out[:8]
    items = forget + retain
    images = [bench.load_image(i.image) if i.image else None for i in items]
    questions = [i.question for i in items]
    plain = al.generate(lm, images, questions, max_new_tokens=24)
    with small.applied():
        steered = al.generate(lm, images, questions, max_new_tokens=24)
    assert al.generate(lm, images, questions, max_new_tokens=24) == plain  # hooks removed
    leaks = [contains_value(a, i.value) for i, a in zip(forget, steered[:8], strict=True)]
    assert sum(leaks) <= 2, steered[:8]
    assert steered[8:] == plain[8:]


def test_probe_saves_and_reloads_exactly(small, tmp_path):
    out = save_unlearned(small, tmp_path / "gated")
    loaded = al.load_probe(out / "probe")
    assert torch.equal(loaded.direction, small.probe.direction)
    assert torch.equal(loaded.gate.weight, small.probe.gate.weight)
    assert loaded.metadata() == small.probe.metadata()
    assert loaded.gated and loaded.layer_directions is None
    assert "null-space projected" in loaded.extraction["method"]
    assert loaded.extraction["null_space"]["rank"] == small.record["null_space"]["rank"]
    assert loaded.normalisation == "rescaled to the unprojected direction's norm"


def test_same_seed_same_direction(lm, bench, probe, small):
    again = unlearn(lm, bench, "gated_steer", GatedSteerConfig(**SMALL), probe=probe)
    assert torch.equal(again.probe.direction, small.probe.direction)
    other = unlearn(lm, bench, "gated_steer", GatedSteerConfig(**SMALL, seed=1), probe=probe)
    assert not torch.equal(other.probe.direction, small.probe.direction)


def test_default_run_through_the_registry(lm, bench, probe):
    assert METHODS["gated_steer"].needs_probe
    source = probe.direction.clone()
    result = unlearn(lm, bench, "gated_steer", probe=probe)
    assert torch.equal(probe.direction, source)  # the located probe is left as it was
    assert result.model is lm and result.probe.gated
    record = result.record
    assert record["config"]["n_retain"] == 512 and record["null_space"]["retain_prompts"] == 512
    assert record["probe"]["alpha"] == probe.alpha
    rms = record["null_space"]["retain_rms_along_direction"]
    assert rms["after"] < rms["before"]


def test_bad_settings_are_refused_with_a_clear_message(lm, bench, probe):
    with pytest.raises(UnlearnError, match=r"GatedSteerConfig.energy must be in \(0, 1\), got 1.5"):
        GatedSteerConfig(energy=1.5)
    with pytest.raises(UnlearnError, match=r"GatedSteerConfig.n_retain must be >= 1, got 0"):
        GatedSteerConfig(n_retain=0)
    with pytest.raises(UnlearnError, match="tasks must name one or more of"):
        GatedSteerConfig(tasks=("essay",))
    ungated = quick_probe(lm, bench, n_examples=8)
    with pytest.raises(UnlearnError, match="needs a probe with a memorisation gate"):
        unlearn(lm, bench, "gated_steer", GatedSteerConfig(**SMALL), probe=ungated)
    with pytest.raises(UnlearnError, match="takes a GatedSteerConfig, got a SteerOnlyConfig"):
        unlearn(lm, bench, "gated_steer", METHODS["steer_only"].default_config(), probe=probe)


def test_cli_lists_the_method(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["unlearn", "--method", "gated_steer", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "gated_steer" in text and "projected off the retain activations" in text
