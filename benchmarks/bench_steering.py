"""Cost of steering: generation under `SteeringProbe.apply` (plain forward hooks) vs plain.

    nice -n 10 .venv/bin/python benchmarks/bench_steering.py [--repeats 7]
    nice -n 10 .venv/bin/python benchmarks/bench_steering.py --threads 1 --cpu-time  # shared CPUs

Greedy generation of exactly 24 new tokens (`min_new_tokens = max_new_tokens = 24`, so steered
and plain answers cost the same number of decoding steps) for the first 64 forget QA items, in
batches of 32, with the probe's hook on layer 3: ungated and gated (a random
`MemorisationGate`, its bias set so that it fires for about half the rows), at positions "last"
and "all". The direction is random with norm 1 (alpha 2), small enough that answers stay
normal. Each batch runs under every configuration per round, in rotating order, after a
warm-up; a configuration's time is the sum over batches of its median time. Headline: the
probe's default use, gated at positions "last". Bound: steered/plain <= 1.10.

The hook's own work (cProfile) is about 1 ms per 24-token batch ("last") to 6 ms ("all") out of
~700 ms; ratios far from 1 come from other jobs on the cores, not from the probe.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

import asru_lab as al
from asru_lab.generation import encode, generate_batch
from asru_lab.probe import MemorisationGate, SteeringProbe

# wall time; `--cpu-time` switches to this process's CPU time (all threads), steadier than
# wall time when other jobs share the cores, if torch runs one thread (`--threads 1`)
CLOCK = time.perf_counter
BOUND = 1.10
TOKENS = 24
LAYER = 3
HEADLINE = "gated/last"


def main(n_items: int = 64, batch_size: int = 32, repeats: int = 7) -> float:
    lm = al.load_model()
    bench = al.load_benchmark()
    items = bench.split("forget", "qa")[:n_items]
    images = [bench.load_image(i.image) if i.image else None for i in items]
    questions = [i.question for i in items]
    batches = [
        (images[s : s + batch_size], questions[s : s + batch_size])
        for s in range(0, n_items, batch_size)
    ]

    g = torch.Generator().manual_seed(0)
    direction = torch.randn(lm.hidden_size, generator=g)
    direction /= direction.norm()
    gate = MemorisationGate(
        weight=torch.randn(3, lm.hidden_size, generator=g) * 0.01, bias=0.0, threshold=0.5
    )
    probe = SteeringProbe(
        direction, LAYER, lm.fingerprint(), alpha=2.0, positions="last", gate=gate
    )

    # calibrate the gate's bias on the first batch so that it fires for about half the rows
    with torch.no_grad():  # hidden_states[L + 1] is layer L's output (L < last layer)
        states = lm.model(**encode(lm, *batches[0]), output_hidden_states=True).hidden_states
        tail = states[LAYER + 1][:, -gate.tokens :, :]
        logits = (tail.float() * gate.weight).sum((-2, -1))  # what the gate adds its bias to
        gate.bias = -float(logits.median())
        fire = gate.read(states[LAYER + 1]).float().mean().item()

    configs = {"plain": None}
    for gated in (False, True):
        for positions in ("last", "all"):
            configs[f"{'gated' if gated else 'ungated'}/{positions}"] = (gated, positions)

    def run(name: str, batch: int) -> list[str]:
        """One batch's answers under configuration `name` (the probe applied around it)."""
        cfg = configs[name]
        ctx = nullcontext() if cfg is None else probe.apply(lm, gated=cfg[0], positions=cfg[1])
        with ctx:
            imgs, qs = batches[batch]
            return generate_batch(lm, imgs, qs, min_new_tokens=TOKENS, max_new_tokens=TOKENS)

    # warm-up; the answers show that steering is active and that lengths are fixed
    answers = {name: [a for b in range(len(batches)) for a in run(name, b)] for name in configs}
    print(
        f"torch threads {torch.get_num_threads()}, clock {CLOCK.__name__}; {n_items} forget items "
        f"({sum(i is None for i in images)} text-only), batch {batch_size}, {TOKENS} new tokens, "
        f"layer {LAYER}, |alpha v| = 2; gate fires for {fire:.0%} of the first batch"
    )
    for name in configs:
        changed = sum(a != b for a, b in zip(answers[name], answers["plain"], strict=True))
        print(f"  {name:<13} answers changed by steering: {changed}/{n_items}")

    # each batch is timed on its own, the configurations taking turns (order rotating), so that
    # all see the same load; a configuration's time is the sum over batches of its median
    names = list(configs)
    times = {name: [[] for _ in batches] for name in names}
    for r in range(repeats):
        for b in range(len(batches)):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = CLOCK()
                run(name, b)
                times[name][b].append(CLOCK() - t0)
    med = {name: sum(statistics.median(ts) for ts in per) for name, per in times.items()}
    low = {name: sum(min(ts) for ts in per) for name, per in times.items()}
    print(f"generation of {n_items} answers, {repeats} runs of each batch (seconds):")
    for name, per in times.items():
        runs = " ".join(f"{sum(ts):.3f}" for ts in zip(*per, strict=True))
        ratio = med[name] / med["plain"]
        print(f"  {name:<13} {runs}  median {med[name]:.3f}  ratio {ratio:.3f}")
    ratio = med[HEADLINE] / med["plain"]
    ratio_min = low[HEADLINE] / low["plain"]
    print(f"{HEADLINE}/plain of the minimum times (less sensitive to load): {ratio_min:.3f}")
    worst = max(med[n] / med["plain"] for n in names[1:])
    ok = "meets" if ratio <= BOUND else "MISSES"
    print(f"worst configuration ratio: {worst:.3f}")
    print(f"RATIO steered ({HEADLINE})/plain generation: {ratio:.3f} ({ok} bound <= {BOUND})")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--cpu-time", action="store_true", help="time CPU, not wall, seconds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK = time.process_time
    main(args.items, args.batch_size, args.repeats)
