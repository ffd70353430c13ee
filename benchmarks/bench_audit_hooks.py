"""The audit's direction-ablation hooks: generation with a direction projected out of every
layer's residual stream, against plain generation.

    nice -n 10 .venv/bin/python benchmarks/bench_audit_hooks.py [--items 64] [--repeats 5]
    nice -n 10 .venv/bin/python benchmarks/bench_audit_hooks.py --threads 1 --cpu-time

Both paths greedily answer the same forget questions (batch 32, 24 new tokens, the audit's
defaults) with the embedded model; the ablated path runs inside `auditing.measure.ablated`
with a random direction at every decoder layer (one hook per layer, at every position of
every forward pass: the prompt pass and each decoding step). The paths take turns on each
batch after a warm-up, so load from other jobs hits both alike; the medians of the per-batch
times are compared. Bound: ablated/plain <= 1.10.

Measured (2026-11-30, `--threads 1 --cpu-time --repeats 3`, 2 cores shared with a notebook
run): plain 179 ms, ablated 179 ms per batch of 32; ratio 1.002.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import asru_lab as al
from asru_lab.auditing.measure import ablated
from asru_lab.generation import generate_batch

OVERHEAD_BOUND = 1.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    lm, bench = al.load_model(), al.load_benchmark()
    items = bench.questions("forget", "qa")[: args.items]
    gen = torch.Generator().manual_seed(0)
    directions = {k: torch.randn(lm.hidden_size, generator=gen) for k in range(lm.num_layers)}
    batches = [items[s : s + 32] for s in range(0, len(items), 32)]

    def answer(batch) -> list[str]:
        return generate_batch(
            lm, bench.images(batch), [i.question for i in batch], max_new_tokens=24
        )

    times: dict[str, list[float]] = {"plain": [], "ablated": []}
    answer(batches[0])  # warm-up
    with ablated(lm, directions):
        answer(batches[0])
    for _ in range(args.repeats):
        for batch in batches:
            for path in ("plain", "ablated"):
                start = clock()
                if path == "plain":
                    answer(batch)
                else:
                    with ablated(lm, directions):
                        answer(batch)
                times[path].append(clock() - start)
    plain, hooked = (statistics.median(times[p]) for p in ("plain", "ablated"))
    ratio = hooked / plain
    print(f"plain generation:   {plain * 1000:.0f} ms per batch of 32 (median)")
    print(f"ablated generation: {hooked * 1000:.0f} ms per batch of 32 (median)")
    verdict = "ok" if ratio <= OVERHEAD_BOUND else "OVER THE BOUND"
    print(f"ratio ablated/plain: {ratio:.3f} (bound {OVERHEAD_BOUND}) {verdict}")


if __name__ == "__main__":
    main()
