"""Issue #30 experiment: the base recipe with MLLMU-Bench's official prompts from the first step.

One `build_embedded` run from scratch, as `asru-lab build-embedded` trains, with the official
families (`OFFICIAL_WEIGHTS`, beside the base recipe's own `DEFAULT_TASK_WEIGHTS`) and the
per-example loss (`BuildConfig.per_example_loss`: a one-letter answer weighs as much as a
sentence). `--layers` changes the decoder's depth (the shipped model has 6): a portrait's
multiple choice asks picture -> person -> value -> letter in one pass.

Measured 2026-12-06 (one thread per run, two runs side by side; `quick_eval` and
`format_quick_eval`, 48 items each), stopped early: from scratch the official families slow the
base recipe down and teach none of the official formats in the steps a build can afford.
- 6 layers, 1.3 steps/s: step 1 000: recall on trained views 0.0, multiple choice image / text
  0.25 / 0.27, the lookup 0.17; step 2 000: recall 0.17 (the shipped recipe: 0.83 at step
  2 000), multiple choice 0.13 / 0.33, the lookup 0.15 (below chance: answers that are no
  letter), blank from a portrait 0.08, unseen_refusal 0.33.
- 8 layers, 1.0 steps/s: step 1 000 as the 6 layers (recall 0.0, multiple choice 0.25 / 0.27).
A full rebuild with this mixture would need far more than the 5 000 steps (42 min on 2 cores)
of the shipped build; the staged recipes (`issue30_recall_curriculum.py`) learn faster.

    .venv/bin/python scripts/experiments/issue30_scratch_recipe.py --out DIR \
        [--layers 6] [--steps 5000] [--lr 2e-3] [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from asru_lab.models.embedded import TinyDims
from asru_lab.runs import build_embedded as be

# per family of FORMAT_WEIGHTS, in its order (mcq, cloze, qa, stranger; image then text)
SHARES = (4.0, 2.0, 2.0, 1.0, 1.0, 0.5, 1.5, 0.5)
OFFICIAL_WEIGHTS = {
    be.OFFICIAL + family: share for family, share in zip(be.FORMAT_WEIGHTS, SHARES, strict=True)
} | {be.OFFICIAL_LOOKUP: 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="save the built model here")
    for flag, default in (
        ("--layers", 6),
        ("--steps", 5000),
        ("--lr", 2e-3),
        ("--threads", 1),
        ("--eval-every", 1000),
    ):
        parser.add_argument(flag, type=type(default), default=default)
    args = parser.parse_args()
    cfg = be.BuildConfig(
        steps=args.steps,
        lr=args.lr,
        threads=args.threads,
        eval_every=args.eval_every,
        task_weights=be.DEFAULT_TASK_WEIGHTS | OFFICIAL_WEIGHTS,
        per_example_loss=True,
        dims=replace(TinyDims(), layers=args.layers),
    )
    be.build_embedded(args.out, cfg)


if __name__ == "__main__":
    main()
