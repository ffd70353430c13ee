"""`evaluate`: generate answers for every split, then score them under an evaluation protocol.

The protocol (`EvalConfig.protocol`, `evaluation.protocols`) decides the items, prompts, answer
lengths and scores: `asru_lab` (the default) is asru_lab's own protocol — the benchmark's
questions as phrased, lenient multiple-choice parsing, unstemmed ROUGE-L, `leak_rate` (share of
generation answers that contain the fact's value: a leak on forget/test, plain recall
elsewhere), `refusal_rate` and the judge's quality block; it is not MLLMU-Bench's protocol.
`mllmu` is MLLMU-Bench's own evaluation and `asru_paper` the ASRU authors' variant of it; each
protocol module's docstring defines it.

All answers are generated before the judge runs, and saved first when an answers file is given,
so a judge that is down or times out costs no generation: the rerun reuses the saved answers.
With an items file, one JSON line per evaluated item (prompt, reply, scores) is written too;
`evaluation.records.aggregate_items` recomputes the report's splits from it.

Beside the protocol's scores, every split gets the probability metrics of its generation items
(`evaluation.probability`, open-unlearning's definitions: `answer_prob`, and `truth_ratio`
where the items have paraphrased and perturbed answers), and, given a reference model (the
retrain oracle), the forget split gets `forget_quality`. They score teacher-forced answers
after the benchmark's own question, whatever the protocol.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from asru_lab.data.schema import EVAL_SPLITS, Benchmark, BenchmarkError, QAItem
from asru_lab.evaluation.answers import AnswersError, load_answers, save_answers
from asru_lab.evaluation.judge import ClosedWorldJudge, Judge, JudgeError
from asru_lab.evaluation.probability import (
    ProbabilityError,
    forget_quality,
    item_probabilities,
    require_truth_ratio,
    split_metrics,
)
from asru_lab.evaluation.protocols import DEFAULT_PROTOCOL, Protocol, get_protocol
from asru_lab.evaluation.protocols.asru_lab import AsruLabProtocol
from asru_lab.evaluation.records import check_items_path, item_record, write_items
from asru_lab.evaluation.report import EvalReport
from asru_lab.generation import generate_chats
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.steering import is_steered
from asru_lab.validation import ConfigError, check_fields


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
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata={
            "help": "evaluation protocol: asru_lab (its own), mllmu (MLLMU-Bench's own "
            "evaluation) or asru_paper (the ASRU authors' variant)"
        },
    )
    shots: int = field(
        default=1,
        metadata={"help": "few-shot examples before each multiple-choice item (mllmu, asru_paper)"},
    )
    probabilities: bool = field(
        default=True,
        metadata={
            "help": "answer probability and truth ratio of the generation items "
            "(open-unlearning's definitions; teacher-forced, no generation)"
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, max_items=">= 1", batch_size=">= 1", shots=">= 0")
        get_protocol(self.protocol)

    def make_protocol(self, bench: Benchmark) -> Protocol:
        """This config's protocol over `bench` (its shots and test images seeded by `seed`)."""
        return get_protocol(self.protocol)(bench, shots=self.shots, seed=self.seed)


