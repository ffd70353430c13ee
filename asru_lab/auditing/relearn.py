"""The relearning attack: a few LoRA fine-tuning steps on *other* facts, then ask again.

The forget people are split in two halves (seeded). The attack fine-tunes a copy of the
audited model on the facts of the first half (their forget-split questions with the reference
answers) and measures, after each number of steps in `AuditConfig.relearn_steps`, the leak on
the second half, whose facts it never shows. The benign variant fine-tunes on retain questions
only. Knowledge that is gone has to be learnt from nothing; knowledge that is only hidden
comes back in a few steps. The same attack on the retrain oracle is the floor.

Each point also asks a quarter of the retain questions (at least 2): an attack that loses the
model's retain recall broke the model, and its leak says nothing (`report.void_attacks`).
"""

from __future__ import annotations

import random
from contextlib import ExitStack

import torch
from tqdm.auto import tqdm

from asru_lab.generation import encode_items
from asru_lab.training import (
    Example,
    activation_checkpointing,
    answer_labels,
    answer_tokens,
    answer_window,
    language_model_linears,
    lora_wrap,
    seeded,
)

from .attacks import ATTACKED_SPLITS, Subject, leaks
from .config import AuditError
from .measure import leak_records, sample


def halves(forget_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(people whose facts the attack shows, people it is measured on): a seeded split of the
    forget people, the first half rounded down."""
    ids = sorted(forget_ids)
    random.Random(f"{seed}:relearn").shuffle(ids)
    cut = len(ids) // 2
    return sorted(ids[:cut]), sorted(ids[cut:])


def relearn(subject: Subject, baseline: list[dict]) -> tuple[dict, list[dict]]:
    """Leak curves of the relearning attack (`"forget"`: taught the first half's facts;
    `"benign"`: taught retain facts) on the second half's forget and test questions, with each
    point's retain recall on the control questions; `retain_control` holds their recall before
    the attack (from `baseline`, the no-attack answers)."""
    bench, cfg = subject.bench, subject.config
    people = sorted({i.person_id for i in bench.split("forget") if i.person_id})
    if len(people) < 2:
        raise AuditError(
            f"the relearning attack needs at least 2 forget people (one to teach, one to "
            f"test), the forget split has {len(people)}; leave 'relearn' out of "
            "AuditConfig.attacks"
        )
    taught, held_out = halves(people, cfg.seed)
    held = set(held_out)
    measured = {
        split: sample(
            [i for i in bench.questions(split, "qa") if i.person_id in held],
            cfg.max_items,
            cfg.seed,
            f"relearn:{split}",
        )
        for split in ATTACKED_SPLITS
    }
    asked = subject.questions["retain"]
    measured["retain"] = sample(asked, max(2, cfg.max_items // 4), cfg.seed, "relearn:control")
    answered = [r for r in baseline if r["split"] == "retain"]
    recalled = {id(i): r["leak"] for i, r in zip(asked, answered, strict=True)}
    teach = {
        "forget": [i for i in bench.questions("forget", "qa") if i.person_id in set(taught)],
        "benign": bench.questions("retain", "qa"),
    }
    teach["benign"] = sample(teach["benign"], len(teach["forget"]), cfg.seed, "relearn:benign")
    control = {
        "questions": len(measured["retain"]),
        "recall_before": sum(recalled[id(i)] for i in measured["retain"]) / len(measured["retain"]),
    }
    out: dict = {
        "taught_people": taught,
        "measured_people": held_out,
        "retain_control": control,
        "curves": {},
    }
    records: list[dict] = []
    for variant, items in teach.items():
        curve, mine = _curve(subject, variant, items, measured)
        out["curves"][variant] = curve
        records += mine
    return out, records


def _curve(subject: Subject, variant: str, items, measured) -> tuple[list[dict], list[dict]]:
    cfg = subject.config
    # the audited model is never changed: relearning trains a LoRA adapter (never merged) on
    # a twin whose module tree is its own and whose weights are the audited model's, shared
    twin = subject.lm.clone(copy_only=())
    examples = [Example(i.image, i.question, i.answer) for i in items]
    tails, _ = answer_tokens(twin, examples)
    records: list[dict] = []
    curve: list[dict] = []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
    cursor = 0

    def measure(step: int) -> None:
        twin.model.eval()
        mine = []
        for split, questions in measured.items():
            mine += leak_records(
                twin,
                subject.bench,
                questions,
                cfg,
                attack=f"relearn_{variant}_k{step}",
                desc=f"relearn {variant} k={step}: {split}",
            )
        records.extend(mine)
        curve.append({"steps": step, **leaks(mine)})

    with ExitStack() as stack:
        stack.enter_context(subject.applied_to(twin))
        stack.enter_context(seeded(cfg.seed, twin.device))
        # hooks first, then LoRA: it swaps the linear layers inside the hooked decoder layers
        peft_model = lora_wrap(
            twin.model,
            language_model_linears(twin),
            r=cfg.relearn_lora_r,
            alpha=cfg.relearn_lora_r,
            dropout=0.0,
        )
        stack.enter_context(activation_checkpointing(peft_model, cfg.relearn_checkpointing))
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.relearn_lr, weight_decay=0.0)
        done = 0
        bar = tqdm(
            total=cfg.relearn_steps[-1], desc=f"relearn ({variant})", disable=not cfg.progress
        )
        for target in cfg.relearn_steps:
            while done < target:
                chunk = []
                while len(chunk) < min(cfg.relearn_batch_size, len(examples)):
                    if cursor == len(order):
                        order = torch.randperm(
                            len(examples), generator=torch.Generator().manual_seed(cfg.seed + done)
                        )
                        cursor = 0
                    chunk.append(int(order[cursor]))
                    cursor += 1
                twin.model.train()
                picked = [examples[k] for k in chunk]
                batch = encode_items(twin, subject.bench, picked, [e.answer for e in picked])
                labels = answer_labels(batch, [tails[k] for k in chunk])
                keep = answer_window(labels)
                loss = peft_model(
                    **batch, labels=labels[:, -keep:], logits_to_keep=keep, use_cache=False
                ).loss
                if not torch.isfinite(loss):
                    raise AuditError(
                        f"relearning ({variant}) diverged: the loss became {float(loss)} at "
                        f"step {done + 1}; lower AuditConfig.relearn_lr (now {cfg.relearn_lr:g})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            measure(target)
        bar.close()
    return curve, records
