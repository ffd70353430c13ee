"""Issue #3's numbers on the embedded model, produced exactly as a user would:
`asru-lab locate --out P`, then `asru-lab evaluate --probe P` (gated, and `--no-gate`).

Inference-time steering alone, with the recommended gated probe: the forget refusal rate goes
from about 0 to >= 0.7, the test split (forget people, new views and wordings) to >= 0.5, and
retain recall (`leak_rate`) drops by at most 5 points.
"""

from __future__ import annotations

import json

import pytest
import torch

from asru_lab.cli import main
from asru_lab.models.embedded import embedded_dir
from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import LocateConfig

pytestmark = pytest.mark.skipif(
    not (embedded_dir() / "config.json").is_file(), reason="embedded model not built"
)


@pytest.fixture(scope="module")
def runs(located) -> dict:
    root, probe = located["root"], located["probe"]
    results = {"vanilla": located["vanilla"]}
    for name, extra in (
        ("gated", ["--probe", str(probe)]),
        ("ungated", ["--probe", str(probe), "--no-gate"]),
    ):
        out = root / f"{name}.json"
        assert main(["evaluate", "--out", str(out), *extra]) == 0
        results[name] = json.loads(out.read_text())
    return {"probe": probe, **results}


def test_locate_writes_a_reloadable_probe_with_its_evidence(runs):
    probe_dir = runs["probe"]
    for name in ("probe.json", "probe.safetensors", "sweep.json", "locate.html"):
        assert (probe_dir / name).is_file(), name
    probe = SteeringProbe.load(probe_dir)
    sweep = json.loads((probe_dir / "sweep.json").read_text())
    assert sweep["recommended"]["layer"] == probe.layer
    assert sweep["recommended"]["alpha"] == probe.alpha
    assert probe.gate is not None and probe.gated
    assert "plotly" in (probe_dir / "locate.html").read_text()[:20000].lower()


def test_separability_shows_where_the_knowledge_lives(runs):
    sweep = json.loads((runs["probe"] / "sweep.json").read_text())
    auroc = sweep["separability"]["last"]["forget_vs_retain"]
    best = max(range(len(auroc)), key=auroc.__getitem__)
    assert auroc[best] >= 0.75  # held-out, one linear direction
    assert best >= len(auroc) // 2  # identity is resolved in the upper half
    assert max(sweep["separability"]["last"]["forget_vs_unseen"]) >= 0.9


def test_gated_probe_makes_the_model_refuse_forget_people_only(runs):
    vanilla, gated = runs["vanilla"]["splits"], runs["gated"]["splits"]
    assert vanilla["forget"]["refusal_rate"] <= 0.05
    assert gated["forget"]["refusal_rate"] >= 0.7
    assert gated["test"]["refusal_rate"] >= 0.5
    assert vanilla["retain"]["leak_rate"] - gated["retain"]["leak_rate"] <= 0.05
    assert gated["forget"]["leak_rate"] <= 0.3
    assert runs["gated"]["method"] == "steer_only"


def test_without_the_gate_everyone_is_refused(runs):
    """Why the gate exists: v alone moves forget and retain people alike."""
    ungated = runs["ungated"]["splits"]
    assert ungated["forget"]["refusal_rate"] >= 0.7
    assert ungated["retain"]["leak_rate"] < runs["gated"]["splits"]["retain"]["leak_rate"] - 0.2


def test_same_seed_gives_bit_identical_probe_tensors(runs, tmp_path):
    from asru_lab import load_benchmark, load_model
    from asru_lab.stages.locate import locate

    probe = SteeringProbe.load(runs["probe"])
    # Re-run only the recommended layer and strength, and no heatmap columns: the directions
    # and the gate come from the same seeded sets, so they must match the full run bit for bit.
    config = LocateConfig(
        layers=(probe.layer,),
        strengths=(probe.alpha,),
        positions=(probe.positions,),
        heatmap_positions=("last",),
    )
    config.progress = False
    again = locate(load_model(), load_benchmark(), config)
    assert torch.equal(again.direction, probe.direction)
    assert torch.equal(again.layer_directions, probe.layer_directions)
    assert torch.equal(again.gate.weight, probe.gate.weight)
