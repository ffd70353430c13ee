"""Issue #30 diagnostic: can the embedded model answer MLLMU-Bench's multiple choice by letter?

Two phases on a built model (the shipped one by default), printing the official quick numbers:
1. the lookup alone (`OfficialFormatSampler.lookup`: "Which option is Oslo?", answered with the
   letter), lr 3e-3, per-example loss;
2. the official formats (16 of each 32 examples), lookups kept (4 of 32) and the
   base recipe's replay (12 of 32), lr 1e-3.

Measured 2026-12-06 on the shipped model, one thread, beside other work (steps 900 + 800):
the lookup goes from chance to 1.0 in a phase change (0.34 at 500 steps, 0.80 at 700, 1.0 at
1000 with lr 3e-3; no change in 500 steps at lr 1e-3), but multiple choice about a trained
person stays near chance (official_mcq_image / _text 0.29 / 0.29 at steps 200-600 of phase 2,
0.38 / 0.31 at 800; 1 432 s in all): the model finds the letter of a value it is given, not of a
value it must recall without saying it. Fill-in-the-blank from a portrait (the same one-pass
recall) stays at 0.13-0.35.

    .venv/bin/python scripts/experiments/issue30_lookup_curriculum.py \
        [--base DIR] [--lookup-steps 900] [--format-steps 800] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

from asru_lab.data import synthetic as syn
from asru_lab.data.schema import LETTERS
from asru_lab.evaluation.protocols import mllmu
from asru_lab.generation import generate_chats
from asru_lab.models.embedded import embedded_dir
from asru_lab.models.loading import load_model
from asru_lab.runs import build_embedded as be


def start(base: str, threads: int):
    """(the built model in `base`, its build recipe, its synthetic world), with torch set to
    `threads` threads, denormals flushed and seed 0."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    lm = load_model(base)
    recipe = be.base_recipe(lm)
    return lm, recipe, syn.build_world(recipe.benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(embedded_dir()))
    parser.add_argument("--lookup-steps", type=int, default=900)
    parser.add_argument("--format-steps", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="save the result here (default: not saved)")
    args = parser.parse_args()
    lm, recipe, world = start(args.base, args.threads)
    train = be.OfficialFormatSampler(world, be.FORMAT_WEIGHTS, "train", set(), max_shots=1)
    held = be.OfficialFormatSampler(world, be.FORMAT_WEIGHTS, "eval", set(), max_shots=0)
    test = [held.lookup() for _ in range(64)]

    def lookup_accuracy() -> dict[str, float]:
        replies = generate_chats(lm, [t for t, _ in test], [[] for _ in test], max_new_tokens=3)
        hits = [
            mllmu.mcq_choice(r, LETTERS[:4]) == a for r, (_, a) in zip(replies, test, strict=True)
        ]
        return {"lookup": sum(hits) / len(hits)}

    started = time.time()
    phase1 = be.FormatStageConfig(steps=args.lookup_steps, lr=3e-3, eval_every=100, warmup_steps=20)
    be._fit(
        lm,
        phase1,
        lambda: [[train.lookup() for _ in range(32)]],
        be.Collator(lm, {}, 16),
        lookup_accuracy,
        desc="lookup",
        progress=True,
        per_example=True,
    )
    print(f"phase 1: {time.time() - started:.0f} s", flush=True)
    replay = be.TrainingSampler(world, recipe.task_weights, 0)
    pixels, tokens_per_image = be._pixel_cache(
        lm.processor, world, replay.image_paths(), progress=False
    )
    phase2 = be.FormatStageConfig(steps=args.format_steps, lr=1e-3, eval_every=200, warmup_steps=20)
    be._fit(
        lm,
        phase2,
        lambda: [
            *train.parts(16),
            [train.lookup() for _ in range(4)],
            [replay.sample() for _ in range(12)],
        ],
        be.Collator(lm, pixels, tokens_per_image),
        lambda: lookup_accuracy() | be.format_quick_eval(lm, world, set()),
        desc="official formats",
        progress=True,
        per_example=True,
    )
    print(f"both phases: {time.time() - started:.0f} s", flush=True)
    if args.out:
        lm.save(args.out, overwrite=True)


if __name__ == "__main__":
    main()
