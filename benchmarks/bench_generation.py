"""Batched vs one-at-a-time generation on the embedded model (what evaluation relies on).

.venv/bin/python benchmarks/bench_generation.py
"""

from __future__ import annotations

import time

import asru_lab as al


def main(n: int = 64) -> float:
    lm = al.load_model()
    bench = al.load_benchmark()
    items = [i for i in bench.split("retain", "qa") if i.image][:n]
    images = [bench.load_image(i.image) for i in items]
    questions = [i.question for i in items]
    al.generate(lm, images[:4], questions[:4])  # warm-up

    t0 = time.perf_counter()
    batched = al.generate(lm, images, questions, batch_size=32)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [al.generate(lm, img, q) for img, q in zip(images, questions, strict=True)]
    t_single = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(batched, single, strict=True)) / n
    ratio = t_single / t_batched
    print(f"{n} answers: batched {t_batched:.2f} s, one at a time {t_single:.2f} s")
    print(f"ratio one-at-a-time/batched: {ratio:.1f}x (answers identical: {agree:.0%})")
    return ratio


if __name__ == "__main__":
    main()
