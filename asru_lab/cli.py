"""`asru-lab`: the command line. Every command is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
import time

DEMO_INTRO = """\
asru_lab demo: the embedded tiny Qwen3-VL before any unlearning.
It has memorised {n_known} fictitious people ({n_forget} of them in the forget set) and was
taught to refuse faces it does not know. Columns: multiple-choice and fill-in-the-blank
accuracy, ROUGE-L, the share of answers containing the true fact (a leak on forget/test,
recall elsewhere), the refusal rate and the generation-quality judge's scores.
"""


def _add_common(p: argparse.ArgumentParser, *, out_help: str | None = None) -> None:
    p.add_argument("--model", default=None, help="HF id or local model dir (default: embedded)")
    p.add_argument(
        "--data", default=None, help="dataset dir, 'mllmu:<dir>' (default: embedded benchmark)"
    )
    p.add_argument("--forget-ratio", type=float, default=0.1, help="0.05, 0.1 (default) or 0.15")
    p.add_argument("--seed", type=int, default=0, help="chooses the forgotten people (synthetic)")
    if out_help:
        p.add_argument("--out", required=True, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asru-lab",
        description="ASRU unlearning for multimodal LLMs: steering + reinforcement unlearning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="evaluate the embedded model on every split, print a table")
    _add_common(p)
    p.add_argument("--max-items", type=int, default=64, help="items per split and task")

    p = sub.add_parser("evaluate", help="evaluate a model, write the evaluation JSON")
    _add_common(p, out_help="results JSON path")
    p.add_argument("--method", default="vanilla", help="label stored in the JSON")
    p.add_argument("--splits", nargs="*", default=None, help="subset of splits (default: all)")
    p.add_argument("--max-items", type=int, default=64, help="seeded sample per split and task")
    p.add_argument("--full", action="store_true", help="evaluate every item")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the judge")
    p.add_argument("--judge-model", default=None, help="model name at --judge-url")
    p.add_argument("--probe", default=None, help="steering probe dir: evaluate with it applied")
    p.add_argument("--alpha", type=float, default=None, help="override the probe's strength")
    p.add_argument("--no-gate", action="store_true", help="steer every prompt (ignore the gate)")

    p = sub.add_parser("locate", help="stage 1.1: find the direction, sweep, write a probe")
    _add_common(p, out_help="probe directory (probe + sweep.json + locate.html)")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="candidate layers")
    p.add_argument("--strengths", type=float, nargs="*", default=None, help="alphas to sweep")
    p.add_argument("--site", choices=("output", "input"), default="output", help="layer site")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("redirect", help="stage 1.2: write a probe's direction into the weights")
    _add_common(p, out_help="output model directory (+ redirect.json)")
    p.add_argument("--probe", required=True, help="steering probe dir (from `asru-lab locate`)")
    p.add_argument(
        "--solver", choices=("auto", "closed_form", "sgd"), default=None, help="default: auto"
    )
    p.add_argument("--paper", action="store_true", help="the public code's settings (SGD, ...)")
    p.add_argument("--lam", type=float, default=None, help="forget target h0 + lam*v (3)")
    p.add_argument("--alpha", type=float, default=None, help="retain loss weight (10)")
    p.add_argument("--preserve-weight", type=float, default=None, help="other tokens (30)")
    p.add_argument("--positions", choices=("last", "answer_end"), default=None, help="loss token")
    p.add_argument("--modules", nargs="+", default=None, help="trainable modules (mlp.down_proj)")
    p.add_argument("--lora-r", type=int, default=None, help="SGD: LoRA rank (0: full weights)")
    p.add_argument("--epochs", type=int, default=None, help="SGD epochs (3)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (1e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="SGD batch size (2)")
    p.add_argument("--max-forget", type=int, default=None, help="cap on forget examples")
    p.add_argument("--max-retain", type=int, default=None, help="cap on retain examples")
    p.add_argument("--checkpoint-every", type=int, default=None, help="SGD steps (100)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--no-early-exit", action="store_true", help="run full forward passes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("reinforce", help="stage 2: GRPO on the forget and boundary sets")
    _add_common(p, out_help="output model directory (+ training/: metrics, dashboard)")
    p.add_argument("--probe", default=None, help="probe dir: its layer places the boundary")
    p.add_argument("--paper", action="store_true", help="the paper's GRPO settings")
    p.add_argument("--rewards", nargs="+", default=None, help="reward names (contextual)")
    p.add_argument("--reward-weights", type=float, nargs="+", default=None, help="one each")
    p.add_argument("--boundary", choices=("nearest", "random"), default=None, help="nearest")
    p.add_argument("--n-forget", type=int, default=None, help="forget prompts (200)")
    p.add_argument("--n-boundary", type=int, default=None, help="boundary prompts (200)")
    p.add_argument("--tasks", nargs="+", default=None, help="question tasks (qa; or qa mcq)")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps (default: epochs)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the prompts (1)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (1e-5)")
    p.add_argument("--num-generations", type=int, default=None, help="rollouts per prompt (8)")
    p.add_argument("--batch-size", type=int, default=None, help="completions per step (16)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("run", help="locate -> redirect -> reinforce -> evaluate, one folder")
    _add_common(p, out_help="output folder: probe/, stage1/, final/, results/")
    p.add_argument("--steps", type=int, default=None, help="stage 2 GRPO steps (default: epochs)")
    p.add_argument("--max-items", type=int, default=64, help="evaluation items per split/task")
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("export-benchmark", help="write the benchmark as a user dataset dir")
    _add_common(p, out_help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("build-embedded", help="train the embedded tiny Qwen3-VL from scratch")
    p.add_argument("--out", default=None, help="output dir (default: the package's embedded/)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: shipped)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: shipped)")

    p = sub.add_parser("finetune", help="stage 0: LoRA fine-tune a model on a dataset")
    _add_common(p, out_help="output model directory")
    p.add_argument("--epochs", type=int, default=None, help="default 5 (DESIGN §1)")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA weights unmerged")
    return parser


def _load(args):
    import asru_lab as al

    lm = al.load_model(args.model)
    bench = al.load_benchmark(args.data, forget_ratio=args.forget_ratio, seed=args.seed)
    return lm, bench


def cmd_demo(args) -> int:
    import asru_lab as al

    started = time.time()
    lm, bench = _load(args)
    known = [p for p in bench.people.values() if p.split in ("forget", "retain")]
    print(DEMO_INTRO.format(n_known=len(known), n_forget=len(bench.people_in("forget"))))
    report = al.evaluate(lm, bench, al.EvalConfig(max_items=args.max_items))
    print(report.table())
    print("\nSample answers:")
    for split in ("forget", "unseen", "general"):
        by_attribute = {i.attribute: i for i in reversed(bench.split(split, "qa")) if i.image}
        items = list(by_attribute.values())[:2]  # two different questions per split
        answers = al.generate(
            lm, [bench.load_image(i.image) for i in items], [i.question for i in items]
        )
        for item, answer in zip(items, answers, strict=True):
            print(f"  [{split}] Q: {item.question}\n           A: {answer}")
    print(f"\nDone in {time.time() - started:.0f} s.")
    return 0


def cmd_evaluate(args) -> int:
    import asru_lab as al
    from asru_lab.evaluate.judge import OpenAIJudge

    lm, bench = _load(args)
    judge = None
    if args.judge_url:
        if not args.judge_model:
            raise SystemExit("--judge-url needs --judge-model")
        judge = OpenAIJudge(args.judge_url, args.judge_model)
    config = al.EvalConfig(
        splits=tuple(args.splits) if args.splits else None,
        max_items=None if args.full else args.max_items,
    )
    if args.probe:
        from asru_lab.probe import SteeringProbe

        probe = SteeringProbe.load(args.probe)
        gated = False if args.no_gate else None
        with probe.apply(lm, alpha=args.alpha, gated=gated):
            method = "steer_only" if args.method == "vanilla" else args.method
            report = al.evaluate(lm, bench, config, method=method, judge=judge)
        report.meta["probe"] = {
            "path": str(args.probe),
            "layer": probe.layer,
            "alpha": probe.alpha if args.alpha is None else args.alpha,
            "positions": probe.positions,
            "gated": probe.gate is not None and probe.gated and not args.no_gate,
        }
    else:
        report = al.evaluate(lm, bench, config, method=args.method, judge=judge)
    report.to_json(args.out)
    print(report.table())
    print(f"\nwrote {args.out} ({report.meta['seconds']} s)")
    return 0


def cmd_locate(args) -> int:
    from asru_lab import viz
    from asru_lab.locate import LocateConfig, LocateResult, locate

    lm, bench = _load(args)
    config = LocateConfig(site=args.site, seed=args.seed, progress=not args.quiet)
    if args.layers:
        config.layers = tuple(args.layers)
    if args.strengths:
        config.strengths = tuple(args.strengths)
    probe = locate(lm, bench, config)
    out = probe.save(args.out)
    viz.write_locate_page(probe.evidence, out / "locate.html", lm.name)
    print("\n".join(LocateResult(**probe.evidence).table().splitlines()[:6]))  # header + 5 best
    print(f"recommended: {probe}")
    print(f"wrote {out}/probe.json, probe.safetensors, sweep.json, locate.html")
    return 0


def cmd_redirect(args) -> int:
    from pathlib import Path

    from asru_lab.probe import SteeringProbe
    from asru_lab.redirect import RedirectConfig, redirect, save_redirected

    lm, bench = _load(args)
    probe = SteeringProbe.load(args.probe)
    out = Path(args.out)
    options = {
        "solver": args.solver,
        "lam": args.lam,
        "alpha": args.alpha,
        "preserve_weight": args.preserve_weight,
        "positions": args.positions,
        "modules": tuple(args.modules) if args.modules else None,
        "lora_r": args.lora_r,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_forget": args.max_forget,
        "max_retain": args.max_retain,
        "checkpoint_every": args.checkpoint_every,
    }
    options = {k: v for k, v in options.items() if v is not None}
    options.update(
        seed=args.seed,
        resume=args.resume,
        early_exit=not args.no_early_exit,
        progress=not args.quiet,
        checkpoint_dir=str(out / "checkpoints"),
    )
    config = RedirectConfig.paper(**options) if args.paper else RedirectConfig(**options)
    model, record = redirect(lm, probe, bench, config)
    save_redirected(model, record, out)
    objective = record["objective"]
    print(
        f"{record['solver']}: objective {objective['initial']:.4g} -> {objective['final']:.4g} "
        f"in {record['seconds']['total']:.1f} s ({record['examples']['forget']} forget, "
        f"{record['examples']['retain']} retain examples)"
    )
    print(f"wrote {out} (model + redirect.json); next: asru-lab evaluate --model {out} --out R")
    return 0


def cmd_reinforce(args) -> int:
    from pathlib import Path

    from asru_lab.probe import SteeringProbe
    from asru_lab.reinforce import TRAINING_DIR, ReinforceConfig, reinforce, save_reinforced

    lm, bench = _load(args)
    probe = SteeringProbe.load(args.probe) if args.probe else None
    out = Path(args.out)
    options = {
        "rewards": tuple(args.rewards) if args.rewards else None,
        "reward_weights": tuple(args.reward_weights) if args.reward_weights else None,
        "boundary": args.boundary,
        "n_forget": args.n_forget,
        "n_boundary": args.n_boundary,
        "tasks": tuple(args.tasks) if args.tasks else None,
        "max_steps": args.steps,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "num_generations": args.num_generations,
        "batch_size": args.batch_size,
        "lora_r": args.lora_r,
        "save_steps": args.save_steps,
    }
    options = {k: v for k, v in options.items() if v is not None}
    options.update(seed=args.seed, resume=args.resume, progress=not args.quiet)
    config = ReinforceConfig.paper(**options) if args.paper else ReinforceConfig(**options)
    model, record = reinforce(lm, bench, config, output_dir=out / TRAINING_DIR, probe=probe)
    if not record["main_process"]:  # `accelerate launch`: the main process saves
        return 0
    save_reinforced(model, record, out)
    last = next((r for r in reversed(record["log_history"]) if "reward" in r), {})
    reward = last.get("reward")
    print(
        f"{record['steps']} GRPO steps on {record['world_size']} process(es) in "
        f"{record['seconds']:.0f} s; last reward {reward}"
    )
    print(f"wrote {out} (model + reinforce.json; training/: metrics.jsonl, dashboard.html)")
    return 0


def cmd_run(args) -> int:
    import asru_lab as al
    from asru_lab.pipeline import PipelineConfig, comparison_table, run_pipeline

    lm, bench = _load(args)
    config = PipelineConfig(resume=args.resume)
    config.evaluate = al.EvalConfig(max_items=args.max_items, progress=not args.quiet)
    for stage in (config.locate, config.redirect, config.reinforce):
        stage.seed, stage.progress = args.seed, not args.quiet
    if args.steps is not None:
        config.reinforce.max_steps = args.steps
    results = run_pipeline(lm, bench, args.out, config)
    print(comparison_table(results))
    print(f"wrote {args.out}/: probe/, stage1/, final/, results/{{vanilla,stage1,final}}.json")
    return 0


def cmd_export(args) -> int:
    import asru_lab as al

    bench = al.load_benchmark(args.data, forget_ratio=args.forget_ratio, seed=args.seed)
    out = al.export_benchmark(bench, args.out, overwrite=args.overwrite)
    print(f"wrote {len(bench.people)} profiles and {len(bench.items)} questions to {out}")
    return 0


def cmd_build(args) -> int:
    from asru_lab.models.build_embedded import BuildConfig, build_embedded

    cfg = BuildConfig()
    if args.steps is not None:
        cfg.steps = args.steps
    if args.seed is not None:
        cfg.seed = args.seed
    lm = build_embedded(args.out, cfg)
    print(json.dumps(lm.info["build"]["progress"][-1]))
    return 0


def cmd_finetune(args) -> int:
    from asru_lab.finetune import FinetuneConfig, finetune, save_finetuned

    lm, bench = _load(args)
    cfg = FinetuneConfig(merge=not args.no_merge)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.lr is not None:
        cfg.lr = args.lr
    tuned, record = finetune(lm, bench, cfg)
    save_finetuned(tuned, record, args.out)
    print(f"wrote {args.out}")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "evaluate": cmd_evaluate,
    "locate": cmd_locate,
    "redirect": cmd_redirect,
    "reinforce": cmd_reinforce,
    "run": cmd_run,
    "export-benchmark": cmd_export,
    "build-embedded": cmd_build,
    "finetune": cmd_finetune,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from asru_lab.data.schema import BenchmarkError
    from asru_lab.models.adapters import AdapterError
    from asru_lab.models.loading import ModelLoadError
    from asru_lab.probe import ProbeError
    from asru_lab.redirect import RedirectError
    from asru_lab.reinforce import ReinforceError
    from asru_lab.rewards import RewardError
    from asru_lab.trace import TraceError

    try:
        return COMMANDS[args.command](args)
    except (
        BenchmarkError,
        ModelLoadError,
        AdapterError,
        ProbeError,
        TraceError,
        RedirectError,
        ReinforceError,
        RewardError,
        FileExistsError,
    ) as exc:
        print(f"asru-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
