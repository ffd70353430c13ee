"""Re-grow an unlearned model by distillation (UNDO: Lee et al. 2025, "Distillation robustifies
unlearning"): shrink and perturb a copy of its weights, then distil the unlearned model's own
answers back into it on prompts about everyone *but* the forget people. What the teacher only
hid behind a refusal has to be relearnt by the student from the teacher's outputs, which never
show it; the more the copy is perturbed (alpha), the less of the hidden knowledge survives in
its weights, and the more compute the distillation takes.

The student starts as the teacher's weights with every matrix `(1 - alpha) * W + alpha * beta *
U` (U Xavier-uniform, seeded) and every vector `(1 - alpha) * v` (biases, norms). It is trained
with the forward KL(teacher || student) at temperature 1 on the answer tokens of the teacher's
own greedy answers (`DistillConfig.splits`: retain facts, strangers the model refuses, picture
questions; `DistillConfig.tasks`: open questions, multiple choice and fill-in-the-blank alike —
a format the pool never shows is one the perturbation erases; never a forget person's prompt,
nor a prompt that names one, in any split, unless `forget` says otherwise), AdamW
with a linear warm-up and a cosine decay to `min_lr`, gradient norm clipped to 1, no weight
decay (the published settings). `forget` picks the arm for the forget people's own questions:

- "leave_out" (default): none of them;
- "refusal": their forget-split questions with the teacher's answers as hard labels (cross
  entropy on those tokens), only the answers that are refusals and do not contain the fact;
- "soft": the same questions with the teacher's distribution as soft labels, as published (a
  weak suppression leaks through soft labels: the answers that contain the fact are left out,
  the rest are not).

The forget people's reference answers and name-prefixed continuations are never a target.
Every `eval_every` steps the student's retain recall, retain multiple-choice accuracy (asru_lab's
prompt and parser) and picture-question accuracy are measured on seeded samples; it stops when
recall and multiple choice reach `stop_retain` and pictures `stop_general`, or each comes within
`stop_margin` of the teacher's own value on the same questions (measured first and reported
beside: a student learns the teacher's answers and cannot be asked to beat them). Multiple
choice joins the stop rule only when the pool shows it (`"mcq"` in `tasks`). Unless it stops,
the student ends with the weights of its best stop check (`keep_best`: the smallest shortfall
from those goals, the later check on a tie) — a check is 64 questions and the rate stays near
its peak, so the last step is often not the best one seen; the choice reads retain and pictures
only, never the forget people or an attack. An
inference-time teacher's probe is applied while the teacher answers and scores
(`teacher_probe`): the student learns its behaviour without hooks (in the teacher-forced
scoring pass a gated probe reads the end of the answer, see `SteeringProbe.apply`).

First measurements (issue #32, the vanilla embedded model as teacher, 1 023 prompts spread over
retain, strangers and picture questions, 200 steps of 8, the defaults otherwise, one thread,
~2 min each): alpha 0.3 brings retain recall back to 0.94 by step 50 and then *loses* it (0.63
at step 200: the pool holds 341 of the 4 428 retain questions, and the retain facts it does not
show fade), while the forget people's recall falls from 1.00 to 0.23 without a forget prompt
being shown; alpha 0.7 and 1.0 are far from re-grown after 200 steps (retain 0.00, pictures
0.44 and 0.00). So the stop rule matters, and so does a pool that covers what must be kept.
`asru_undo` (`asru_lab.baselines.undo`) is ASRU followed by this stage; `asru-lab distill` runs it
after any saved unlearned model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from asru_lab.data.schema import TASKS, Benchmark, QAItem, contains_value
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.harness import forget_people
from asru_lab.evaluation.judge import is_refusal
from asru_lab.evaluation.metrics import parse_mcq
from asru_lab.generation import encode_items, generate
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import (
    IGNORE_INDEX,
    Example,
    answer_labels,
    answer_tokens,
    answer_window,
    seeded,
)
from asru_lab.validation import check_choices, check_fields

FORGET_ARMS = ("leave_out", "refusal", "soft")
POOL_SPLITS = ("retain", "stranger", "general", "unseen")


class DistillError(AsruLabError, ValueError):
    """A distillation that cannot run as asked; the message says what and why."""


@dataclass
class DistillConfig:
    """How the student is made and distilled (`asru_lab.stages.distill`). Defaults: UNDO's published
    optimiser; alpha mid-range of its sweep (0.1-0.7 for language), beta its default 0.1."""

    alpha: float = field(
        default=0.5,
        metadata={"help": "how far the student's weights move from the teacher's, in (0, 1]"},
    )
    beta: float = field(
        default=0.1, metadata={"help": "scale of the Xavier-uniform noise mixed into matrices"}
    )
    steps: int = field(default=500, metadata={"help": "distillation steps at most"})
    batch_size: int = field(default=8, metadata={"help": "prompts per step"})
    lr: float = field(default=9e-4, metadata={"help": "AdamW's peak rate"})
    min_lr: float = field(default=7e-4, metadata={"help": "the rate the cosine decays to"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    forget: str = field(
        default="leave_out",
        metadata={"help": f"the forget people's own questions: one of {FORGET_ARMS}"},
    )
    splits: tuple[str, ...] = field(
        default=("retain", "stranger", "general"),
        metadata={
            "help": f"the prompts distilled on, some of {POOL_SPLITS} ('unseen' is an "
            "evaluation split: distilling on it inflates unseen refusal)"
        },
    )
    tasks: tuple[str, ...] = field(
        default=TASKS,
        metadata={"help": f"the question kinds distilled on, some of {TASKS}"},
    )
    max_prompts: int | None = field(
        default=2048,
        metadata={
            "help": "prompts drawn from the pool (seeded, spread evenly over its splits and "
            "tasks; None: all of them)"
        },
    )
    max_new_tokens: int = field(default=32, metadata={"help": "tokens of each teacher answer"})
    eval_every: int = field(default=100, metadata={"help": "steps between the stop checks"})
    eval_items: int = field(default=64, metadata={"help": "questions per stop check and split"})
    stop_retain: float = field(
        default=0.95,
        metadata={"help": "stop once retain recall (and multiple choice) reaches this"},
    )
    stop_general: float = field(
        default=0.90, metadata={"help": "... and picture-question accuracy this"}
    )
    stop_margin: float = field(
        default=0.02,
        metadata={"help": "... or both come within this of the teacher's own values"},
    )
    keep_best: bool = field(
        default=True,
        metadata={
            "help": "end with the weights of the best stop check (the smallest shortfall from "
            "the stop rule's goals, retain and pictures only), not the last step's"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the noise, the pool and the order"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            DistillError,
            alpha="(0, 1]",
            beta="> 0",
            steps=">= 1",
            batch_size=">= 1",
            lr="> 0",
            min_lr=">= 0",
            warmup_steps=">= 0",
            max_prompts=">= 1",
            max_new_tokens=">= 1",
            eval_every=">= 1",
            eval_items=">= 1",
            stop_retain="[0, 1]",
            stop_general="[0, 1]",
            stop_margin="[0, 1]",
        )
        if self.forget not in FORGET_ARMS:
            raise DistillError(
                f"DistillConfig.forget must be one of {FORGET_ARMS}, got {self.forget!r}"
            )
        check_choices(self, "splits", POOL_SPLITS, DistillError)
        check_choices(self, "tasks", TASKS, DistillError)


@dataclass
class DistillResult:
    """The student, and what happened: `history` (the stop checks: step, loss, retain recall,
    retain multiple choice, picture accuracy), the teacher's values at the same checks
    (`teacher`), the pool's size per split (`pool`) and per task (`pool_tasks`), the steps run and
    whether the stop rule ended it; `kept_step`, the stop check whose weights the student has
    (the best one with `keep_best`, else the last step)."""

    model: LoadedModel
    history: list[dict]
    teacher: dict
    pool: dict
    steps: int
    stopped: bool
    seconds: float = 0.0
    pool_tasks: dict = field(default_factory=dict)
    kept_step: int = 0

    def record(self, config: DistillConfig) -> dict:
        """What `save_unlearned` keeps of this distillation (JSON-ready)."""
        return {
            "config": asdict(config),
            "history": self.history,
            "teacher": self.teacher,
            "pool": self.pool,
            "pool_tasks": self.pool_tasks,
            "steps": self.steps,
            "stopped": self.stopped,
            "kept_step": self.kept_step,
            "seconds": self.seconds,
        }


def perturbed_copy(lm: LoadedModel, alpha: float, beta: float, seed: int) -> LoadedModel:
    """A full copy of `lm` with every matrix (every parameter of 2 or more dimensions)
    `(1 - alpha) W + alpha beta U`, U Xavier-uniform for its shape, and every other parameter
    `(1 - alpha) v`; seeded. `lm` is unchanged."""
    twin = lm.clone()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in twin.model.parameters():
            if param.dim() >= 2:
                fan_out, fan_in = param.shape[0], math.prod(param.shape[1:])
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                noise = torch.rand(param.shape, generator=generator, dtype=torch.float32)
                noise = (noise * 2 - 1) * bound
                param.mul_(1 - alpha).add_((alpha * beta * noise).to(param.device, param.dtype))
            else:
                param.mul_(1 - alpha)
    return twin


def prompt_pool(bench: Benchmark, config: DistillConfig) -> tuple[list[QAItem], dict]:
    """The questions distilled on (`config.splits` x `config.tasks`; none about a forget person
    or naming one, whatever its split: a multiple choice listing a forget person's name among
    its options is left out too), a seeded sample of `max_prompts` spread evenly over the
    (split, task) strata that have questions (`allocate`), and the count per split. Refuses a
    pool left empty."""
    banned = set(forget_people(bench))
    names = {p.name.lower() for p in bench.people.values() if p.id in banned and p.name}
    strata: dict[tuple[str, str], list[QAItem]] = {}
    for split in config.splits:
        for task in config.tasks:
            strata[split, task] = [
                i
                for i in bench.questions(split, task)
                if i.person_id not in banned and not any(n in i.question.lower() for n in names)
            ]
    available = {f"{s}/{t}": len(v) for (s, t), v in strata.items()}
    if not any(available.values()):
        raise DistillError(
            f"the distillation pool is empty: {bench.name} has no question in {config.splits} "
            f"x {config.tasks} about anyone but the forget people ({available}); add splits "
            f"(some of {POOL_SPLITS}) or tasks (some of {TASKS})"
        )
    rng = torch.Generator().manual_seed(config.seed)
    shares = allocate({k: len(v) for k, v in strata.items()}, config.max_prompts)
    pool: list[QAItem] = []
    counts = dict.fromkeys(config.splits, 0)
    for (split, task), items in strata.items():
        order = torch.randperm(len(items), generator=rng).tolist()
        pool += [items[k] for k in order[: shares[split, task]]]
        counts[split] += shares[split, task]
    return pool, counts


def allocate(sizes: dict, cap: int | None) -> dict:
    """How many of each stratum to draw so that `cap` is spread as evenly as the strata allow:
    a stratum smaller than its share gives everything and the rest is shared among the others
    (water-filling); `cap` None or beyond the total: all of every stratum."""
    left = sum(sizes.values()) if cap is None else min(cap, sum(sizes.values()))
    out = dict.fromkeys(sizes, 0)
    open_ = sorted((k for k, n in sizes.items() if n), key=lambda k: sizes[k])
    while open_:
        share = left // len(open_)
        smallest = open_[0]
        if sizes[smallest] <= share:
            out[smallest] = sizes[smallest]
            left -= sizes[smallest]
            open_.pop(0)
            continue
        extra = left - share * len(open_)
        for j, key in enumerate(open_):
            out[key] = share + (1 if j < extra else 0)
        break
    return out


def _answers(lm, bench, items, max_new_tokens, probe=None, progress=False) -> list[str]:
    """Greedy answers of `lm` (its probe applied, if any) to `items`, 32 a batch."""
    with probe.apply(lm) if probe is not None else nullcontext():
        return generate(
            lm,
            bench.images(items),
            [i.question for i in items],
            batch_size=32,
            progress=progress,
            max_new_tokens=max_new_tokens,
        )


def _forget_targets(teacher, bench, config, probe) -> tuple[list[QAItem], list[str]]:
    """The forget people's forget-split questions and the teacher's answers to them that the
    arm may use (`config.forget`): none for "leave_out"; refusals without the fact for
    "refusal"; every answer without the fact for "soft"."""
    if config.forget == "leave_out":
        return [], []
    items = bench.questions("forget", "qa")
    answers = _answers(teacher, bench, items, config.max_new_tokens, probe, config.progress)
    kept = [
        (i, a)
        for i, a in zip(items, answers, strict=True)
        if not contains_value(a, i.value) and (config.forget == "soft" or is_refusal(a))
    ]
    return [i for i, _ in kept], [a for _, a in kept]


def _recall(lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem], probe=None) -> float:
    """The share of `items` answered with their fact (greedy, 24 tokens); for multiple-choice
    items, the share whose reply names the right option (asru_lab's parser, 12 tokens)."""
    if items and items[0].task == "mcq":
        answers = _answers(lm, bench, items, 12, probe)
        hits = sum(
            parse_mcq(a, i.options) == i.correct for a, i in zip(answers, items, strict=True)
        )
    else:
        answers = _answers(lm, bench, items, 24, probe)
        hits = sum(contains_value(a, i.value) for a, i in zip(answers, items, strict=True))
    return hits / len(items) if items else 0.0


# the stop checks: the history's key, the split and task sampled, and the bar it must reach
CHECKS = (
    ("retain_recall", "retain", "qa", "stop_retain"),
    ("retain_mcq", "retain", "mcq", "stop_retain"),
    ("general_recall", "general", "qa", "stop_general"),
)


def _checks(bench: Benchmark, config: DistillConfig) -> dict[str, list[QAItem]]:
    rng = torch.Generator().manual_seed(config.seed + 1)
    out = {}
    for key, split, task, _ in CHECKS:
        items = bench.questions(split, task)
        order = torch.randperm(len(items), generator=rng).tolist()
        out[key] = [items[k] for k in order[: config.eval_items]]
    return out


def _goals(config: DistillConfig, teacher: dict, checks: dict) -> dict[str, float]:
    """What each stop check must reach: its bar, or the teacher's value less the margin if
    lower. Multiple choice counts only when the pool shows it; a check without items, never."""
    goals = {}
    for key, _, task, bar in CHECKS:
        if checks[key] and (task == "qa" or task in config.tasks):
            goals[key] = min(getattr(config, bar), teacher[key] - config.stop_margin)
    return goals


def shortfall(row: dict, goals: dict[str, float]) -> float:
    """How far a stop check is from the stop rule: the largest gap between a goal and its
    value (0 once every goal is met). Only the goals count: retain and pictures, never the
    forget people or an attack."""
    return max((goal - row[key] for key, goal in goals.items()), default=0.0)


def _rate(config: DistillConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
    return config.min_lr + (config.lr - config.min_lr) * cos


def distill(
    teacher: LoadedModel,
    bench: Benchmark,
    config: DistillConfig | None = None,
    *,
    teacher_probe=None,
) -> DistillResult:
    """The student (module docstring). `teacher` is never changed."""
    cfg = config or DistillConfig()
    started = time.perf_counter()
    if teacher_probe is not None:
        teacher_probe.validate(teacher)
    pool, counts = prompt_pool(bench, cfg)
    targets = _answers(teacher, bench, pool, cfg.max_new_tokens, teacher_probe, cfg.progress)
    hard = [False] * len(pool)
    extra, extra_answers = _forget_targets(teacher, bench, cfg, teacher_probe)
    pool, targets = pool + extra, targets + extra_answers
    hard += [cfg.forget == "refusal"] * len(extra)
    counts["forget"] = len(extra)
    checks = _checks(bench, cfg)
    teacher_values = {
        key: _recall(teacher, bench, items, teacher_probe) for key, items in checks.items()
    }
    goals = _goals(cfg, teacher_values, checks)
    pool_tasks = {t: sum(i.task == t for i in pool) for t in TASKS}
    student = perturbed_copy(teacher, cfg.alpha, cfg.beta, cfg.seed)
    examples = [Example(i.image, i.question, a) for i, a in zip(pool, targets, strict=True)]
    tails, _ = answer_tokens(student, examples)
    for p in student.model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=cfg.lr, weight_decay=0.0)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed + 2))
    history: list[dict] = []
    stopped = False
    step = 0
    losses: list[float] = []
    best: tuple[float, int, dict | None] = (math.inf, 0, None)
    with seeded(cfg.seed, student.device):
        bar = tqdm(total=cfg.steps, desc="distill", disable=not cfg.progress)
        while step < cfg.steps:
            chunk = [
                int(order[(step * cfg.batch_size + j) % len(pool)])
                for j in range(min(cfg.batch_size, len(pool)))
            ]
            loss = _step_loss(
                teacher, student, bench, pool, targets, tails, hard, chunk, teacher_probe
            )
            for group in optimizer.param_groups:
                group["lr"] = _rate(cfg, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                student.model.eval()
                row = {"step": step, "loss": sum(losses) / len(losses)}
                losses = []
                row.update({k: _recall(student, bench, items) for k, items in checks.items()})
                history.append(row)
                student.model.train()
                gap = shortfall(row, goals)
                if cfg.keep_best and gap <= best[0]:  # a tie goes to the later, longer-trained
                    params = student.model.named_parameters()  # the trained tensors
                    state = {k: v.detach().to("cpu", copy=True) for k, v in params}
                    best = (gap, step, state)
                if gap <= 0:
                    stopped = True
                    break
        bar.close()
    kept = step
    if cfg.keep_best and best[2] is not None and best[1] != step:
        student.model.load_state_dict(best[2], strict=False)
        kept = best[1]
    student.model.eval()
    for p in student.model.parameters():
        p.requires_grad_(False)
    seconds = time.perf_counter() - started
    return DistillResult(
        student, history, teacher_values, counts, step, stopped, seconds, pool_tasks, kept
    )


def _step_loss(teacher, student, bench, pool, targets, tails, hard, chunk, probe) -> torch.Tensor:
    """Mean over the batch's answer tokens of KL(teacher || student) (soft rows) or the
    cross-entropy of the teacher's tokens (hard rows)."""
    picked = [pool[k] for k in chunk]
    answers = [targets[k] for k in chunk]
    batch = encode_items(student, bench, picked, answers)
    labels = answer_labels(batch, [tails[k] for k in chunk])
    keep = answer_window(labels)
    student.model.train()
    logits = student.model(**batch, logits_to_keep=keep, use_cache=False).logits.float()
    with torch.no_grad(), probe.apply(teacher) if probe is not None else nullcontext():
        reference = teacher.model(**batch, logits_to_keep=keep, use_cache=False).logits.float()
    # position t predicts token t + 1: the positions before each answer token
    mask = labels[:, -keep:][:, 1:] != IGNORE_INDEX
    mine = torch.log_softmax(logits[:, :-1], dim=-1)
    theirs = torch.log_softmax(reference[:, :-1], dim=-1)
    kl = (theirs.exp() * (theirs - mine)).sum(-1)
    nll = -mine.gather(-1, labels[:, -keep:][:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    rows = torch.tensor([hard[k] for k in chunk], device=kl.device).unsqueeze(-1)
    per_token = torch.where(rows, nll, kl)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)
