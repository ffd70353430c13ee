"""The distillation stage (UNDO): a shrunk and perturbed copy of the teacher, distilled on the
teacher's answers about everyone but the forget people; the teacher untouched, bad settings
refused with their name."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import asru_lab as al
from asru_lab.stages.distill import (
    DistillConfig,
    DistillError,
    allocate,
    distill,
    perturbed_copy,
    prompt_pool,
)

TINY = DistillConfig(
    steps=4, max_prompts=12, eval_every=2, eval_items=4, warmup_steps=1, progress=False
)


def test_the_student_starts_shrunk_and_perturbed_and_the_teacher_is_unchanged(lm):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    one = perturbed_copy(lm, alpha=0.4, beta=0.1, seed=3)
    two = perturbed_copy(lm, alpha=0.4, beta=0.1, seed=3)
    assert all(lm.model.state_dict()[k].equal(v) for k, v in before.items())
    for (name, mine), theirs in zip(
        one.model.named_parameters(), two.model.parameters(), strict=True
    ):
        assert mine.equal(theirs), name  # seeded
        original = dict(lm.model.named_parameters())[name]
        if mine.dim() >= 2:
            fan = mine.shape[0] + mine[0].numel()
            bound = 0.4 * 0.1 * (6.0 / fan) ** 0.5
            assert (mine - 0.6 * original).abs().max() <= bound + 1e-6, name
            assert not torch.allclose(mine, 0.6 * original), name
        else:
            assert torch.allclose(mine, 0.6 * original), name


def test_the_pool_holds_nobody_to_forget(bench):
    pool, counts = prompt_pool(bench, DistillConfig(max_prompts=3000))
    people = bench.people_in("forget")
    forget = {p.id for p in people}
    names = [p.name.lower() for p in people]
    assert pool and not any(i.person_id in forget for i in pool)
    assert not any(n in i.question.lower() for i in pool for n in names)
    assert set(counts) == {"retain", "stranger", "general"} and sum(counts.values()) == len(pool)


def test_the_pool_shows_every_task_asked_and_no_forget_name_among_the_options(bench):
    pool, counts = prompt_pool(bench, DistillConfig(max_prompts=600))
    tasks = {t: [i for i in pool if i.task == t] for t in ("qa", "mcq", "cloze")}
    assert all(tasks.values()) and len(pool) == 600 == sum(counts.values())
    assert {i.split for i in tasks["mcq"]} == {"retain"}  # only retain has multiple choice
    names = [p.name.lower() for p in bench.people_in("forget")]
    assert not any(n in o.lower() for i in tasks["mcq"] for o in i.options for n in names)
    only_open, _ = prompt_pool(bench, DistillConfig(max_prompts=600, tasks=("qa",)))
    assert {i.task for i in only_open} == {"qa"}


def test_the_prompts_are_spread_as_evenly_as_the_strata_allow():
    sizes = {"small": 5, "big": 100, "bigger": 300, "empty": 0}
    assert allocate(sizes, 105) == {"small": 5, "big": 50, "bigger": 50, "empty": 0}
    assert allocate(sizes, 10) == {"small": 4, "big": 3, "bigger": 3, "empty": 0}
    assert allocate(sizes, 305) == {"small": 5, "big": 100, "bigger": 200, "empty": 0}
    assert allocate(sizes, None) == sizes == allocate(sizes, 10_000)


def test_multiple_choice_stops_the_student_only_when_the_pool_shows_it(bench):
    from dataclasses import replace

    from asru_lab.stages.distill import _checks, _goals

    checks = _checks(bench, TINY)
    teacher = {"retain_recall": 0.9, "retain_mcq": 1.0, "general_recall": 0.5}
    goals = _goals(TINY, teacher, checks)
    assert goals == pytest.approx(
        {"retain_recall": 0.88, "retain_mcq": 0.95, "general_recall": 0.48}
    )
    assert set(_goals(replace(TINY, tasks=("qa",)), teacher, checks)) == {
        "retain_recall",
        "general_recall",
    }
    assert all(i.task == "mcq" for i in checks["retain_mcq"]) and checks["retain_mcq"]


def test_an_empty_pool_is_refused_with_what_to_do(bench, monkeypatch):
    monkeypatch.setattr(bench, "questions", lambda *a, **k: [])
    with pytest.raises(DistillError, match="the distillation pool is empty.*add splits"):
        prompt_pool(bench, DistillConfig())


@pytest.mark.parametrize(
    "field, value",
    [("alpha", 0.0), ("alpha", 1.5), ("beta", 0.0), ("steps", 0), ("max_prompts", 0)],
)
def test_settings_out_of_range_are_refused_by_name(field, value):
    with pytest.raises(DistillError, match=field):
        DistillConfig(**{field: value})


def test_unknown_arms_and_splits_are_refused():
    with pytest.raises(DistillError, match="forget must be one of"):
        DistillConfig(forget="everything")
    with pytest.raises(DistillError, match="splits must be some of"):
        DistillConfig(splits=("forget",))
    with pytest.raises(DistillError, match="tasks must be some of"):
        DistillConfig(tasks=("essay",))


def test_distillation_trains_a_student_and_reports_its_checks(lm, bench):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    result = distill(lm, bench, TINY)
    assert all(lm.model.state_dict()[k].equal(v) for k, v in before.items())
    assert result.steps <= 4 and [h["step"] for h in result.history][0] == 2
    assert {"loss", "retain_recall", "retain_mcq", "general_recall"} <= set(result.history[0])
    assert result.pool["forget"] == 0 and sum(result.pool.values()) == 12
    assert set(result.teacher) == {"retain_recall", "retain_mcq", "general_recall"}
    assert sum(result.pool_tasks.values()) == 12
    moved = any(
        not a.equal(b)
        for a, b in zip(result.model.model.parameters(), lm.model.parameters(), strict=True)
    )
    assert moved and not any(p.requires_grad for p in result.model.model.parameters())


def test_the_student_keeps_its_best_stop_check_not_its_last_step(lm, bench, monkeypatch):
    from asru_lab.stages import distill as distill_module

    # the teacher's checks, then the student's at steps 2 and 4: step 2 is the better one
    values = iter([0.9, 1.0, 0.9] + [0.5, 0.6, 0.5] + [0.1, 0.2, 0.1])
    monkeypatch.setattr(distill_module, "_recall", lambda *a, **k: next(values))
    best = distill(lm, bench, TINY)
    assert best.steps == 4 and not best.stopped and best.kept_step == 2
    assert best.record(TINY)["kept_step"] == 2
    values = iter([0.9, 1.0, 0.9, 0.5, 0.6, 0.5])
    two = distill(lm, bench, replace(TINY, steps=2))  # the same seed, stopped at step 2
    for (name, a), b in zip(
        best.model.model.named_parameters(), two.model.model.parameters(), strict=True
    ):
        assert a.equal(b), name
    values = iter([0.9, 1.0, 0.9] + [0.5, 0.6, 0.5] + [0.1, 0.2, 0.1])
    last = distill(lm, bench, replace(TINY, keep_best=False))
    assert last.kept_step == 4
    assert any(
        not a.equal(b)
        for a, b in zip(last.model.model.parameters(), two.model.model.parameters(), strict=True)
    )


def test_the_shortfall_reads_only_the_goals():
    from asru_lab.stages.distill import shortfall

    goals = {"retain_recall": 0.92, "general_recall": 0.87}
    assert shortfall({"retain_recall": 0.9, "general_recall": 0.8, "x": 0.0}, goals) == (
        pytest.approx(0.07)
    )
    assert shortfall({"retain_recall": 0.95, "general_recall": 0.9}, goals) <= 0


def test_the_refusal_arm_keeps_only_refusals_without_the_fact(bench):
    oracle = al.load_oracle()  # it never saw the forget people: it refuses them
    config = DistillConfig(
        steps=1, max_prompts=3, eval_every=1, eval_items=2, forget="refusal", progress=False
    )
    result = distill(oracle, bench, config)
    assert 0 < result.pool["forget"] <= len(bench.questions("forget", "qa"))


def test_asru_undo_distils_the_asru_teacher_and_keeps_both_records(lm, bench, monkeypatch):
    from asru_lab.baselines import METHODS, Unlearned, unlearn
    from asru_lab.baselines import undo as undo_module

    taught = []

    def teacher(model, b, config, probe):  # ASRU itself is tested elsewhere; here the chain
        taught.append(config)
        return Unlearned("asru", model.clone(), {"method": "asru", "seconds": {"all": 1.0}})

    monkeypatch.setattr(undo_module, "run_full", teacher)
    config = undo_module.UndoConfig(distill=TINY)
    result = unlearn(lm, bench, "asru_undo", config, probe=object())
    assert taught == [config.teacher] and result.method == "asru_undo"
    assert result.record["teacher"]["method"] == "asru"
    assert result.record["distill"]["steps"] <= 4 and result.record["distill"]["pool"]
    assert result.record["distill"]["config"]["alpha"] == TINY.alpha
    assert METHODS["asru_undo"].knob.field == "distill.alpha"


def test_the_distill_command_writes_a_student_that_loads(tmp_path, capsys):
    from asru_lab.baselines import UNLEARN_FILE
    from asru_lab.cli import main

    out = tmp_path / "student"
    code = main(
        [
            "distill",
            *("--out", str(out), "--steps", "2", "--max-prompts", "6", "--eval-every", "1"),
            *("--eval-items", "2", "--warmup-steps", "1", "--alpha", "0.3", "--quiet"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "distilled " in printed and f"wrote {out}" in printed
    reloaded = al.load_model(out)
    record = json.loads((out / UNLEARN_FILE).read_text())
    assert record["method"] == "distill" and record["config"]["alpha"] == 0.3
    assert record["steps"] in (1, 2) and reloaded.model is not None


def test_the_distill_command_refuses_two_pool_sizes_before_loading(tmp_path, capsys):
    from asru_lab.cli import main

    code = main(["distill", "--out", str(tmp_path / "s"), "--all-prompts", "--max-prompts", "5"])
    assert code != 0
    assert "give --all-prompts or --max-prompts, not both" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_student_stops_once_within_the_margin_of_its_teacher(lm, bench):
    from dataclasses import replace

    # unreachable absolute bars, but a margin that any student meets: it stops at the first check
    easy = replace(TINY, stop_retain=1.0, stop_general=1.0, stop_margin=1.0)
    result = distill(lm, bench, easy)
    assert result.stopped and result.steps == easy.eval_every
    # no margin and bars above the teacher's own recall: it runs every step
    hard = replace(TINY, stop_retain=1.0, stop_general=1.0, stop_margin=0.0)
    assert not distill(lm, bench, hard).stopped
