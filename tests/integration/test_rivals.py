"""The robust table's rivals (issue #32): RMU at the entity tokens, RepNoise and NPO with
sharpness-aware minimisation. Each trains a copy with what its loss says, reproducibly, leaves
the input model alone; the pieces that are easy to get wrong (SAM's step back, the MMD) are
checked on their own; bad input gets a clear error."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from asru_lab.baselines import METHODS, UnlearnError, unlearn
from asru_lab.baselines.npo_sam import NpoSamConfig, npo
from asru_lab.baselines.npo_sam import loss as sam_loss
from asru_lab.baselines.repnoise import RepNoiseConfig, mmd_to_noise
from asru_lab.baselines.rmu import RmuConfig, entity_questions
from asru_lab.baselines.trainer import Step
from asru_lab.data.schema import Benchmark

TINY = {"max_forget": 8, "epochs": 1, "batch_size": 4, "progress": False}
RMU_TINY = {"layer": 3, "steps": 6, "batch_size": 4, "progress": False}


def changed(lm, result) -> list[str]:
    before = dict(lm.model.named_parameters())
    return [n for n, p in result.model.model.named_parameters() if not torch.equal(p, before[n])]


@pytest.fixture(scope="module")
def rmu(lm, bench):
    snapshot = {n: p.clone() for n, p in lm.model.named_parameters()}
    first = unlearn(lm, bench, "rmu", RmuConfig(**RMU_TINY))
    again = unlearn(lm, bench, "rmu", RmuConfig(**RMU_TINY))
    return {"first": first, "again": again, "snapshot": snapshot}


def test_rmu_trains_only_the_down_projections_below_its_layer(lm, rmu):
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, rmu["snapshot"][name]), name
    moved = changed(lm, rmu["first"])
    expected = {f"{lm.adapter.mlp_path(k)}.down_proj.weight" for k in (1, 2, 3)}
    assert set(moved) == expected
    record = rmu["first"].record
    assert record["layer"] == 3 and record["examples"]["forget"] > 0
    assert record["history"] == rmu["again"].record["history"]  # same seed, same run
    gaps = [h["forget_gap"] for h in record["history"]]
    assert gaps[-1] < gaps[0]  # the entity states move toward the random target


def test_rmu_reads_portrait_and_name_questions_only(bench):
    items = entity_questions(bench)
    assert items and all(
        i.image is not None or bench.people[i.person_id].name in i.question for i in items
    )


def test_rmu_bad_input_is_refused(lm, bench):
    with pytest.raises(UnlearnError, match="RmuConfig.layer 99 does not exist"):
        unlearn(lm, bench, "rmu", RmuConfig(layer=99, progress=False))
    with pytest.raises(UnlearnError, match="retain_splits must be some of"):
        RmuConfig(retain_splits=("forget",))
    with pytest.raises(UnlearnError, match="RmuConfig.coefficient"):
        RmuConfig(coefficient=0.0)
    faceless = [
        dataclasses.replace(i, image=None, question="What is their occupation?")
        if i.split == "forget"
        else i
        for i in bench.items
    ]
    blank = Benchmark(
        bench.people.values(), faceless, name="faceless", image_loader=bench.load_image
    )
    with pytest.raises(UnlearnError, match="no question with a portrait or the person's name"):
        unlearn(lm, blank, "rmu", RmuConfig(**RMU_TINY))


@pytest.mark.parametrize("name", ["repnoise", "npo_sam"])
def test_repnoise_and_npo_sam_train_a_copy_reproducibly(lm, bench, name):
    config = dataclasses.replace(METHODS[name].default_config(), lr=1e-4, **TINY)
    first = unlearn(lm, bench, name, config)
    again = unlearn(lm, bench, name, config)
    assert first.record["losses"] == again.record["losses"]
    assert len(first.record["losses"]) == 2 and all(
        torch.isfinite(torch.tensor(first.record["losses"]))
    )
    assert changed(lm, first), f"{name} changed no weight"
    assert first.record["examples"] == {"forget": 8, "retain": 8}


def test_mmd_to_noise_tells_noise_from_a_cluster():
    torch.manual_seed(0)
    noise = mmd_to_noise(torch.randn(64, 32))
    cluster = mmd_to_noise(torch.full((64, 32), 3.0) + 0.01 * torch.randn(64, 32))
    assert abs(float(noise)) < 0.05 and float(cluster) > 0.5
    with pytest.raises(UnlearnError, match="at least two"):
        mmd_to_noise(torch.randn(1, 8))


class _Toy(torch.nn.Module):
    """A tiny language model with the call signature the trainer's `Step` uses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(11, 6)
        self.head = torch.nn.Linear(6, 11)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def _toy_step(model, reference) -> Step:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    labels = torch.tensor([[-100, -100, 3, 4], [-100, -100, 7, 8]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return Step(model, {"forget": batch, "retain": dict(batch, input_ids=ids.flip(1))}, reference)


def test_sam_takes_the_forget_gradient_at_the_perturbed_weights_and_steps_back():
    model, frozen = _Toy(), _Toy()
    with torch.no_grad():
        for p in frozen.parameters():
            p.add_(0.1)

    def reference(**inputs):
        return frozen(**inputs).logits

    config = NpoSamConfig(sam_rho=0.05, retain_weight=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    step = _toy_step(model, reference)
    total = sam_loss(step, config)
    total.backward()
    got = [p.grad.clone() for p in model.parameters()]
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)  # the weights are back where they were
    # by hand: δ from the forget gradient at θ, the forget gradient at θ + δ, retain at θ
    params = list(model.parameters())
    grads = torch.autograd.grad(npo(_toy_step(model, reference), config), params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.05 * g / norm)
    sharp = torch.autograd.grad(npo(_toy_step(model, reference), config), params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(0.05 * g / norm)
    retain = torch.autograd.grad(0.5 * _toy_step(model, reference).nll("retain"), params)
    for g, s, r in zip(got, sharp, retain, strict=True):
        torch.testing.assert_close(g, s + r)
    assert not torch.allclose(sharp[0], grads[0])  # the perturbation mattered


def test_rival_configs_refuse_bad_values():
    with pytest.raises(UnlearnError, match="NpoSamConfig.sam_rho"):
        NpoSamConfig(sam_rho=0.0)
    with pytest.raises(UnlearnError, match="RepNoiseConfig.noise_weight"):
        RepNoiseConfig(noise_weight=-1.0)


def test_cli_runs_a_rival_with_its_knob_and_refuses_another_methods_option(tmp_path):
    import asru_lab as al
    from asru_lab.cli import main

    out = tmp_path / "rmu"
    args = ["unlearn", "--method", "rmu", "--coefficient", "2", "--layer", "3", "--steps", "2"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    record = (out / "unlearn.json").read_text()
    assert '"coefficient": 2.0' in record and '"layer": 3' in record
    assert al.load_model(out).name.endswith("+rmu")
    bad = ["unlearn", "--method", "rmu", "--sam-rho", "0.1", "--out", str(tmp_path / "x")]
    assert main(bad) == 2
