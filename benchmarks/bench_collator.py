"""Does build-embedded's own collator pay for itself? Ratio of processor time to ours.

    .venv/bin/python benchmarks/bench_collator.py

Both produce identical tensors (tests/integration/test_embedded_build.py). Measured on 2 cores:
0.9x, i.e. no speed-up: the collator's remaining use is right padding with token-level
answer-only labels, and a rebuild could use `asru_lab.generation.encode` instead.
"""

from __future__ import annotations

import time

import torch

from asru_lab.data.synthetic import build_world
from asru_lab.generation import encode
from asru_lab.models.loading import load_model
from asru_lab.runs.build_embedded import DEFAULT_TASK_WEIGHTS, Collator, TrainingSampler


def main(batch_size: int = 32, repeats: int = 10) -> float:
    torch.set_num_threads(1)
    lm = load_model()
    world = build_world()
    sampler = TrainingSampler(world, DEFAULT_TASK_WEIGHTS, seed=0)
    batches = [[sampler.sample() for _ in range(batch_size)] for _ in range(repeats)]
    # the base recipe's examples are one turn each
    batches_flat = [
        [(turns[0].image, turns[0].text, answer) for turns, answer in b] for b in batches
    ]
    images = {p: world.render(p) for b in batches_flat for p, _, _ in b if p}
    pixels = {
        p: lm.processor.image_processor([img], return_tensors="pt")["pixel_values"]
        for p, img in images.items()
    }
    collate = Collator(lm, pixels, tokens_per_image=16)

    t0 = time.perf_counter()
    for b in batches:
        collate(b)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches_flat:
        qs = [q for _, q, _ in b]
        encode(lm, [images[p] if p else None for p, _, _ in b], qs, [a for _, _, a in b])
    theirs = time.perf_counter() - t0
    ratio = theirs / ours
    print(f"collator {1000 * ours / repeats:.1f} ms/batch, processor {1000 * theirs / repeats:.1f}")
    print(f"ratio processor/collator: {ratio:.1f}x")
    return ratio


if __name__ == "__main__":
    main()
