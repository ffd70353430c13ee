"""Cost of MMUnlearner against gradient ascent (GA) on the same data, and the share of weights
its saliency masks keep on each side.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_mmunlearner.py [--repeats 3]

Data: `--max-forget` forget generation questions of the embedded benchmark (seeded sample, the
same for both methods), `--epochs` epochs of batch `--batch-size`. GA runs with its default
config otherwise (LoRA r 16 on the language model); MMUnlearner with its own (top 10 % of each
side by forget/retain Fisher ratio, full training of those weights, as many retain examples as
forget ones). MMUnlearner pays for two gradient passes (saliency) and a retain batch per step;
its time is split into saliency and training from its record.

Each method runs `--repeats` times in rotating order; a time is the median wall time of the
whole `unlearn` call. Printed: both times, the ratio MMUnlearner / GA (reported, no bound) and
per side the weights the mask keeps (share, count, parameters touched).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import asru_lab as al
from asru_lab.baselines import METHODS, unlearn

CLOCK = time.perf_counter


def main(max_forget: int, epochs: int, batch_size: int, repeats: int) -> dict:
    lm = al.load_model()
    bench = al.load_benchmark()
    shared = {"max_forget": max_forget, "epochs": epochs, "batch_size": batch_size}
    configs = {
        name: dataclasses.replace(METHODS[name].default_config(), **shared, progress=False)
        for name in ("ga", "mmunlearner")
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    last = {}
    names = list(configs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = CLOCK()
            last[name] = unlearn(lm, bench, name, configs[name])
            times[name].append(CLOCK() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    assert (
        last["ga"].record["examples"]["forget"] == last["mmunlearner"].record["examples"]["forget"]
    )
    saliency = last["mmunlearner"].record["saliency"]
    print(
        f"data: {last['ga'].record['examples']['forget']} forget examples "
        f"(+ {last['mmunlearner'].record['examples']['retain']} retain for MMUnlearner), "
        f"{epochs} epochs of batch {batch_size}, {torch.get_num_threads()} thread(s)"
    )
    print(f"GA:          {median['ga']:.2f} s")
    print(
        f"MMUnlearner: {median['mmunlearner']:.2f} s (last run: saliency "
        f"{saliency['seconds']:.2f} s, training {last['mmunlearner'].record['seconds']:.2f} s)"
    )
    ratio = median["mmunlearner"] / median["ga"]
    print(f"ratio MMUnlearner / GA: {ratio:.2f} (reported)")
    for side, stats in saliency["sides"].items():
        print(
            f"mask {side}: keeps {stats['share']:.4f} of the weights "
            f"({stats['kept']} of {stats['total']}, in {len(stats['parameters'])} parameters)"
        )
    return {"ratio": ratio, "shares": {s: v["share"] for s, v in saliency["sides"].items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-forget", type=int, default=64, help="forget examples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(args.max_forget, args.epochs, args.batch_size, args.repeats)
