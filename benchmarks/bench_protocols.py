"""Cost of the evaluation protocols: wall time of `evaluate` under `mllmu` and `asru_paper`, each
over `asru_lab`'s, on the same embedded model and the same seeded item sample.

    .venv/bin/python benchmarks/bench_protocols.py [--max-items 16] [--repeats 2]

The protocols take turns (`asru_lab`, `mllmu`, `asru_paper`, again ...) so that machine noise
falls on all of them; the best of `--repeats` is compared. `mllmu` costs more by design: every
task decodes up to 50 new tokens (asru_lab: 40 / 12 / 12) and each multiple-choice prompt carries
a few-shot example (with its image, for image questions). `asru_paper` asks only the image
questions, so it may cost less. Nothing is bounded here: the ratio is reported, not judged.
"""

from __future__ import annotations

import argparse
import time

import asru_lab as al

PROTOCOLS = ("asru_lab", "mllmu", "asru_paper")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-items", type=int, default=16, help="per split and task")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    lm, bench = al.load_model(), al.load_benchmark()
    best = {p: float("inf") for p in PROTOCOLS}
    items = {}
    for _ in range(args.repeats):
        for protocol in PROTOCOLS:
            config = al.EvalConfig(max_items=args.max_items, protocol=protocol, progress=False)
            started = time.perf_counter()
            report = al.evaluate(lm, bench, config)
            best[protocol] = min(best[protocol], time.perf_counter() - started)
            items[protocol] = sum(sum(c.values()) for c in report.meta["items"].values())
    for protocol in PROTOCOLS:
        print(f"{protocol:<11} {best[protocol]:7.1f} s  ({items[protocol]} items)")
    for protocol in PROTOCOLS[1:]:
        print(f"{protocol} / asru_lab: {best[protocol] / best['asru_lab']:.2f}x")


if __name__ == "__main__":
    main()
