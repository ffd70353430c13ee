"""Compute against robustness for re-growing by distillation (issue #32, item 5): per alpha, the
distilled student's union leak under the audit's cheap attacks, against what it cost as a
fraction of the retrain oracle's build.

    # one alpha per process (run two side by side with one thread each on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compute_robustness.py \\
        --teacher T --alpha 0.6 --out runs/compute
    # then draw every point found under --out (--student S audits a student saved before)
    .venv/bin/python benchmarks/compute_robustness.py --draw --out runs/compute

The teacher is a saved unlearned model (`asru-lab unlearn --method asru --out T`); its
training seconds come from its `unlearn.json`. Each alpha: `distill` with asru_undo's pool, stop
rule and rate decay (`UndoConfig().distill`: the rate decays to 1e-4; `--min-lr 7e-4` gives the
near-constant rate of the first points), `--steps` at most, the student saved to
`OUT/alpha-A/`, then the cheap audit (`AuditConfig(attacks=("prefill", "ablation",
"mcq_likelihood"))`, 64 questions per split) with the shipped retrain oracle under the
identical attacks; `OUT/alpha-A.json` holds the point. Compute = (teacher + distillation
seconds) / the oracle's build seconds as recorded in its `asru_lab_model.json` (2 628 s on 2
threads of this kind of machine): printed per point as that ratio. The times of one-thread runs
side by side are not the 2-thread build's: the ratio is printed with the threads each used, and
the README says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import asru_lab as al
from asru_lab.artifacts import write_json_atomic
from asru_lab.auditing import AuditConfig, audit, load_oracle
from asru_lab.baselines import UNLEARN_FILE, Unlearned, save_unlearned
from asru_lab.baselines.undo import UndoConfig
from asru_lab.stages.distill import distill

CHEAP = ("prefill", "ablation", "mcq_likelihood")


def _seconds(record: dict) -> float:
    """A saved method's training seconds, whatever its record calls them."""
    for key in ("wall_seconds", "seconds"):
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dict) and value:
            return float(
                value.get("all") or sum(v for v in value.values() if isinstance(v, int | float))
            )
    raise SystemExit(f"the teacher's {UNLEARN_FILE} records no training seconds")


def run(
    teacher_dir: Path,
    alpha: float,
    steps: int,
    seed: int,
    out: Path,
    student: Path | None = None,
    name: str = "",
    label: str = "",
    min_lr: float | None = None,
) -> dict:
    """Distil (or, with `student`, take the student a run saved), audit, save the point
    (`name` tells apart points of one alpha and seed run otherwise, `label` says how)."""
    teacher = al.load_model(teacher_dir)
    bench = al.load_benchmark()
    oracle = load_oracle()
    teacher_seconds = _seconds(json.loads((teacher_dir / UNLEARN_FILE).read_text()))
    build_seconds = float(oracle.info["build"]["seconds"])
    stem = f"alpha-{alpha:g}-{name}-seed{seed}" if name else f"alpha-{alpha:g}-seed{seed}"
    student_dir = out / stem
    if student is None:
        rate = {} if min_lr is None else {"min_lr": min_lr}
        config = dataclasses.replace(
            UndoConfig().distill, alpha=alpha, steps=steps, seed=seed, **rate
        )
        grown = distill(teacher, bench, config)
        record = {"method": "distill", "teacher": str(teacher_dir), **grown.record(config)}
        save_unlearned(Unlearned("distill", grown.model, record), student_dir, overwrite=True)
        model = grown.model
    else:
        student_dir = student
        record = json.loads((student / UNLEARN_FILE).read_text())
        model = al.load_model(student)
        if record["config"]["alpha"] != alpha or record["config"]["seed"] != seed:
            raise SystemExit(
                f"{student} was distilled at α {record['config']['alpha']}, seed "
                f"{record['config']['seed']}, not α {alpha:g}, seed {seed}"
            )
    history = record["history"]
    started = time.perf_counter()
    # the reference (the model before unlearning) as `asru-lab audit` takes it by default:
    # direction ablation's first estimate reads it
    report = audit(
        model, bench, reference=al.load_model(), oracle=oracle, config=AuditConfig(attacks=CHEAP)
    )
    cost = teacher_seconds + record["seconds"]
    point = {
        "label": label or f"α {alpha:g}",
        "alpha": alpha,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "teacher_seconds": teacher_seconds,
        "distill_seconds": record["seconds"],
        "steps": record["steps"],
        "stopped": record["stopped"],
        "last_check": history[-1] if history else {},
        "history": history,
        "teacher_checks": record["teacher"],
        "oracle_build_seconds": build_seconds,
        "compute": cost / build_seconds,
        "audit_seconds": time.perf_counter() - started,
        "audit": {"results": report.results, "summary": report.summary},
        "student": str(student_dir),
    }
    write_json_atomic(out / f"{stem}.json", point)
    union = report.results["union"]["forget"]
    theirs = report.results.get("oracle_union", {}).get("forget", {})
    checks = " / ".join(
        f"{point['last_check'].get(k, float('nan')):.2f}"
        for k in ("retain_recall", "retain_mcq", "general_recall")
    )
    print(
        f"α {alpha:g} (seed {seed}, {point['threads']} thread(s)): {record['steps']} steps "
        f"({'stopped' if record['stopped'] else 'not stopped'}), retain recall / MCQ / pictures "
        f"{checks}; "
        f"union {union['leak']:.2f} [{union['lo']:.2f}, {union['hi']:.2f}] "
        f"(oracle {theirs.get('leak', float('nan')):.2f}); compute {cost:.0f} s / "
        f"{build_seconds:.0f} s = {point['compute']:.2f} of the oracle's build"
    )
    return point


def draw(out: Path) -> None:
    from asru_lab.viz.audit import compute_robustness_chart
    from asru_lab.viz.pages import save_figure

    points = [json.loads(p.read_text()) for p in sorted(out.glob("alpha-*.json"))]
    if not points:
        raise SystemExit(f"no point under {out}: run with --teacher and --alpha first")
    points.sort(key=lambda p: p["compute"])
    for p in points:
        union = p["audit"]["results"]["union"]["forget"]
        print(
            f"{p['label']} seed {p['seed']}: compute {p['compute']:.2f}, union {union['leak']:.2f}"
        )
    written = save_figure(compute_robustness_chart(points), out / "compute_robustness")
    print(f"wrote {', '.join(written)} in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-lr", type=float, help="the rate the cosine decays to (default: asru_undo's, 1e-4)"
    )
    parser.add_argument("--draw", action="store_true", help="draw the points found under --out")
    parser.add_argument(
        "--student", type=Path, help="audit this saved student (of --alpha, --seed) instead"
    )
    parser.add_argument("--name", default="", help="a name in the point's file name")
    parser.add_argument("--label", default="", help="the point's label (default: its alpha)")
    args = parser.parse_args()
    if args.draw:
        draw(args.out)
        return
    if args.teacher is None:
        parser.error("--teacher is needed to measure a point (or --draw)")
    run(
        args.teacher,
        args.alpha,
        args.steps,
        args.seed,
        args.out,
        args.student,
        args.name,
        args.label,
        args.min_lr,
    )


if __name__ == "__main__":
    main()
