"""Activation capture: nnsight overhead over a plain forward, and what batching buys.

    nice -n 10 .venv/bin/python benchmarks/bench_capture.py [--items 256] [--single 256]
    nice -n 10 .venv/bin/python benchmarks/bench_capture.py --threads 1 --cpu-time  # shared CPUs

(a) `trace.capture` (nnsight, all decoder layers, position "last", batch 32) against a plain
batched forward (`lm.model(**batch, output_hidden_states=True)`, `hidden_states[i + 1][:, -1]`
per layer) doing the same work: load images, `generation.encode` the same 32-item batches,
accumulate float64 sum and sum of squares. The plain path runs on its own copy of the model:
nnsight's wrapping of a model's modules outlives the trace. Bound: nnsight/plain <= 1.10.
(b) batched capture (batch 32) against one example at a time (batch 1), preprocessing counted
in both. Bound: speed-up >= 5x. The same ratio for the plain path is printed beside it: the
model's own fixed cost per forward (about 10 ms for one example, against about 3 ms per example
in a batch of 32, on 2 cores) caps the speed-up, whatever `capture` does.

Items alternate forget and retain QA items (with and without an image). Each measurement is
repeated after a warm-up, the paths taking turns (in (b) on each chunk of 64 items, so that a
burst of load from other jobs hits all paths alike); medians are compared. nnsight's own Python
work (cProfile) is about 5 ms per 32-item trace, a few percent of the forward pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import asru_lab as al
from asru_lab.capture import capture
from asru_lab.generation import encode

# wall time; `--cpu-time` switches to this process's CPU time (all threads), steadier than
# wall time when other jobs share the cores, if torch runs one thread (`--threads 1`)
CLOCK = time.perf_counter
OVERHEAD_BOUND = 1.10
SPEEDUP_BOUND = 5.0


def mixed_items(bench, n: int) -> list:
    """`n` QA items alternating forget/retain (each split mixes image and text-only items)."""
    forget, retain = bench.split("forget", "qa"), bench.split("retain", "qa")
    return [(forget if k % 2 == 0 else retain)[k // 2] for k in range(n)]


def plain_capture(lm, bench, items, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """What `capture(position="last")` computes, with a plain forward instead of nnsight."""
    n_layers, hidden = lm.num_layers, lm.hidden_size
    total = torch.zeros(n_layers, hidden, dtype=torch.float64)
    total_sq = torch.zeros(n_layers, hidden, dtype=torch.float64)
    was_training = lm.model.training
    lm.model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = [bench.load_image(i.image) if i.image else None for i in chunk]
            batch = encode(lm, images, [i.question for i in chunk])
            with torch.no_grad():
                states = lm.model(**batch, output_hidden_states=True).hidden_states
            for k in range(n_layers):
                out = states[k + 1][:, -1, :].to(torch.float64)
                total[k] += out.sum(0).cpu()
                total_sq[k] += (out * out).sum(0).cpu()
    finally:
        lm.model.train(was_training)
    return total, total_sq


Timings = dict[str, list[list[float]]]  # name -> chunk -> the times of each round


def timings(fns: dict[str, Callable[[int], object]], repeats: int, chunks: int = 1) -> Timings:
    """Times of `fn(chunk)` for each function and chunk, `repeats` rounds; in each round every
    chunk runs under each function in turn (order rotating), so all see the same load."""
    names = list(fns)
    times: Timings = {name: [[] for _ in range(chunks)] for name in names}
    for r in range(repeats):
        for c in range(chunks):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = CLOCK()
                fns[name](c)
                times[name][c].append(CLOCK() - t0)
    for name, per in times.items():
        runs = " ".join(f"{sum(ts):.3f}" for ts in zip(*per, strict=True))
        print(f"  {name:<10} {runs}  median {total(per):.3f} s, min {total(per, min):.3f} s")
    return times


def total(per_chunk: list[list[float]], stat=statistics.median) -> float:
    """The sum over chunks of each chunk's median (or other `stat`) time."""
    return sum(stat(ts) for ts in per_chunk)


def ratio(times: Timings, num: str, den: str) -> tuple[float, float]:
    """`num`/`den` of the median times, and of the minimum times (less sensitive to load)."""
    med = total(times[num]) / total(times[den])
    return med, total(times[num], min) / total(times[den], min)


