"""`evaluate`: generate answers for every split, then score them (MLLMU-Bench protocol).

Per split: multiple-choice accuracy, fill-in-the-blank accuracy, ROUGE-L of generated
answers, `leak_rate` (share of generation answers, image and text-only, that contain the
fact's value: a leak on forget/test, plain recall elsewhere), `refusal_rate` (share judged a
rigid or contextual refusal) and the judge's generation-quality block.

All answers are generated before the judge runs, and saved first when an answers file is given,
so a judge that is down or times out costs no generation: the rerun reuses the saved answers.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from asru_lab.data.schema import EVAL_SPLITS, Benchmark, BenchmarkError, QAItem, contains_value
from asru_lab.evaluation.answers import AnswersError, load_answers, save_answers
from asru_lab.evaluation.judge import ClosedWorldJudge, Judge, JudgeError, summarize
from asru_lab.evaluation.metrics import cloze_correct, parse_mcq, rouge_l
from asru_lab.evaluation.report import EvalReport
from asru_lab.generation import generate_batch
from asru_lab.models.loading import LoadedModel
from asru_lab.validation import ConfigError, check_fields

MAX_NEW_TOKENS = {"qa": 40, "mcq": 12, "cloze": 12}


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    splits: tuple[str, ...] | None = field(
        default=None, metadata={"help": "splits to evaluate; None: every split the benchmark has"}
    )
    max_items: int | None = field(
        default=64,
        metadata={"help": "per split and task, a fixed seeded sample; None: all"},
    )
    seed: int = field(default=0, metadata={"help": "seeds the sample of items"})
    batch_size: int = field(default=32, metadata={"help": "prompts per generation batch"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, max_items=">= 1", batch_size=">= 1")


def sample_items(bench: Benchmark, config: EvalConfig) -> dict[str, list[QAItem]]:
    """The items to evaluate per split: all, or a seeded sample of `max_items` per task."""
    splits = config.splits or tuple(bench.splits())
    chosen: dict[str, list[QAItem]] = {}
    for split in splits:
        if split not in EVAL_SPLITS:
            raise BenchmarkError(f"unknown split {split!r}; expected one of {EVAL_SPLITS}")
        items = bench.split(split)
        if not items:
            raise BenchmarkError(f"split {split!r} is empty in {bench.name}")
        picked: list[QAItem] = []
        for task in ("qa", "mcq", "cloze"):
            pool = [i for i in items if i.task == task]
            if config.max_items is not None and len(pool) > config.max_items:
                rng = random.Random(f"{config.seed}:{split}:{task}")
                pool = rng.sample(pool, config.max_items)
            picked += pool
        chosen[split] = picked
    return chosen


def answer_items(
    lm: LoadedModel, bench: Benchmark, items: list[QAItem], config: EvalConfig, desc: str
) -> list[str]:
    """Greedy answers for `items`, batched by task (each task has its own answer length)."""
    answers: dict[int, str] = {}
    by_task: dict[str, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        by_task[item.task].append(k)
    total = sum(len(v) for v in by_task.values())
    with tqdm(total=total, desc=desc, disable=not config.progress, leave=False) as bar:
        for task, idx in by_task.items():
            for s in range(0, len(idx), config.batch_size):
                chunk = [items[k] for k in idx[s : s + config.batch_size]]
                out = generate_batch(
                    lm,
                    bench.images(chunk),
                    [i.question for i in chunk],
                    max_new_tokens=MAX_NEW_TOKENS[task],
                )
                answers.update(zip(idx[s : s + config.batch_size], out, strict=True))
                bar.update(len(chunk))
    return [answers[k] for k in range(len(items))]


def score_split(items: list[QAItem], answers: list[str], judge: Judge) -> dict:
    """The DESIGN §5 metrics for one split (only those whose task is present)."""
    out: dict = {}
    mcq = [(i, a) for i, a in zip(items, answers, strict=True) if i.task == "mcq"]
    cloze = [(i, a) for i, a in zip(items, answers, strict=True) if i.task == "cloze"]
    qa = [(i, a) for i, a in zip(items, answers, strict=True) if i.task == "qa"]
    if mcq:
        out["mcq_acc"] = sum(parse_mcq(a, i.options) == i.correct for i, a in mcq) / len(mcq)
    if cloze:
        out["cloze_acc"] = sum(cloze_correct(a, i.value) for i, a in cloze) / len(cloze)
    if qa:
        judgements = judge.judge([i for i, _ in qa], [a for _, a in qa])
        out["rougeL"] = sum(rouge_l(a, i.answer) for i, a in qa) / len(qa)
        out["leak_rate"] = sum(contains_value(a, i.value) for i, a in qa) / len(qa)
        refusals = ("rigid_refusal", "contextual_refusal")
        out["refusal_rate"] = sum(j.category in refusals for j in judgements) / len(qa)
        out["quality"] = summarize(judgements)
    return out


def evaluate(
    lm: LoadedModel,
    bench: Benchmark,
    config: EvalConfig | None = None,
    *,
    method: str = "vanilla",
    judge: Judge | None = None,
    answers_path: str | os.PathLike | None = None,
    reuse_answers: bool = False,
) -> EvalReport:
    """Evaluate `lm` on `bench`; returns an `EvalReport` (`.to_json()`, `.table()`).

    The judge defaults to the closed-world judge built from the benchmark's own facts. With
    `answers_path`, the generated answers are written there (atomically) before judging; with
    `reuse_answers=True` too, nothing is generated: the answers saved there are scored, after
    checking they belong to this model, method, benchmark and item sample (AnswersError if
    not). A failing judge raises JudgeError naming the saved answers file.
    """
    if reuse_answers and answers_path is None:
        raise AnswersError("reuse_answers=True needs answers_path: the file to score")
    config = config or EvalConfig()
    judge = judge or ClosedWorldJudge(bench)
    started = time.time()
    chosen = sample_items(bench, config)
    if reuse_answers:
        answers = load_answers(answers_path, lm, bench, chosen, method=method)
    else:
        was_training = lm.model.training
        lm.model.eval()
        try:
            answers = {
                split: answer_items(lm, bench, items, config, desc=f"evaluate {split}")
                for split, items in chosen.items()
            }
        finally:
            lm.model.train(was_training)
        if answers_path is not None:
            save_answers(answers_path, lm, bench, chosen, answers, method=method, config=config)
    report = EvalReport(model=lm.name, method=method)
    try:
        for split, items in chosen.items():
            report.splits[split] = score_split(items, answers[split], judge)
    except JudgeError as exc:
        if answers_path is None:
            raise
        raise JudgeError(
            f"{exc}; the generated answers are saved in {answers_path}: score them without "
            "generating with reuse_answers=True"
        ) from exc
    counts = {
        split: {t: sum(i.task == t for i in items) for t in ("qa", "mcq", "cloze")}
        for split, items in chosen.items()
    }
    report.meta = {
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "items": counts,
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
    }
    return report
