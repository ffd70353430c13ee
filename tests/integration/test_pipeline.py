"""`run_pipeline` / `asru-lab run`: one command, one folder, three loadable models' results."""

from __future__ import annotations

import json

import pytest

import asru_lab as al
from asru_lab.runs.pipeline import PipelineConfig, comparison_table, run_pipeline
from asru_lab.stages.locate import LocateConfig
from asru_lab.stages.redirect import RedirectConfig
from asru_lab.stages.reinforce import ReinforceConfig


@pytest.mark.slow
def test_run_pipeline_writes_every_stage_and_resumes(lm, bench, tmp_path):
    config = PipelineConfig(
        locate=LocateConfig(
            layers=(5,),
            strengths=(2.0,),
            positions=("last",),
            heatmap_positions=("last",),
            max_examples=64,
            retain_examples=128,
            sweep_forget=16,
            sweep_retain=50,
            progress=False,
        ),
        redirect=RedirectConfig(max_retain=256, progress=False),
        reinforce=ReinforceConfig(
            n_forget=8,
            n_boundary=8,
            boundary_candidates=128,
            max_steps=2,
            batch_size=8,
            num_generations=4,
            probe_every=0,
            progress=False,
        ),
        evaluate=al.EvalConfig(max_items=8, splits=("forget", "retain"), progress=False),
    )
    results = run_pipeline(lm, bench, tmp_path, config)
    assert set(results) == {"vanilla", "stage1", "final"}
    for stage, method in (("vanilla", "vanilla"), ("stage1", "asru_stage1"), ("final", "asru")):
        saved = json.loads((tmp_path / "results" / f"{stage}.json").read_text())
        assert saved == results[stage] and saved["method"] == method
        assert set(saved["splits"]) == {"forget", "retain"}
    assert (tmp_path / "probe" / "probe.json").is_file()
    assert (tmp_path / "probe" / "locate.html").is_file()
    assert al.load_model(tmp_path / "stage1").name.endswith("+redirect")
    assert al.load_model(tmp_path / "final").name.endswith("+redirect+reinforce")
    assert (tmp_path / "final" / "training" / "metrics.jsonl").is_file()
    table = comparison_table(results)
    assert "forget" in table and "final refusal/leak/MCQ" in table
    # resume: every stage is complete, nothing is recomputed
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    config.resume = True
    assert run_pipeline(lm, bench, tmp_path, config) == results
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")} == stamps


def test_resuming_stage_2_leaves_the_callers_config_unchanged(lm, bench, tmp_path, monkeypatch):
    import asru_lab.runs.pipeline as pipeline
    from asru_lab.artifacts import claim_output, write_text_atomic

    seen = {}

    def stop_in_stage_2(model, bench_, settings, **kwargs):
        seen["resume"] = settings.resume
        raise KeyboardInterrupt

    # an earlier run that finished stages 0-1 and was interrupted in stage 2
    claim_output(tmp_path)
    for done in ("probe/probe.json", "stage1/redirect.json", "results/vanilla.json"):
        claim_output((tmp_path / done).parent)
        write_text_atomic(tmp_path / done, "{}")
    claim_output(tmp_path / "final" / "training", whole=True)
    monkeypatch.setattr(pipeline.SteeringProbe, "load", lambda path: "the probe")
    monkeypatch.setattr(pipeline, "load_model", lambda path: lm)
    monkeypatch.setattr(pipeline, "_evaluated", lambda *args: {})
    monkeypatch.setattr(pipeline, "reinforce", stop_in_stage_2)
    config = PipelineConfig(resume=True)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(lm, bench, tmp_path, config)
    assert seen["resume"] is True and config.reinforce.resume is False