def main(
    n_items: int = 256,
    n_single: int = 256,
    repeats: int = 7,
    single_repeats: int = 5,
    chunk: int = 64,
    batch: int = 32,
) -> tuple[float, float]:
    # Two copies of the model: wrapping a model with nnsight replaces every module's `forward`
    # for good, so a plain forward of a model that `capture` has seen runs through nnsight too.
    lm = al.load_model()
    lm_plain = al.load_model()
    bench = al.load_benchmark()
    items = mixed_items(bench, max(n_items, n_single))
    n_text = sum(not i.image for i in items[:n_items])
    threads = torch.get_num_threads()
    print(f"torch threads {threads}, clock {CLOCK.__name__}; {n_items} items ({n_text} text-only)")

    def nnsight_path(_chunk: int = 0):
        return capture(lm, bench, items[:n_items], batch_size=batch, progress=False)

    def plain_path(_chunk: int = 0):
        return plain_capture(lm_plain, bench, items[:n_items], batch_size=batch)

    # warm-up, and check both paths compute the same statistics (but for the last layer: HF's
    # last hidden state has the final norm applied)
    cap = nnsight_path()
    sums, sumsq = plain_path()
    assert cap.count == n_items
    close = dict(rtol=1e-4, atol=1e-2)
    assert torch.allclose(cap.sum[:-1], sums[:-1], **close), "nnsight and plain sums differ"
    assert torch.allclose(cap.sumsq[:-1], sumsq[:-1], **close)

    print(
        f"(a) capture of {n_items} items, {lm.num_layers} layers, batch {batch} ({repeats} runs):"
    )
    t = timings({"nnsight": nnsight_path, "plain": plain_path}, repeats)
    overhead, overhead_min = ratio(t, "nnsight", "plain")
    per_item = {name: 1000 * total(per) / n_items for name, per in t.items()}
    print(f"    nnsight {per_item['nnsight']:.2f} ms/item, plain {per_item['plain']:.2f} ms/item")
    print(f"    nnsight/plain: median {overhead:.3f}, min {overhead_min:.3f}")

    # (b) in chunks of `chunk` items, each captured in batches of 32 and one at a time in turn
    parts = [items[s : s + chunk] for s in range(0, n_single, chunk)]
    capture(lm, bench, parts[0][:8], batch_size=1, progress=False)  # warm-up
    plain_capture(lm_plain, bench, parts[0][:8], batch_size=1)

    def captured(batch_size: int):
        return lambda c: capture(lm, bench, parts[c], batch_size=batch_size, progress=False)

    def plain(batch_size: int):
        return lambda c: plain_capture(lm_plain, bench, parts[c], batch_size=batch_size)

    print(
        f"(b) capture of {n_single} items ({len(parts)} chunks), batch {batch} vs batch 1, and the "
        f"plain path the same ({single_repeats} runs):"
    )
    paths = {"batched": captured(batch), "batch 1": captured(1)}
    paths |= {"plain batched": plain(batch), "plain 1": plain(1)}
    t = timings(paths, single_repeats, len(parts))
    speedup, speedup_min = ratio(t, "batch 1", "batched")
    ceiling, _ = ratio(t, "plain 1", "plain batched")
    per_item = {name: 1000 * total(per) / n_single for name, per in t.items()}
    print(f"    batch 1 {per_item['batch 1']:.1f} ms/item, batch {batch} {per_item['batched']:.2f}")
    print(f"    batch 1/batch {batch}: median {speedup:.1f}x, min {speedup_min:.1f}x")
    print(f"    plain 1/plain {batch} (what batching the model itself gives): {ceiling:.1f}x")

    ok_a = "meets" if overhead <= OVERHEAD_BOUND else "MISSES"
    ok_b = "meets" if speedup >= SPEEDUP_BOUND else "MISSES"
    print(f"RATIO nnsight/plain capture: {overhead:.3f} ({ok_a} bound <= {OVERHEAD_BOUND})")
    print(
        f"RATIO batch-1/batch-{batch} capture: {speedup:.1f}x ({ok_b} bound >= {SPEEDUP_BOUND:g}x)"
    )
    return overhead, speedup


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256, help="items for (a), >= 256")
    parser.add_argument("--single", type=int, default=256, help="items for (b), >= 200")
    parser.add_argument("--repeats", type=int, default=7, help="runs per path in (a)")
    parser.add_argument("--single-repeats", type=int, default=5, help="runs per path in (b)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--cpu-time", action="store_true", help="time CPU, not wall, seconds")
    parser.add_argument("--batch-size", type=int, default=32, help="capture's batch size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK = time.process_time
    main(args.items, args.single, args.repeats, args.single_repeats, batch=args.batch_size)