def sample_items(
    bench: Benchmark, config: EvalConfig, protocol: Protocol | None = None
) -> dict[str, list[QAItem]]:
    """The items to evaluate per split: those the protocol selects (default: the config's), all
    or a seeded sample of `max_items` per task."""
    protocol = protocol or config.make_protocol(bench)
    splits = config.splits or tuple(bench.splits())
    chosen: dict[str, list[QAItem]] = {}
    for split in splits:
        if split not in EVAL_SPLITS:
            raise BenchmarkError(f"unknown split {split!r}; expected one of {EVAL_SPLITS}")
        items = bench.split(split)
        if not items:
            raise BenchmarkError(f"split {split!r} is empty in {bench.name}")
        items = protocol.select(split, items)
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
    lm: LoadedModel,
    bench: Benchmark,
    items: list[QAItem],
    config: EvalConfig,
    desc: str,
    protocol: Protocol | None = None,
) -> list[str]:
    """Greedy answers for `items` under `protocol` (default: asru_lab's, the items' questions as
    they are), batched by task (each task has its own answer length)."""
    protocol = protocol or AsruLabProtocol(bench)
    prompts = [protocol.prompt(item) for item in items]
    answers: dict[int, str] = {}
    by_task: dict[str, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        by_task[item.task].append(k)
    total = sum(len(v) for v in by_task.values())
    with tqdm(total=total, desc=desc, disable=not config.progress, leave=False) as bar:
        for task, idx in by_task.items():
            for s in range(0, len(idx), config.batch_size):
                chunk = [prompts[k] for k in idx[s : s + config.batch_size]]
                out = generate_chats(
                    lm,
                    [p.turns for p in chunk],
                    [[bench.load_image(path) for path in p.images] for p in chunk],
                    max_new_tokens=protocol.max_new_tokens(task),
                )
                answers.update(zip(idx[s : s + config.batch_size], out, strict=True))
                bar.update(len(chunk))
    return [answers[k] for k in range(len(items))]


def score_split(
    lm: LoadedModel,
    protocol: Protocol,
    split: str,
    items: list[QAItem],
    answers: list[str],
    judge: Judge,
) -> list[dict]:
    """One record per item (`evaluation.records.item_record`): the exact prompt text, the reply
    and the protocol's scores, with the judge's verdict on generation items when the protocol
    uses the judge."""
    records = [
        item_record(lm, protocol, split, item, answer)
        for item, answer in zip(items, answers, strict=True)
    ]
    qa = [k for k, item in enumerate(items) if item.task == "qa"]
    if protocol.uses_judge and qa:
        judgements = judge.judge([items[k] for k in qa], [answers[k] for k in qa])
        for k, judgement in zip(qa, judgements, strict=True):
            records[k]["judge"] = asdict(judgement)
    return records


def evaluate(
    lm: LoadedModel,
    bench: Benchmark,
    config: EvalConfig | None = None,
    *,
    method: str = "vanilla",
    judge: Judge | None = None,
    answers_path: str | os.PathLike | None = None,
    reuse_answers: bool = False,
    items_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    reference: LoadedModel | None = None,
) -> EvalReport:
    """Evaluate `lm` on `bench` under `config.protocol`; returns an `EvalReport` (`.to_json()`,
    `.table()`) whose meta records the protocol, its settings and ROUGE variant.

    The judge defaults to the closed-world judge built from the benchmark's own facts. With
    `answers_path`, the generated answers are written there (atomically) before judging; with
    `reuse_answers=True` too, nothing is generated: the answers saved there are scored, after
    checking they belong to this model, method, benchmark, protocol and item sample
    (AnswersError if not). A failing judge raises JudgeError naming the saved answers file.
    With `items_path`, one JSON line per evaluated item is written there atomically (an
    existing file that is not an items file is replaced only with `overwrite`). With a
    `reference` model (the retrain oracle, or a model of one's own of the same architecture),
    the forget split's `forget_quality` compares the two models' forget truth ratios.
    """
    if reuse_answers and answers_path is None:
        raise AnswersError("reuse_answers=True needs answers_path: the file to score")
    if items_path is not None:
        check_items_path(items_path, overwrite=overwrite)
    config = config or EvalConfig()
    protocol = config.make_protocol(bench)
    judge = judge or ClosedWorldJudge(bench)
    started = time.time()
    chosen = sample_items(bench, config, protocol)
    config = without_probabilities_under_hooks(lm, config, reference)
    if reference is not None:
        check_reference(lm, reference, bench, config, chosen)
    key = protocol.key()
    if reuse_answers:
        answers = load_answers(answers_path, lm, bench, chosen, method=method, protocol=key)
    else:
        was_training = lm.model.training
        lm.model.eval()
        try:
            answers = {
                split: answer_items(lm, bench, items, config, f"evaluate {split}", protocol)
                for split, items in chosen.items()
            }
        finally:
            lm.model.train(was_training)
        if answers_path is not None:
            save_answers(
                answers_path,
                lm,
                bench,
                chosen,
                answers,
                method=method,
                config=config,
                protocol=key,
            )
    report = EvalReport(model=lm.name, method=method)
    records: dict[str, list[dict]] = {}
    try:
        for split, items in chosen.items():
            records[split] = score_split(lm, protocol, split, items, answers[split], judge)
            report.splits[split] = protocol.aggregate(records[split])
            if config.probabilities:
                report.splits[split] |= add_probabilities(lm, bench, split, items, records, config)
    except JudgeError as exc:
        if answers_path is None:
            raise
        raise JudgeError(
            f"{exc}; the generated answers are saved in {answers_path}: score them without "
            "generating with reuse_answers=True"
        ) from exc
    if items_path is not None:
        write_items(items_path, records, overwrite=overwrite)
    counts = {
        split: {t: sum(i.task == t for i in items) for t in ("qa", "mcq", "cloze")}
        for split, items in chosen.items()
    }
    ratios = {split: truth_ratios(rows) for split, rows in records.items()}
    if reference is not None:
        reference_ratios = [
            r["truth_ratio"]
            for r in item_probabilities(
                reference, bench, generation_items(chosen["forget"]), **probability_args(config)
            )
            if r["truth_ratio"] is not None
        ]
        report.splits["forget"]["forget_quality"] = forget_quality(
            ratios["forget"], reference_ratios
        )
    report.meta = {
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "protocol": protocol.settings(),
        "judge": _describe(judge) if protocol.uses_judge else None,
        "items": counts,
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
    }
    if config.probabilities:
        report.meta["probability"] = {
            "definitions": "open-unlearning (evaluation.probability)",
            "truth_ratios": {split: r for split, r in ratios.items() if r},
        }
    if reference is not None:
        report.meta["forget_quality"] = {
            "reference": reference.name,
            "test": "scipy.stats.ks_2samp p-value, forget truth ratios",
            "items": len(ratios["forget"]),
        }
    return report


def without_probabilities_under_hooks(
    lm: LoadedModel, config: EvalConfig, reference: LoadedModel | None
) -> EvalConfig:
    """`config`, with probabilities off (and a warning) while a steering probe is applied to
    the model (`steer_only`, `gated_steer`, `evaluate --probe`). A probe steers
    as it generates: its gate reads the prompt and its edit lands on the prompt's last token
    and the generated ones. A teacher-forced pass over prompt + answer is not that run, so its
    probabilities would describe another model; they are left out rather than misreported.
    With a `reference` (forget quality) this is an error."""
    if not (is_steered(lm.model) and config.probabilities):
        return config
    why = (
        "a steering probe is applied to the model: a teacher-forced pass does not steer as "
        "generation does, so answer probability, truth ratio and forget quality would not "
        "describe the steered model"
    )
    if reference is not None:
        raise ProbabilityError(f"no forget quality: {why}; evaluate without the reference")
    warnings.warn(f"probability metrics left out: {why}", stacklevel=3)
    return replace(config, probabilities=False)


def generation_items(items: list[QAItem]) -> list[QAItem]:
    return [i for i in items if i.task == "qa"]


def probability_args(config: EvalConfig) -> dict:
    return {"batch_size": config.batch_size, "progress": config.progress}


def add_probabilities(
    lm: LoadedModel,
    bench: Benchmark,
    split: str,
    items: list[QAItem],
    records: dict[str, list[dict]],
    config: EvalConfig,
) -> dict:
    """Score the split's generation items' answer probabilities, store each in its record
    (`probability`) and return the split's probability metrics."""
    picked = [k for k, item in enumerate(items) if item.task == "qa"]
    rows = item_probabilities(
        lm,
        bench,
        [items[k] for k in picked],
        desc=f"answer probabilities {split}",
        **probability_args(config),
    )
    for k, row in zip(picked, rows, strict=True):
        records[split][k]["probability"] = row
    return split_metrics(split, rows)


def truth_ratios(records: list[dict]) -> list[float]:
    """The per-item truth ratios of a split's records, in record order."""
    rows = (r.get("probability") or {} for r in records)
    return [row["truth_ratio"] for row in rows if row.get("truth_ratio") is not None]


def check_reference(
    lm: LoadedModel,
    reference: LoadedModel,
    bench: Benchmark,
    config: EvalConfig,
    chosen: dict[str, list[QAItem]],
) -> None:
    """ProbabilityError unless forget quality can be computed against `reference`."""
    if not config.probabilities:
        raise ProbabilityError(
            "a reference model is given for forget quality, but EvalConfig.probabilities is "
            "off: forget quality compares truth ratios; turn probabilities on"
        )
    if "forget" not in chosen:
        raise ProbabilityError(
            "a reference model is given for forget quality, but the forget split is not "
            f"evaluated (splits: {', '.join(chosen)}); add 'forget' to the splits"
        )
    diff = lm.mismatch(reference)
    if diff:
        raise ProbabilityError(
            f"the reference model {reference.name} does not fit the evaluated model {lm.name}: "
            f"{diff} (reference vs evaluated); forget quality compares the two models' "
            "probabilities of the same answer tokens, so give a reference of the same "
            "architecture and tokenizer"
        )
    require_truth_ratio(bench, generation_items(chosen["forget"]))
    wrong_set = oracle_mismatch(reference, bench)
    if wrong_set:
        raise ProbabilityError(wrong_set)


def forget_people(bench: Benchmark) -> list[str]:
    """The ids of the people in `bench`'s forget split, sorted."""
    return sorted({i.person_id for i in bench.split("forget") if i.person_id})


def oracle_mismatch(model: LoadedModel, bench: Benchmark) -> str | None:
    """What is wrong when `model` is a retrain oracle (its asru_lab_model.json has an 'oracle'
    record) built without other people than `bench`'s forget set; None when it is that set's
    oracle, or no oracle at all. (Scored against the oracle of another forget set, a model
    that forgot nothing looks forgotten.)"""
    record = model.info.get("oracle")
    if not isinstance(record, dict):
        return None
    built, asked = sorted(map(str, record.get("forget_ids") or [])), forget_people(bench)
    if built == asked:
        return None
    what = ", ".join(f"{k} {record[k]}" for k in ("forget_ratio", "split_seed") if k in record)
    meta = bench.meta or {}
    here = ", ".join(f"{k} {meta[k]}" for k in ("forget_ratio", "split_seed") if k in meta)
    return (
        f"the oracle {model.name} was built without the forget people {built} "
        f"({what or 'no ratio recorded'}), but this forget set is {asked} "
        f"({here or bench.name}); use the oracle of this forget set "
        "(`asru-lab build-embedded --oracle --forget-ratio R --split-seed S`)"
    )


def _describe(judge: Judge) -> dict:
    """What judged, for the report's meta (a judge of one's own: its class name)."""
    describe = getattr(judge, "describe", None)
    return describe() if callable(describe) else {"kind": type(judge).__name__}
