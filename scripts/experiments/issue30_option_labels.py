"""Issue #30 experiment: teach each option line of a multiple choice whether it is the answer.

The letter of MLLMU-Bench's multiple choice is one label per question. This experiment adds one
per option: at the last token of every option line (`A: sailing`) of an official multiple
choice, the few-shot turn's included, the model is taught to predict "Y" if the option is the
answer and "N" if not (a stranger's options: all "N"). These are prompt positions, whose
predictions generation never uses, so the model stays a plain Qwen3-VL; the labels only give
the comparison "is this option this person's value?" a signal of its own. The loss adds
`--weight` x (each example's mean loss on its option labels) to the per-example answer loss.
It runs the `mcq` phase of `issue30_recall_curriculum.py` with these labels and prints, after
training, how often the best-scored option ("Y" minus "N") is the answer.

Measured 2026-12-06 (one thread; from the recall stage's model A, 1 500 steps at lr 1e-3,
weight 1.0, 1 501 s; drawn with run D's sampler seeds, which this script's differ from), beside
run D (the same without option labels); `format_quick_eval` multiple choice from a portrait /
by name, 48 items:

| step | 300 | 600 | 900 | 1 200 | 1 500 |
|---|---|---|---|---|---|
| D | 0.40 / 0.54 | 0.33 / 0.56 | 0.40 / 0.69 | 0.46 / 0.67 | 0.48 / 0.77 |
| with option labels | 0.40 / 0.56 | 0.29 / 0.63 | 0.54 / 0.71 | 0.48 / 0.75 | 0.52 / 0.77 |

No gain beyond the noise. After training, the best-scored option is the answer for 0.60-0.65 /
0.71-0.75 of the questions (two samples of 48; per option "Y"/"N" right 0.81 / 0.86): the
comparison at the option lines is learned no better than the letter itself. So the slow part
is not gathering the letter from the option that matches but recalling the person's value
where an option is read: the tiny model recalls a fact in the contexts it was trained to say
it in, and each new one (after the name, in a blank, at an option) takes thousands of steps
of its own.

    .venv/bin/python scripts/experiments/issue30_option_labels.py --base A [--steps 1500] \
        [--lr 1e-3] [--weight 1.0] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import re

import torch
from issue30_lookup_curriculum import start  # this folder is on the path of a script run
from issue30_recall_curriculum import MCQ_WEIGHTS

from asru_lab.generation import build_chat_prompt
from asru_lab.runs import build_embedded as be

OPTION = re.compile(r"\n([A-D]): [^\n]*?(?=\n)")  # an option line, up to its newline
REPLY = re.compile(r"<\|im_start\|>assistant\n(.)")  # a few-shot turn's letter


class OptionLabels(be.Collator):
    """The format stage's batches plus `option_labels`: at the token after each option line's
    last token, "Y" where that option is the answer (the next reply's letter, or the answer
    for the asked turn), else "N"; -100 everywhere else."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        yes, no = self.tok.convert_tokens_to_ids(["Y", "N"])
        labels = torch.full_like(batch["labels"], -100)
        for row, (turns, answer) in enumerate(examples):
            text = build_chat_prompt(self.lm, turns)
            encoded = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            at, where = [], 0  # each token's index once every image is expanded
            for token in encoded["input_ids"]:
                at.append(where)
                where += self.tokens_per_image if token == self.image_token_id else 1
            replies = [(m.start(), m.group(1)) for m in REPLY.finditer(text)]
            for option in OPTION.finditer(text):
                later = [letter for start, letter in replies if start > option.end()]
                right = later[0] if later else (answer if len(answer) == 1 else None)
                last = next(
                    k for k, (a, b) in enumerate(encoded["offset_mapping"]) if a < option.end() <= b
                )
                labels[row, at[last] + 1] = yes if option.group(1) == right else no
        batch["option_labels"] = labels
        return batch


def loss_with_options(weight: float):
    """The per-example answer loss plus `weight` x the per-example mean loss on option labels
    (averaged over the batch; examples without options add 0)."""

    def loss(model, batch):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "option_labels")}
        logits = model(**inputs).logits[:, :-1].float().transpose(1, 2)
        total = 0.0
        for key, scale in (("labels", 1.0), ("option_labels", weight)):
            labels = batch[key][:, 1:]
            tokens = torch.nn.functional.cross_entropy(
                logits, labels, ignore_index=-100, reduction="none"
            )
            mask = labels != -100
            rows = mask.any(1)
            per = (tokens * mask).sum(1)[rows] / mask.sum(1)[rows]
            total = total + scale * per.sum() / len(labels)
        return total

    return loss


@torch.no_grad()
def best_option_accuracy(lm, collate: OptionLabels, world, family: str, n: int = 48) -> float:
    """How often the option scored highest ("Y" minus "N" at its label position) is the answer."""
    sampler = be.OfficialFormatSampler(world, {family: 1.0}, "option-check", set(), max_shots=0)
    batch = collate([sampler.sample() for _ in range(n)])
    yes, no = lm.tokenizer.convert_tokens_to_ids(["Y", "N"])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "option_labels")}
    logits = lm.model(**inputs).logits[:, :-1]
    labels = batch["option_labels"][:, 1:]
    score = (logits[..., yes] - logits[..., no]).masked_fill(labels == -100, -torch.inf)
    best = score.argmax(1)
    return float((labels[torch.arange(n), best] == yes).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="e.g. the recall stage's model")
    for flag, default in (("--steps", 1500), ("--lr", 1e-3), ("--weight", 1.0), ("--threads", 1)):
        parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--out", default=None, help="save the result here (default: not saved)")
    args = parser.parse_args()
    lm, recipe, world = start(args.base, args.threads)
    replay = be.TrainingSampler(world, recipe.task_weights, 0)
    official = be.OfficialFormatSampler(world, MCQ_WEIGHTS, "option-labels", set(), 1)
    pixels, tokens_per_image = be._pixel_cache(lm.processor, world, replay.image_paths(), False)
    collate = OptionLabels(lm, pixels, tokens_per_image)
    be._example_mean_loss = loss_with_options(args.weight)  # what `_fit` calls per part
    cfg = be.FormatStageConfig(steps=args.steps, lr=args.lr, eval_every=300, warmup_steps=50)
    be._fit(
        lm,
        cfg,
        lambda: [
            *official.parts(20),
            [official.lookup() for _ in range(4)],
            [replay.sample() for _ in range(8)],
        ],
        collate,
        lambda: be.format_quick_eval(lm, world, set()),
        desc="option labels",
        progress=True,
        per_example=True,
    )
    for family in ("mcq_image", "mcq_text"):
        print(family, "best option right:", best_option_accuracy(lm, collate, world, family))
    if args.out:
        lm.save(args.out)


if __name__ == "__main__":
    main()
