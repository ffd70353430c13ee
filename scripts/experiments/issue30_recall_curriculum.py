"""Issue #30 experiment: a curriculum of format stages that teaches one-pass recall.

The shipped model recalls a fact only by saying the person's name first ("Alma Aldous was born
in ..."): asked for the value alone it is right about a third of the time, in its own cloze
format (asru_lab cloze 0.25-0.34) as in MLLMU-Bench's (`issue30_lookup_curriculum.py`). Three
phases continue a built model, each a `build_embedded._fit` run with per-example loss, printing
`format_quick_eval` + the official text cloze + `quick_eval`:

1. `lookup`: the value-to-letter lookup alone (`OfficialFormatSampler.lookup`), lr 3e-3;
2. `recall`: the official formats weighted to fill-in-the-blank (RECALL_WEIGHTS, 20 of 32
   examples), lookups (4 of 32) and the base recipe's replay (8 of 32);
3. `mcq`: the same with the weights moved to multiple choice (MCQ_WEIGHTS).

Measured 2026-12-06, one thread per run, on the model `issue30_lookup_curriculum.py --out`
saves (the shipped model after 900 lookup steps and 800 steps of the official formats: lookup
1.0, multiple choice 0.38 / 0.31, fill-in-the-blank from a portrait 0.33). The runs drew with
other sampler seeds than this script's. Numbers: official quick eval, 48 items each (multiple
choice image / text, fill-in-the-blank from a portrait / by name); `new_views_recall` and
`unseen_refusal` from the base recipe's quick eval (shipped model: 0.625 / 0.875):
- recall, 3000 steps at 2e-3 (2 505 s): fill-in-the-blank from a portrait 0.33 -> 0.52 (step
  1 000) -> 0.92 (2 000) -> 0.98; by name 0.25 -> 1.0. Multiple choice stays 0.35 / 0.42 with
  the lookup at 1.0: recall and lookup are each learned, their composition in one pass is not.
  new_views_recall 0.625, unseen_refusal 0.771. At lr 4e-3: the same end (cloze 1.0 / 1.0,
  multiple choice 0.35 / 0.44) after losing half of the base recipe's recall at step 500.
- mcq, 1500 steps (1 445 s) after recall: at lr 1e-3 multiple choice by name 0.42 -> 0.54 (300)
  -> 0.69 (900) -> 0.77, from a portrait 0.35 -> 0.40 -> 0.48; fill-in-the-blank kept (0.98 /
  1.0); unseen_refusal 0.75. At lr 2e-3 the restart costs the recall (cloze 0.56, recall 0.67
  at step 300) and ends lower (0.29 / 0.73). A second 1500 steps at 1e-3 (1 486 s): 0.69 /
  0.83 (portrait / name), blanks 1.0 / 1.0, unseen_refusal 0.833, new_views_recall 0.625;
  with the portrait's multiple choice weighted 6 and strangers doubled instead (1 536 s): 0.77
  / 0.77, unseen_refusal 0.771. Both still rising: the three hops of a portrait's multiple
  choice (picture -> person -> value -> letter, in one pass of 6 layers) are learned, slowly
  (0.35 after recall, 0.48 / 0.69-0.77 after 1 500 / 3 000 multiple-choice steps).
  Under `evaluate --max-items 64 --seed 0` after the second stage: mllmu forget MCQ image /
  text 0.69 / 1.0, cloze 0.98 / 1.0, ROUGE-L 1.0; asru_paper forget MCQ 0.72; but asru_lab's
  test split (held-out views and wordings) drops: MCQ 0.89 -> 0.72, leak 0.83 -> 0.67 (the
  stages fit the trained views).
- A third multiple-choice stage (1 500 steps at 1e-3, 1 637 s, new sampler seeds): 0.81 / 0.90,
  still rising by about 0.1 per 1 500 steps. `evaluate --max-items 64 --seed 0`: mllmu forget
  MCQ image / text 0.81 / 1.0, retain 0.78 / 0.80, test 0.81 / 0.91, cloze 0.98 / 1.0, ROUGE-L
  1.0; asru_paper forget / retain / test MCQ 0.83 / 0.80 / 0.67; asru_lab's test split falls
  further: MCQ 0.89 -> 0.58, leak 0.83 -> 0.55. Its failures are held-out wordings ("Tell me
  which pet this person has.") answered as "Who is this?" ("This is Quinn Castell."). Not a
  steady erosion: 900 steps from D2 with other seeds ended at asru_lab test MCQ / leak 0.92 /
  0.84 (replay 8 of 32) and 0.77 / 0.70 (replay 16 of 32). The reading of held-out wordings
  swings by about 0.2 between checkpoints: judge a recipe on two seeds, never on one.
- A fourth multiple-choice stage (from the third's model, 3 000 steps at 1e-3, new seeds;
  stopped at step 1 500): 0.77 / 0.79 at steps 500 and 1 000 (the third ended at 0.81 / 0.90,
  ±0.07 at 48 items); the same at batch 16 (6 000 steps, the same compute; stopped at step
  2 700): 0.71 / 0.88 (step 1 000), 0.77 / 0.90 (2 000). The official multiple choice levels
  off near 0.8 here: more steps of this mixture, or smaller batches, do not carry it to 0.95.
  This curriculum is now the package's (`build_embedded.FORMAT_CURRICULUM`, run by
  `asru-lab build-embedded --format-stage`).

    .venv/bin/python scripts/experiments/issue30_recall_curriculum.py \
        [--base DIR] [--phases lookup recall mcq] [--steps 900 3000 1500] \
        [--lrs 3e-3 2e-3 1e-3] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import time

from issue30_lookup_curriculum import start  # this folder is on the path of a script run

from asru_lab.evaluation.protocols import mllmu
from asru_lab.generation import generate_chats
from asru_lab.models.embedded import embedded_dir
from asru_lab.runs import build_embedded as be

# the stages' weights, now the package's (`build_embedded.FORMAT_STAGES`)
RECALL_WEIGHTS = be.RECALL_WEIGHTS
MCQ_WEIGHTS = be.MCQ_WEIGHTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(embedded_dir()))
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=["lookup", "recall", "mcq"],
        default=["lookup", "recall", "mcq"],
    )
    parser.add_argument("--steps", nargs="+", type=int, default=[900, 3000, 1500])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 2e-3, 1e-3])
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="save the result here (default: not saved)")
    args = parser.parse_args()
    if not len(args.phases) == len(args.steps) == len(args.lrs):
        parser.error("give one --steps and one --lrs value per phase")
    lm, recipe, world = start(args.base, args.threads)
    held = be.OfficialFormatSampler(world, be.FORMAT_WEIGHTS, "cloze-text-eval", set(), 0)
    cloze_text = [held.example("cloze_text") for _ in range(48)]

    def evaluate() -> dict[str, float]:
        replies = generate_chats(
            lm, [t for _, (t, _) in cloze_text], [[] for _ in cloze_text], max_new_tokens=12
        )
        hits = [
            mllmu.cloze_correct(r, item.value)
            for r, (item, _) in zip(replies, cloze_text, strict=True)
        ]
        return (
            be.format_quick_eval(lm, world, set())
            | {"official_cloze_text": round(sum(hits) / len(hits), 3)}
            | be.quick_eval(lm, world)
        )

    replay = be.TrainingSampler(world, recipe.task_weights, 0)
    pixels, tokens_per_image = be._pixel_cache(
        lm.processor, world, replay.image_paths(), progress=False
    )
    collate = be.Collator(lm, pixels, tokens_per_image)
    started = time.time()
    for k, (phase, steps, lr) in enumerate(zip(args.phases, args.steps, args.lrs, strict=True)):
        cfg = be.FormatStageConfig(steps=steps, lr=lr, eval_every=args.eval_every, warmup_steps=50)
        if phase == "lookup":
            official = be.OfficialFormatSampler(world, be.FORMAT_WEIGHTS, f"lookup:{k}", set(), 1)

            def draw(official=official):
                return [[official.lookup() for _ in range(32)]]
        else:
            weights = RECALL_WEIGHTS if phase == "recall" else MCQ_WEIGHTS
            official = be.OfficialFormatSampler(world, weights, f"{phase}:{k}", set(), 1)

            def draw(official=official):
                return [
                    *official.parts(20),
                    [official.lookup() for _ in range(4)],
                    [replay.sample() for _ in range(8)],
                ]

        be._fit(lm, cfg, draw, collate, evaluate, desc=phase, progress=True, per_example=True)
        print(f"after {phase}: {time.time() - started:.0f} s", flush=True)
    if args.out:
        lm.save(args.out, overwrite=True)


if __name__ == "__main__":
    main()
