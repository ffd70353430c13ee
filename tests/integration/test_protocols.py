"""Evaluation protocols end to end on the embedded model: asru_lab's numbers unchanged, the
MLLMU-Bench prompts and few-shot turns, per-item records that recompute the report, and the
errors a user can make (unknown protocol, too many shots, image protocol on text-only data)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError, contains_value
from asru_lab.evaluation.answers import AnswersError
from asru_lab.evaluation.harness import EvalConfig, evaluate, sample_items
from asru_lab.evaluation.judge import ClosedWorldJudge, summarize
from asru_lab.evaluation.metrics import cloze_correct, parse_mcq, rouge_l
from asru_lab.evaluation.protocols import PROTOCOLS
from asru_lab.evaluation.protocols.mllmu import MCQ_INSTRUCTION, MllmuProtocol
from asru_lab.evaluation.records import aggregate_items, read_items
from asru_lab.generation import generate_batch
from asru_lab.validation import ConfigError
from tests.mllmu_layout import write_mllmu

SPLITS = ("retain", "test")  # retain: the examples are skipped; test: one image a person


@pytest.fixture(scope="module")
def lm():
    return al.load_model()


@pytest.fixture(scope="module")
def bench():
    return al.load_benchmark()


def config(protocol: str, **changes) -> EvalConfig:
    settings = {"splits": SPLITS, "max_items": 1, "progress": False, "protocol": protocol}
    return EvalConfig(**settings | changes)


def pre_protocol_splits(lm, bench, chosen) -> dict:
    """The harness's numbers as computed before protocols existed (the question as the prompt,
    12/40 new tokens, lenient MCQ parsing, unstemmed ROUGE-L, the closed-world judge)."""
    lengths = {"qa": 40, "mcq": 12, "cloze": 12}
    judge, out = ClosedWorldJudge(bench), {}
    for split, items in chosen.items():
        by_task = defaultdict(list)
        for item in items:
            by_task[item.task].append(item)
        answered = {
            task: list(
                zip(
                    group,
                    generate_batch(
                        lm,
                        bench.images(group),
                        [i.question for i in group],
                        max_new_tokens=lengths[task],
                    ),
                    strict=True,
                )
            )  # noqa: E501
            for task, group in by_task.items()
        }
        mcq, cloze, qa = answered["mcq"], answered["cloze"], answered["qa"]
        judgements = judge.judge([i for i, _ in qa], [a for _, a in qa])
        refusals = ("rigid_refusal", "contextual_refusal")
        out[split] = {
            "mcq_acc": sum(parse_mcq(a, i.options) == i.correct for i, a in mcq) / len(mcq),
            "cloze_acc": sum(cloze_correct(a, i.value) for i, a in cloze) / len(cloze),
            "rougeL": sum(rouge_l(a, i.answer) for i, a in qa) / len(qa),
            "leak_rate": sum(contains_value(a, i.value) for i, a in qa) / len(qa),
            "refusal_rate": sum(j.category in refusals for j in judgements) / len(qa),
            "quality": summarize(judgements),
        }
    return out


def test_asru_lab_protocol_gives_the_pre_protocol_numbers(lm, bench, tmp_path):
    cfg = config("asru_lab")
    report = evaluate(lm, bench, cfg, items_path=tmp_path / "items.jsonl")
    probability = ("answer_prob", "truth_ratio")  # added beside the protocol's scores (#18)
    protocol_only = {
        split: {k: v for k, v in metrics.items() if k not in probability}
        for split, metrics in report.splits.items()
    }
    assert protocol_only == pre_protocol_splits(lm, bench, sample_items(bench, cfg))
    assert all("answer_prob" in metrics for metrics in report.splits.values())
    assert report.meta["protocol"]["rouge"]["stemmer"] is False
    assert aggregate_items(tmp_path / "items.jsonl") == report.splits


@pytest.mark.parametrize("protocol", ["mllmu", "asru_paper"])  # asru_lab: the test above
def test_each_protocol_recomputes_from_its_items_file(lm, bench, tmp_path, protocol):
    items = tmp_path / "items.jsonl"
    report = evaluate(lm, bench, config(protocol), items_path=items)
    assert report.meta["protocol"]["name"] == protocol
    assert aggregate_items(items) == report.splits
    records = read_items(items)
    assert {r["split"] for r in records} == set(SPLITS)
    for record in records:
        assert record["prompt"].endswith("assistant\n")  # the chat-templated text sent
        assert record["scores"]
        if record["task"] == "qa" and PROTOCOLS[protocol].uses_judge:
            assert record["judge"]["category"]
    if PROTOCOLS[protocol].needs_images:
        assert all(r["modality"] == "image" for r in records)
    assert set(report.splits["test"]["by_modality"]) <= {"image", "text"}
    assert report.meta["protocol"]["rouge"]["stemmer"] is True
    assert report.meta["protocol"]["max_new_tokens"] == {"qa": 50, "mcq": 50, "cloze": 50}
    # a multiple-choice prompt: one example with its letter, then the `A: ` lines and the ask
    protocol = PROTOCOLS[protocol](bench, shots=1, seed=0)
    for record in [r for r in records if r["task"] == "mcq"]:
        assert "\nA: " in record["prompt"] and "\nB: " in record["prompt"]
        assert record["prompt"].count(MCQ_INSTRUCTION) == 2  # the example's and the asked one
        (shot,) = protocol.shot_items(record["modality"])
        assert shot.split == "retain"
        assert (
            f"{MCQ_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{shot.correct_letter}"
            in (record["prompt"])
        )


def test_mllmu_skips_shot_items_and_shows_one_test_image_per_person(bench):
    protocol = MllmuProtocol(bench, shots=2, seed=0)
    retain = protocol.select("retain", bench.split("retain"))
    shots = protocol.shot_items("image") + protocol.shot_items("text")
    assert len(shots) == 4 and not set(shots) & set(retain)
    assert len(retain) == len(bench.split("retain")) - 4
    test = [i for i in protocol.select("test", bench.split("test")) if i.image]
    per_person = defaultdict(set)
    for item in test:
        per_person[item.person_id].add(item.image)
    assert all(len(images) == 1 for images in per_person.values())


def test_answers_saved_under_one_protocol_are_not_scored_under_another(lm, bench, tmp_path):
    answers = tmp_path / "eval.answers.json"
    evaluate(lm, bench, config("mllmu", splits=("forget",), max_items=1), answers_path=answers)
    with pytest.raises(AnswersError, match="protocol"):
        evaluate(
            lm, bench, config("asru_lab", splits=("forget",), max_items=1), answers_path=answers,
            reuse_answers=True,
        )  # fmt: skip


def test_unknown_protocol_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="asru_lab, mllmu, asru_paper"):
        EvalConfig(protocol="official")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--out", str(tmp_path / "r.json"), "--protocol", "official"])
    assert exit_info.value.code == 2
    assert "asru_lab" in capsys.readouterr().err


def test_more_shots_than_retain_people_is_refused(lm, bench, tmp_path):
    retain_people = len(bench.people_in("retain"))
    with pytest.raises(ConfigError, match=f"shots={retain_people + 1}.*--shots"):
        evaluate(lm, bench, config("mllmu", shots=retain_people + 1))
    with pytest.raises(ConfigError, match="shots"):
        EvalConfig(shots=-1)


def test_image_protocol_on_a_text_only_benchmark_is_refused(lm, bench):
    text_only = bench.subset([i for i in bench.items if not i.has_image])
    with pytest.raises(BenchmarkError, match="asru_paper.*image questions only"):
        evaluate(lm, text_only, config("asru_paper"))


def test_cli_mllmu_protocol_on_an_mllmu_parquet_layout(tmp_path, capsys):
    data = write_mllmu(tmp_path / "MLLMU-Bench")
    out, items = tmp_path / "eval.json", tmp_path / "items.jsonl"
    args = ["evaluate", "--data", f"mllmu:{data}", "--protocol", "mllmu", "--max-items", "1"]
    args += ["--splits", "retain", "test"]
    assert main([*args, "--items-out", str(items), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["protocol"]["name"] == "mllmu"
    assert aggregate_items(items) == report["splits"]
    records = read_items(items)
    assert {r["split"] for r in records} == {"retain", "test"}
    examples = [r for r in records if r["task"] == "mcq"]
    assert examples and all(r["prompt"].count(MCQ_INSTRUCTION) == 2 for r in examples)
    bench = al.load_benchmark(f"mllmu:{data}")
    shown = MllmuProtocol(bench).shot_items("image") + MllmuProtocol(bench).shot_items("text")
    assert {s.person_id for s in shown} <= {p.id for p in bench.people_in("retain")}
    assert len(MllmuProtocol(bench).select("retain", bench.split("retain", "mcq"))) == 2
    assert main([*args, "--shots", "3", "--out", str(tmp_path / "e2.json")]) == 2
    assert "only 2 retain people" in capsys.readouterr().err
    items.write_text("my notes\n")
    assert main([*args, "--items-out", str(items), "--out", str(out)]) == 2
    assert items.read_text() == "my notes\n"  # not an items file: kept without --overwrite
