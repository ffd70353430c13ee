"""Multiple choice by option likelihood: which of a question's options does the model find
most likely, whatever it says? A model that refuses in words can still rank the true option
first (Deeb & Roger 2024 measure unlearning, and relearning, by exactly this accuracy).

Each option is scored as the answer would say it: the item's reference answer with the fact
replaced by the option ("This is Vera Mercer." for the option "Vera Mercer"), or the option
alone when the reference answer does not contain the fact (a letter answer). The score is the
sum of the answer's token log-probabilities (its end of turn left out) after the multiple-choice
prompt; the chosen option is the highest (Deeb & Roger's and lm-evaluation-harness' "acc").
Options that share the answer's other words differ only in the fact's tokens, so the sum needs
no length normalisation beyond what the fact's own length does.

The tokens are forced one at a time through `generate` (the prompt in one pass, then each
answer token as a decoding step), so an inference-time method's hooks act exactly as when it
answers: a gate reads the prompt's last tokens, not the end of a teacher-forced answer.

Under an attack, the same is measured with the attack in force (`audit` runs it with no attack,
under direction ablation, the orthogonalised copy, each quantised copy, the soft prompt and at
the last k of each relearning setting on the forget data); `stats.choice_table` gives each
accuracy with its Wilson interval beside the oracle's under the identical attack, and
`chance`, the mean of 1 / options.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import torch

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.generation import encode_items
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import Example, answer_tokens

from .config import AuditConfig
from .measure import sample


def mcq_items(bench: Benchmark, split: str, people: set[str] | None, config: AuditConfig):
    """A seeded sample (`max_items`) of `split`'s multiple-choice items with options and a
    right one, of `people` only when given."""
    items = [
        i
        for i in bench.questions(split, "mcq")
        if i.options and i.correct is not None and (people is None or i.person_id in people)
    ]
    return sample(items, config.max_items, config.seed, f"{split}:mcq")


def option_answers(item: QAItem) -> list[str]:
    """Each option of `item` as its answer would say it (module docstring)."""
    value = item.value or ""
    # the fact as a whole word ("cat" in "Catherine has a cat." is the last word, not "Cat")
    whole = rf"(?<!\w){re.escape(value)}(?!\w)"
    found = re.search(whole, item.answer, re.IGNORECASE) if value else None
    if found is None:
        return [str(o) for o in item.options or ()]
    head, tail = item.answer[: found.start()], item.answer[found.end() :]
    return [f"{head}{o}{tail}" for o in item.options or ()]


@torch.no_grad()
def option_scores(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    config: AuditConfig,
    desc: str = "options",
) -> list[list[float]]:
    """Per item, the summed log-probability of each option's answer (`option_answers`), its
    tokens forced one decoding step at a time after the prompt."""
    rows = [(k, text) for k, item in enumerate(items) for text in option_answers(item)]
    examples = [Example(items[k].image, items[k].question, text) for k, text in rows]
    tails, _ = answer_tokens(lm, examples)
    tails = [t[:-1] if len(t) > 1 else t for t in tails]  # the end of turn is not counted
    scores: list[float] = []
    starts = range(0, len(rows), config.batch_size)
    eos = lm.tokenizer.eos_token_id
    for start in tqdm(starts, desc=desc, disable=not config.progress, leave=False):
        chunk = range(start, min(len(rows), start + config.batch_size))
        batch = encode_items(lm, bench, [items[rows[r][0]] for r in chunk])
        forced = [tails[r] for r in chunk]
        width = batch["input_ids"].shape[1]

        def allowed(row: int, ids: torch.Tensor, forced=forced, width=width) -> list[int]:
            step = ids.shape[-1] - width
            return [forced[row][step]] if step < len(forced[row]) else [eos]

        out = lm.model.generate(
            **batch,
            max_new_tokens=max(len(t) for t in forced),
            do_sample=False,
            prefix_allowed_tokens_fn=allowed,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        for row, tokens in enumerate(forced):
            total = 0.0
            for step, token in enumerate(tokens):
                logits = out.logits[step][row].double()
                total += float(logits[token] - logits.logsumexp(-1))
            scores.append(total)
    by_item: list[list[float]] = [[] for _ in items]
    for (k, _), score in zip(rows, scores, strict=True):
        by_item[k].append(score)
    return by_item


def choice_records(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    config: AuditConfig,
    attack: str,
    *,
    questions: Sequence[str] | None = None,
) -> list[dict]:
    """One record per item: the attack's name, `task` "mcq", split, person, question, the
    options' scores, the chosen option and whether it is the right one (`correct`).
    `questions`: the prompts actually asked, when an attack rewrote them (the records keep
    the items' own)."""
    asked = items
    if questions is not None:
        asked = [replace(i, question=q) for i, q in zip(items, questions, strict=True)]
    scores = option_scores(lm, bench, asked, config, desc=f"{attack}: options")
    records = []
    for item, mine in zip(items, scores, strict=True):
        chosen = max(range(len(mine)), key=lambda j: mine[j])
        records.append(
            {
                "attack": attack,
                "task": "mcq",
                "split": item.split,
                "person_id": item.person_id,
                "attribute": item.attribute,
                "question": item.question,
                "image": item.image,
                "options": list(item.options or ()),
                "scores": [round(s, 4) for s in mine],
                "chosen": chosen,
                "answer_option": item.correct,
                "correct": chosen == item.correct,
            }
        )
    return records


def under(
    subject,
    attack: str,
    *,
    people: set[str] | None = None,
    inside: Callable[[], AbstractContextManager] = nullcontext,
    rewrite: Callable[[str], str] | None = None,
) -> list[dict]:
    """`choice_records` of the subject's multiple-choice items (`Subject.mcq`; of `people`
    only when given) with the method's hooks and then `inside()`'s applied, the questions
    rewritten by `rewrite` when given. No records when the audit asks no multiple choice."""
    found: list[dict] = []
    for items in subject.mcq.values():
        mine = [i for i in items if people is None or i.person_id in people]
        if not mine:
            continue
        questions = None if rewrite is None else [rewrite(i.question) for i in mine]
        with subject.applied(), inside():
            found += choice_records(
                subject.lm, subject.bench, mine, subject.config, attack, questions=questions
            )
    return found


def accuracy(records: Sequence[dict]) -> dict:
    """{split}_mcq_acc (share of right options) and n_{split}_mcq, per split of `records`."""
    out: dict = {}
    for split in sorted({r["split"] for r in records}):
        mine = [r for r in records if r["split"] == split]
        out[f"{split}_mcq_acc"] = sum(r["correct"] for r in mine) / len(mine)
        out[f"n_{split}_mcq"] = len(mine)
    return out
