"""`locate`'s capture step: one forward pass per batch for every position (now) against one
capture pass per position and set (before #19), on the same sets, in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_locate.py [--model DIR] [--full]

Both read the embedded model's default locate sets (512 forget / 1536 retain / the refused
unseen faces, a quarter held out; the gate's multiple-choice and fill-in sets) at every layer
and at the default positions (last, -2 .. -5, prompt; the gate's last 3 tokens). "per
position" repeats what `measure` did: for each position, a pass over every fit set, the
directions, a pass over every held-out set, and for the gate's tokens the other-task sets.
"one pass" is `stages.locate.measure`. Their separability tables must agree exactly. Prints
both times and the ratio; `--full` also times a whole default `locate` (sweep included).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asru_lab as al  # noqa: E402
from asru_lab.capture import capture, check_layers  # noqa: E402
from asru_lab.directions import auroc, knowledge_absence_direction, memorisation_direction  # noqa: E402
from asru_lab.evaluation.judge import ClosedWorldJudge  # noqa: E402
from asru_lab.stages.locate import (  # noqa: E402
    LocateConfig,
    _pos_key,
    _pos_label,
    build_sets,
    measure,
)
from asru_lab.stages.locate_sweep import gate_positions  # noqa: E402


def per_position(lm, bench, sets, config, layers) -> dict:
    """The capture passes `measure` made before #19 (one per position and set)."""
    tokens = gate_positions(config)
    positions = list(dict.fromkeys([-1, *[_pos_key(p) for p in config.heatmap_positions], *tokens]))
    kw = dict(site=config.site, batch_size=config.batch_size, progress=False)
    separability = {}
    for position in positions:
        gate = layers if position in tokens else ()
        fit = {
            n: capture(
                lm, bench, sets.fit[n], layers=layers, keep_raw=gate, position=position, **kw
            )
            for n in ("forget", "retain", "target")
        }
        mem = memorisation_direction(fit["forget"], fit["retain"])
        absence = knowledge_absence_direction(fit["target"], fit["forget"])
        both = {k: torch.stack([mem[k], absence[k]]) for k in layers}
        held = {
            n: capture(
                lm,
                bench,
                sets.held[n],
                layers=layers,
                keep_raw=gate,
                directions=both,
                position=position,
                **kw,
            )  # fmt: skip
            for n in ("forget", "retain", "target")
        }
        p = [held[n].projections for n in ("forget", "retain", "target")]
        separability[_pos_label(position)] = {
            "forget_vs_retain": [auroc(p[0][k][:, 0], p[1][k][:, 0]) for k in layers],
            "forget_vs_unseen": [auroc(p[2][k][:, 1], p[0][k][:, 1]) for k in layers],
        }
        if gate:
            for part in ("fit", "held"):
                for name in ("forget_other", "retain_other"):
                    capture(
                        lm, bench, getattr(sets, part)[name], layers=gate, keep_raw=True,
                        position=position, **kw,
                    )  # fmt: skip
    return separability


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--full", action="store_true", help="also time a whole default locate")
    args = parser.parse_args()
    lm = al.load_model(args.model)
    bench = al.load_benchmark()
    config = LocateConfig(progress=False)
    layers = check_layers(lm, None)
    sets = build_sets(lm, bench, config, ClosedWorldJudge(bench))
    sizes = {k: len(v) for k, v in sets.fit.items()} | {
        f"{k} held": len(v) for k, v in sets.held.items()
    }
    print(f"# {lm.name}: {len(layers)} layers, sets {sizes}", flush=True)
    start = time.perf_counter()
    one = measure(lm, bench, sets, config, layers)
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    before = per_position(lm, bench, sets, config, layers)
    t_before = time.perf_counter() - start
    assert before == one.separability, "the two capture schemes disagree"
    print(f"per position (before): {t_before:.1f} s")
    print(f"one pass (now):        {t_one:.1f} s")
    print(f"ratio before / now:    {t_before / t_one:.2f}x (same separability tables)")
    if args.full:
        start = time.perf_counter()
        al.locate(lm, bench, config)
        print(f"whole default locate (now): {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
