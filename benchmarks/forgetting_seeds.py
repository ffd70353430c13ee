"""Training seeds of one forgetting method (issue #32's acceptance: three seeds, the worst
reported): per seed, the full audit's headline numbers against the retrain oracle and the
evaluation's keep numbers, gathered into one file, printed as a table with the worst seed.

    # per seed S (the same forget set, split seed 0; only the training seed varies)
    asru-lab unlearn --method asru --probe P --split-seed 0 --seed S --out T$S
    asru-lab distill --model T$S --alpha 0.4 --min-lr 1e-4 --max-prompts 20000 --steps 6000 \\
        --eval-every 500 --split-seed 0 --seed S --out U$S
    asru-lab evaluate --model U$S --out U$S.eval.json
    asru-lab audit --model U$S --out U$S.audit
    # then
    .venv/bin/python benchmarks/forgetting_seeds.py --label "..." \\
        --run U0 U0.eval.json U0.audit --run U1 ... --out figures/forgetting/seeds.json \\
        --methods figures/audit/cache/ratio-0.1   # + hidden_or_forgotten.html/png beside it

Each `--run` is a saved student (its `unlearn.json`: seed, steps, seconds, its teacher's),
its evaluation JSON and its audit folder (`audit.json`; the answers in `items.jsonl` are not
copied). The file keeps, per seed, the numbers the README's table shows and every attack's leak
with the oracle's under the identical attack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asru_lab.artifacts import write_json_atomic
from asru_lab.baselines import UNLEARN_FILE

# audit summary numbers kept per seed (the README's columns and the acceptance's)
AUDIT_KEYS = (
    "union_leak", "union_lo", "union_hi", "union_n", "oracle_union_leak", "union_excess",
    "excess_max", "excess_by", "forget_leak", "prefill_leak", "ablation_leak",
    "sampling_leak_at_k", "quantize_leak_int4", "soft_prompt_leak", "relearn_worst_leak",
    "relearn_worst_taught_leak", "relearn_auc", "relearn_oracle_auc", "lens_top1_fact",
    "lens_top1_chance", "probe_acc_best", "probe_acc_chance", "mia_auc", "mia_fact_auc",
    "mia_privleak", "mcq_acc", "mcq_oracle_acc", "mcq_chance",
)  # fmt: skip


def _keep(evaluation: dict) -> dict:
    """The issue's keep numbers from an evaluation JSON (asru_lab protocol)."""
    splits = evaluation["splits"]
    return {
        "retain_recall": splits["retain"]["leak_rate"],
        "retain_mcq": splits["retain"]["mcq_acc"],
        "general_recall": splits["general"]["leak_rate"],
        "unseen_refusal": splits["unseen"]["refusal_rate"],
        "forget_leak": splits["forget"]["leak_rate"],
        "test_leak": splits["test"]["leak_rate"],
        "forget_contextual_score": splits["forget"]["quality"]["contextual_refusal"],
        "forget_degenerate": splits["forget"]["quality"]["categories"].get("degenerate"),
    }


def gather(student: Path, evaluation: Path, audit_dir: Path) -> dict:
    record = json.loads((student / UNLEARN_FILE).read_text())
    report = json.loads((audit_dir / "audit.json").read_text())
    summary, results = report["summary"], report["results"]
    leaks = {attack: row["forget"] for attack, row in results["leaks"].items() if row.get("forget")}
    return {
        "seed": record["config"]["seed"],
        "student": str(student),
        "steps": record["steps"],
        "stopped": record["stopped"],
        "distill_seconds": record["seconds"],
        "teacher_checks": record.get("teacher"),
        "audit": {k: summary.get(k) for k in AUDIT_KEYS},
        "union": results["union"]["forget"],
        "oracle_union": results.get("oracle_union", {}).get("forget"),
        "leaks": leaks,
        "audit_seconds": report.get("timing", {}).get("total"),
        "keep": _keep(json.loads(evaluation.read_text())),
    }


def _f(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(runs: list[dict]) -> str:
    """A summary table, one line per seed (the README's table adds more columns from the file)."""
    head = (
        "| seed | steps | union [95 % CI] (oracle) | worst excess | prefill | lens top-1 | "
        "MIA AUC (fact) | retain recall / MCQ | pictures | unseen refused | forget / test leak |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        a, k = run["audit"], run["keep"]
        lines.append(
            f"| {run['seed']} | {run['steps']}{'' if run['stopped'] else ' (not stopped)'} | "
            f"{_f(a['union_leak'])} [{_f(a['union_lo'])}, {_f(a['union_hi'])}] "
            f"({_f(a['oracle_union_leak'])}) | {_f(a['excess_max'])} ({a['excess_by']}) | "
            f"{_f(a['prefill_leak'])} | {_f(a['lens_top1_fact'])} | {_f(a['mia_auc'])} "
            f"({_f(a['mia_fact_auc'])}) | {_f(k['retain_recall'])} / {_f(k['retain_mcq'])} | "
            f"{_f(k['general_recall'])} | {_f(k['unseen_refusal'])} | {_f(k['forget_leak'])} / "
            f"{_f(k['test_leak'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        nargs=3,
        action="append",
        type=Path,
        required=True,
        metavar=("STUDENT", "EVAL_JSON", "AUDIT_DIR"),
        help="one seed: the saved student, its evaluation JSON, its audit folder",
    )
    parser.add_argument("--label", required=True, help="what the method is, for the file")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    parser.add_argument(
        "--methods",
        type=Path,
        help="a folder of saved audits (`reproduce --audit`'s cache, `<method>-*.audit-*.json`): "
        "draw the hidden-or-forgotten figure of those methods and every seed beside --out",
    )
    args = parser.parse_args()
    runs = sorted((gather(*run) for run in args.run), key=lambda r: r["seed"])
    if len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit(f"two runs of one seed: {[r['seed'] for r in runs]}")
    worst = max(runs, key=lambda r: r["audit"]["union_leak"])
    write_json_atomic(args.out, {"label": args.label, "runs": runs, "worst_seed": worst["seed"]})
    print(table(runs))
    print(
        f"worst seed {worst['seed']}: union {_f(worst['audit']['union_leak'])} "
        f"[{_f(worst['audit']['union_lo'])}, {_f(worst['audit']['union_hi'])}] against the "
        f"oracle's {_f(worst['audit']['oracle_union_leak'])}; wrote {args.out}"
    )
    if args.methods:
        written = draw(runs, args.methods, args.out.parent / "hidden_or_forgotten")
        print(f"wrote {', '.join(written)} in {args.out.parent}")


def draw(runs: list[dict], methods: Path, stem: Path) -> list[str]:
    """Hidden or forgotten: each saved method's audit (not the oracle's own: its star comes
    from the others' `oracle_union`) and each seed's student, x its leak with no attack, y its
    union under every attack."""
    from asru_lab.viz.audit import hidden_or_forgotten_chart
    from asru_lab.viz.pages import save_figure

    data = {}
    for path in sorted(methods.glob("*.audit-*.json")):
        name = path.name.split("-")[0]
        if name != "oracle":
            data[name] = json.loads(path.read_text())
    if not data:
        raise SystemExit(f"no saved audit (<method>-*.audit-*.json) in {methods}")
    for run in runs:
        data[f"student, seed {run['seed']}"] = {
            "results": {
                "leaks": {attack: {"forget": row} for attack, row in run["leaks"].items()},
                "union": {"forget": run["union"]},
                "oracle_union": {"forget": run["oracle_union"]},
            }
        }
    return save_figure(hidden_or_forgotten_chart(data), stem)


if __name__ == "__main__":
    main()
