"""Cost of stage 1.2 (`redirect`): the exact solver against the forward pass it needs and
against SGD, and what stopping the forward pass at the loss site buys SGD.

    nice -n 10 .venv/bin/python benchmarks/bench_redirect.py [--probe DIR] [--repeats 3]

Data: every forget generation question of the embedded benchmark (492) and as many retain
ones (seeded, spread over people), prompt + reference answer, the same for every solver.
The probe is `--probe DIR` or a quick diff-in-means probe (`locate.quick_probe`, at the top
layer); the timings do not depend on the direction. Three ratios, each printed with its bound:

1. closed form (the whole `redirect` call) / one forward-to-L pass over the same data
   (processor encoding + forward stopped at the probe's site, batches of 32): <= 1.5.
2. SGD, 3 epochs (AdamW, batch 2, separate forget and retain steps) with full forward passes
   / closed form: >= 10.
3. SGD with early exit vs without, the training loop of one epoch (its record's
   `seconds.train`), at layer 1 (lower half) and at the probe's layer: >= 1.3 at layer 1; the
   probe's layer (the top one here) is reported.

Each configuration is timed `--repeats` times in rotating order; a time is the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import asru_lab as al
from asru_lab.stages.locate import quick_probe
from asru_lab.stages.redirect import RedirectConfig, redirect
from asru_lab.stages.redirect_data import encode_batch, loss_site, prepare_data, read_at

CLOCK = time.perf_counter
BOUNDS = {"closed/forward": 1.5, "sgd/closed": 10.0, "early exit (lower half)": 1.3}


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def forward_pass(lm, probe, bench, config) -> None:
    """One forward-to-L pass over the training data, as the closed form reads it."""
    data = prepare_data(lm, bench, config)
    site = loss_site(lm, probe)
    items = data.forget + data.retain
    with torch.no_grad():
        for s in range(0, len(items), config.capture_batch_size):
            batch = encode_batch(lm, bench, data, items[s : s + config.capture_batch_size], "last")
            read_at(lm.model, batch.inputs, site.module(lm), site.io, stop=True)


def median_times(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each run (a callable returning its own seconds), in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(runs[name]())
    return {name: statistics.median(t) for name, t in times.items()}


def train_seconds(lm, probe, bench, config) -> float:
    """The SGD loop's own time (the record's `seconds.train`): without the data preparation
    and the final objective pass, which cost the same with and without early exit."""
    return redirect(lm, probe, bench, config)[1]["seconds"]["train"]


def main(probe_dir: str | None, max_retain: int, repeats: int, sgd_epochs: int) -> dict:
    lm = al.load_model()
    bench = al.load_benchmark()
    probe = al.load_probe(probe_dir) if probe_dir else quick_probe(lm, bench)
    base = RedirectConfig(max_retain=max_retain, progress=False)
    print(f"probe: layer {probe.layer}; data: {len(prepare_data(lm, bench, base).forget)} forget")
    results = {}

    exact = median_times(
        {
            "closed form": lambda: timed(lambda: redirect(lm, probe, bench, base)),
            "forward to L": lambda: timed(lambda: forward_pass(lm, probe, bench, base)),
        },
        repeats,
    )
    results["closed/forward"] = exact["closed form"] / exact["forward to L"]
    print(
        f"closed form {exact['closed form']:.2f} s, one forward-to-L pass "
        f"{exact['forward to L']:.2f} s"
    )

    sgd = RedirectConfig(
        max_retain=max_retain, solver="sgd", epochs=sgd_epochs, early_exit=False, progress=False
    )
    sgd_time = timed(lambda: redirect(lm, probe, bench, sgd))
    results["sgd/closed"] = sgd_time / exact["closed form"]
    print(f"SGD {sgd_epochs} epochs, full forward passes: {sgd_time:.1f} s")

    for layer in sorted({1, probe.layer}):
        moved = probe.at_layer(lm, layer) if layer != probe.layer else probe
        one = RedirectConfig(max_retain=max_retain, solver="sgd", epochs=1, progress=False)
        off = RedirectConfig(
            max_retain=max_retain, solver="sgd", epochs=1, early_exit=False, progress=False
        )
        t = median_times(
            {
                "early exit": lambda m=moved, c=one: train_seconds(lm, m, bench, c),
                "full": lambda m=moved, c=off: train_seconds(lm, m, bench, c),
            },
            repeats,
        )
        name = "early exit (lower half)" if layer == 1 else f"early exit (layer {layer})"
        results[name] = t["full"] / t["early exit"]
        print(
            f"SGD 1 epoch at layer {layer}: early exit {t['early exit']:.2f} s, "
            f"full {t['full']:.2f} s"
        )

    print()
    for name, ratio in results.items():
        bound = BOUNDS.get(name)
        if bound is None:
            verdict = "(reported)"
        else:
            ok = ratio <= bound if name == "closed/forward" else ratio >= bound
            sign = "<=" if name == "closed/forward" else ">="
            verdict = f"(bound {sign} {bound}: {'ok' if ok else 'MISSED'})"
        print(f"ratio {name}: {ratio:.2f} {verdict}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", default=None, help="probe dir (default: a quick probe)")
    parser.add_argument("--max-retain", type=int, default=492, help="retain examples")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sgd-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(args.probe, args.max_retain, args.repeats, args.sgd_epochs)
