"""`asru-lab`: the command line. Every command is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asru_lab.errors import AsruLabError

METHOD_NAMES = (  # asru_lab.baselines.METHODS, without importing torch to print --help
    "ga",
    "grad_diff",
    "kl_min",
    "npo",
    "refusal_sft",
    "steer_only",
    "asru_stage1",
    "asru",
)
DEMO_INTRO = """\
asru_lab demo: unlearning {n_forget} of the {n_known} fictitious people the embedded tiny Qwen3-VL
has memorised, while it keeps answering about everyone else.

  1. vanilla   evaluate the model before unlearning
  2. locate    find the direction that separates "knows this person" from "never seen them"
  3. redirect  write that direction into one weight matrix (ASRU stage 1)
  4. reinforce GRPO with a contextual-refusal reward (ASRU stage 2)
  5. compare   the same forget set unlearned by gradient ascent (GA) and NPO, at the public
               baseline code's settings (2 of 5 epochs here; README: a larger learning rate)
Demo sizes ({max_items} evaluation items per split and task); `asru-lab reproduce` runs the full
protocol. Results are cached in {out}: a second run only recomputes what changed.
"""


def _add_common(p: argparse.ArgumentParser, *, out_help: str | None = None) -> None:
    p.add_argument("--model", default=None, help="HF id or local model dir (default: embedded)")
    p.add_argument(
        "--data", default=None, help="dataset dir, 'mllmu:<dir>' (default: embedded benchmark)"
    )
    p.add_argument(
        "--forget-ratio",
        type=float,
        default=None,
        help="synthetic or MLLMU-Bench: 0.05, 0.1 (default) or 0.15",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seeds the run; synthetic: the forgotten people (0)"
    )
    if out_help:
        p.add_argument("--out", required=True, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asru-lab",
        description="ASRU unlearning for multimodal LLMs: steering + reinforcement unlearning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole story on the embedded model: ASRU vs GA and NPO")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--max-items", type=int, default=32, help="evaluation items per split/task")
    p.add_argument("--no-cache", action="store_true", help="recompute every step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="evaluate a model, write the evaluation JSON")
    _add_common(p, out_help="results JSON path")
    p.add_argument("--method", default="vanilla", help="label stored in the JSON")
    p.add_argument("--splits", nargs="*", default=None, help="subset of splits (default: all)")
    p.add_argument("--max-items", type=int, default=64, help="seeded sample per split and task")
    p.add_argument("--full", action="store_true", help="evaluate every item")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the judge")
    p.add_argument("--judge-model", default=None, help="model name at --judge-url")
    p.add_argument(
        "--judge-allow-http",
        action="store_true",
        help="send the API key over plain http to a non-loopback --judge-url (trusted network)",
    )
    p.add_argument(
        "--answers",
        default=None,
        metavar="FILE",
        help="score the answers saved in FILE (OUT.answers.json) without generating",
    )
    p.add_argument("--probe", default=None, help="steering probe dir: evaluate with it applied")
    p.add_argument("--alpha", type=float, default=None, help="override the probe's strength")
    p.add_argument("--no-gate", action="store_true", help="steer every prompt (ignore the gate)")

    p = sub.add_parser("locate", help="stage 1.1: find the direction, sweep, write a probe")
    _add_common(p, out_help="probe directory (probe + sweep.json + locate.html)")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="candidate layers")
    p.add_argument("--strengths", type=float, nargs="*", default=None, help="alphas to sweep")
    p.add_argument("--site", choices=("output", "input"), default="output", help="layer site")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "trace-causal", help="causal tracing: which layers and positions recall a person"
    )
    _add_common(p, out_help="output folder: trace.json, causal_heatmap.html/png, probe/")
    p.add_argument("--split", default="forget", help="whose people are traced (forget)")
    p.add_argument("--people", nargs="+", default=None, help="person ids (default: the split)")
    p.add_argument("--max-people", type=int, default=None, help="trace at most N people")
    p.add_argument("--attribute", default="name", help="the fact traced (name)")
    p.add_argument("--question", default=None, help="ask this wording instead")
    p.add_argument("--corruption", choices=("noise", "swap"), default="noise", help="noise")
    p.add_argument("--noise-scale", type=float, default=3.0, help="x feature std (3)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all")
    p.add_argument(
        "--components", nargs="+", default=None, help="residual attention mlp (default: all)"
    )
    p.add_argument("--backend", choices=("transformer_lens", "nnsight"), default="transformer_lens")
    p.add_argument("--batch-size", type=int, default=32, help="runs per forward pass")
    p.add_argument("--probe", default=None, help="locate's probe dir to compare with")
    p.add_argument("--no-compare", action="store_true", help="skip locate (no --probe)")
    p.add_argument("--no-png", action="store_true", help="HTML heatmap only")
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

    p = sub.add_parser("unlearn", help="run one unlearning method (a baseline or ASRU)")
    _add_common(p, out_help="output model dir (+ unlearn.json; probe/ for steer_only)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHOD_NAMES)}")
    p.add_argument("--paper", action="store_true", help="the public code's settings")
    p.add_argument("--probe", default=None, help="probe dir for steer_only / asru* (else located)")
    p.add_argument("--lr", type=float, default=None, help="gradient baselines: learning rate")
    p.add_argument("--epochs", type=int, default=None, help="gradient baselines: epochs (5)")
    p.add_argument("--lora-r", type=int, default=None, help="gradient baselines: LoRA rank (16)")
    p.add_argument("--max-forget", type=int, default=None, help="gradient baselines: cap")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("reproduce", help="every method x forget ratio: tables, figures, manifest")
    p.add_argument("--out", required=True, help="output folder (e.g. figures/)")
    p.add_argument("--model", default=None, help="HF id or local model dir (default: embedded)")
    p.add_argument("--data", default=None, help="dataset dir or 'mllmu:<dir>' (default: embedded)")
    p.add_argument("--methods", nargs="+", default=None, help="subset (default: all)")
    p.add_argument(
        "--forget-ratios", type=float, nargs="+", default=None, help="default 0.05 0.1 0.15"
    )
    p.add_argument("--seed", type=int, default=0, help="forgotten people and method seeds")
    p.add_argument("--max-items", type=int, default=64, help="evaluation items per split/task")
    p.add_argument("--paper", action="store_true", help="the public code's settings")
    p.add_argument("--no-cache", action="store_true", help="recompute every cell")
    p.add_argument("--cache-dir", default=None, help="share a cache (default: OUT/cache)")
    p.add_argument(
        "--baseline-lr", type=float, default=None, help="lr of GA/GradDiff/KL-Min/NPO (2e-5/1e-5)"
    )
    p.add_argument("--no-figures", action="store_true", help="tables and manifest only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("export-benchmark", help="write the benchmark as a user dataset dir")
    _add_common(p, out_help="output directory")

    p = sub.add_parser("build-embedded", help="train the embedded tiny Qwen3-VL from scratch")
    p.add_argument("--out", default=None, help="output dir (default: the package's embedded/)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: shipped)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: shipped)")

    p = sub.add_parser("finetune", help="stage 0: LoRA fine-tune a model on a dataset")
    _add_common(p, out_help="output model directory")
    p.add_argument("--epochs", type=int, default=None, help="default 5 (DESIGN §1)")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA weights unmerged")

    for name, command in sub.choices.items():
        if name in OUTPUT_FILE_COMMANDS:
            what = "replace an existing --out file that is not an earlier asru_lab result"
        else:
            what = "write into an --out folder that holds other files (they are kept)"
        command.add_argument("--overwrite", action="store_true", help=what)
        command.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


OUTPUT_FILE_COMMANDS = ("evaluate",)  # --out is a file; every other command writes a folder


class UsageError(AsruLabError):
    """Command-line options that do not go together."""


def check_out(args) -> None:
    """Refuse an unusable --out before any model is loaded (`artifacts.check_output`)."""
    from asru_lab.artifacts import check_output, check_output_file
    from asru_lab.evaluation.report import is_report_file

    out = getattr(args, "out", None)
    if args.command == "build-embedded" and out is None:
        from asru_lab.models.embedded import embedded_dir

        out = embedded_dir()
    if out is None:
        return
    if args.command == "evaluate":
        from asru_lab.evaluation.answers import is_answers_file

        check_output_file(out, overwrite=args.overwrite, own=is_report_file)
        if not args.answers:
            check_output_file(answers_path(args), overwrite=args.overwrite, own=is_answers_file)
    else:
        check_output(out, overwrite=args.overwrite)


def answers_path(args) -> Path:
    """Where `evaluate` saves the generated answers: --answers, or beside --out."""
    if args.answers:
        return Path(args.answers)
    out = Path(args.out)
    return out.with_name(out.name.removesuffix(".json") + ".answers.json")


def seed(args) -> int:
    """The run's seed: --seed, or 0."""
    return 0 if args.seed is None else args.seed


def _benchmark(args):
    """--data with --forget-ratio / --seed where they choose the forgotten people."""
    import asru_lab as al
    from asru_lab.data import benchmark_kind

    source = args.data
    kind = benchmark_kind(source)
    if kind == "synthetic":
        return al.load_benchmark(source, forget_ratio=args.forget_ratio, seed=args.seed)
    if kind == "mllmu":  # MLLMU-Bench's forget sets are fixed folders: --seed seeds the run
        return al.load_benchmark(source, forget_ratio=args.forget_ratio)
    if args.forget_ratio is not None:
        raise UsageError(
            f"--forget-ratio only applies to the synthetic benchmark and MLLMU-Bench; the "
            f"'split' column of {source}/profiles.jsonl decides who is forgotten"
        )
    if args.seed is not None:
        print(
            f"note: --seed does not choose the forgotten people of {source} (its profiles.jsonl "
            "does); it seeds this run only",
            file=sys.stderr,
        )
    return al.load_benchmark(source)


def _load(args):
    import asru_lab as al

    bench = _benchmark(args)
    lm = al.load_model(args.model)
    return lm, bench


def cmd_demo(args) -> int:
    from dataclasses import replace

    import asru_lab as al
    from asru_lab.runs.demo import DEMO_RATIO, demo_config, demo_report, run_demo

    started = time.time()
    bench = al.load_benchmark(forget_ratio=DEMO_RATIO)
    known = [p for p in bench.people.values() if p.split in ("forget", "retain")]
    print(
        DEMO_INTRO.format(
            n_known=len(known),
            n_forget=len(bench.people_in("forget")),
            max_items=args.max_items,
            out=args.out,
        )
    )
    config = replace(demo_config(args.max_items, progress=not args.quiet), cache=not args.no_cache)
    result = run_demo(args.out, config, overwrite=args.overwrite)
    print(demo_report(result))
    print(f"\nFigures: {args.out}/figures.html; tables: {args.out}/main_table.csv, summary.md")
    print(f"Done in {time.time() - started:.0f} s.")
    return 0


def cmd_evaluate(args) -> int:

    import asru_lab as al
    from asru_lab.evaluation.judge import JudgeError, OpenAIJudge

    judge = None
    if args.judge_url:
        if not args.judge_model:
            raise UsageError("--judge-url needs --judge-model")
        judge = OpenAIJudge(
            args.judge_url, args.judge_model, allow_insecure_http=args.judge_allow_http
        )
    lm, bench = _load(args)
    config = al.EvalConfig(
        splits=tuple(args.splits) if args.splits else None,
        max_items=None if args.full else args.max_items,
    )
    answers = answers_path(args)
    scoring = {"judge": judge, "answers_path": answers, "reuse_answers": bool(args.answers)}
    try:
        if args.probe:
            from asru_lab.probe import SteeringProbe

            probe = SteeringProbe.load(args.probe)
            gated = False if args.no_gate else None
            with probe.apply(lm, alpha=args.alpha, gated=gated):
                method = "steer_only" if args.method == "vanilla" else args.method
                report = al.evaluate(lm, bench, config, method=method, **scoring)
        else:
            report = al.evaluate(lm, bench, config, method=args.method, **scoring)
    except JudgeError as exc:
        # evaluate() names the library call to reuse the answers; say the command-line flag
        problem = exc.__cause__ if isinstance(exc.__cause__, JudgeError) else exc
        raise JudgeError(
            f"{problem}; the generated answers are saved in {answers}: once the judge works, "
            f"rerun this command with --answers {answers} to score them without generating"
        ) from exc
    if args.probe:
        report.meta["probe"] = {
            "path": str(args.probe),
            "layer": probe.layer,
            "alpha": probe.alpha if args.alpha is None else args.alpha,
            "positions": probe.positions,
            "gated": probe.gate is not None and probe.gated and not args.no_gate,
        }
    report.to_json(args.out, overwrite=args.overwrite)
    print(report.table())
    saved = "scored the answers in" if args.answers else "answers in"
    print(f"\nwrote {args.out} ({report.meta['seconds']} s; {saved} {answers})")
    return 0


def cmd_locate(args) -> int:
    from asru_lab import viz
    from asru_lab.stages.locate import LocateConfig, LocateResult, locate

    lm, bench = _load(args)
    config = LocateConfig(site=args.site, seed=seed(args), progress=not args.quiet)
    if args.layers:
        config.layers = tuple(args.layers)
    if args.strengths:
        config.strengths = tuple(args.strengths)
    probe = locate(lm, bench, config)
    out = probe.save(args.out, overwrite=args.overwrite)
    viz.write_locate_page(probe.evidence, out / "locate.html", lm.name)
    print("\n".join(LocateResult(**probe.evidence).table().splitlines()[:6]))  # header + 5 best
    print(f"recommended: {probe}")
    print(f"wrote {out}/probe.json, probe.safetensors, sweep.json, locate.html")
    return 0


def cmd_trace_causal(args) -> int:
    from asru_lab import viz
    from asru_lab.causal import COMPONENTS, CausalTraceConfig, describe_comparison, trace_causal
    from asru_lab.probe import SteeringProbe
    from asru_lab.stages.locate import LocateConfig, locate

    config = CausalTraceConfig(
        split=args.split,
        people=tuple(args.people) if args.people else None,
        max_people=args.max_people,
        attribute=args.attribute,
        question=args.question,
        corruption=args.corruption,
        noise_scale=args.noise_scale,
        layers=tuple(args.layers) if args.layers else None,
        components=tuple(args.components) if args.components else COMPONENTS,
        backend=args.backend,
        batch_size=args.batch_size,
        seed=seed(args),
        progress=not args.quiet,
    )
    lm, bench = _load(args)
    located = None
    if args.probe:
        probe = SteeringProbe.load(args.probe)
    elif args.no_compare:
        probe = None
    else:
        print("no --probe: running locate (the stage 1.1 sweep) to compare with")
        probe = located = locate(lm, bench, LocateConfig(seed=seed(args), progress=not args.quiet))
    trace = trace_causal(lm, bench, config, probe=probe)
    out = trace.save(args.out, overwrite=args.overwrite)
    if located is not None:
        located.save(out / "probe")
    heatmap = viz.causal_heatmap(trace)
    written = viz.save_figure(heatmap, out / "causal_heatmap", png=not args.no_png)
    for component in trace.components:
        print(trace.table(component))
    for component, peak in trace.summary()["peaks"].items():
        if peak is not None:
            print(
                f"peak {component}: layer {peak['layer']}, {peak['group']}, "
                f"recovered {peak['fraction']:.3f}"
            )
    if trace.comparison:
        print(describe_comparison(trace.comparison))
    t = trace.timing
    print(
        f"{t['people']} people, {t['patched_runs']} patched runs in {t['forward_passes']} "
        f"forward passes, {t['seconds']:.1f} s"
    )
    print(f"wrote {out}/trace.json, " + ", ".join(written))
    return 0


def cmd_redirect(args) -> int:
    from asru_lab.probe import SteeringProbe
    from asru_lab.stages.redirect import RedirectConfig, redirect, save_redirected

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
        seed=seed(args),
        resume=args.resume,
        early_exit=not args.no_early_exit,
        progress=not args.quiet,
        checkpoint_dir=str(out / "checkpoints"),
    )
    config = RedirectConfig.paper(**options) if args.paper else RedirectConfig(**options)
    model, record = redirect(lm, probe, bench, config)
    save_redirected(model, record, out, overwrite=args.overwrite)
    objective = record["objective"]
    print(
        f"{record['solver']}: objective {objective['initial']:.4g} -> {objective['final']:.4g} "
        f"in {record['seconds']['total']:.1f} s ({record['examples']['forget']} forget, "
        f"{record['examples']['retain']} retain examples)"
    )
    print(f"wrote {out} (model + redirect.json); next: asru-lab evaluate --model {out} --out R")
    return 0


def cmd_reinforce(args) -> int:
    from asru_lab.probe import SteeringProbe
    from asru_lab.stages.reinforce import TRAINING_DIR, ReinforceConfig, reinforce, save_reinforced

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
    options.update(seed=seed(args), resume=args.resume, progress=not args.quiet)
    config = ReinforceConfig.paper(**options) if args.paper else ReinforceConfig(**options)
    model, record = reinforce(lm, bench, config, output_dir=out / TRAINING_DIR, probe=probe)
    if not record["main_process"]:  # `accelerate launch`: the main process saves
        return 0
    save_reinforced(model, record, out, overwrite=args.overwrite)
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
    from asru_lab.runs.pipeline import PipelineConfig, comparison_table, run_pipeline

    lm, bench = _load(args)
    config = PipelineConfig(resume=args.resume)
    config.evaluate = al.EvalConfig(max_items=args.max_items, progress=not args.quiet)
    for stage in (config.locate, config.redirect, config.reinforce):
        stage.seed, stage.progress = seed(args), not args.quiet
    if args.steps is not None:
        config.reinforce.max_steps = args.steps
    results = run_pipeline(lm, bench, args.out, config, overwrite=args.overwrite)
    print(comparison_table(results))
    print(f"wrote {args.out}/: probe/, stage1/, final/, results/{{vanilla,stage1,final}}.json")
    return 0


def cmd_export(args) -> int:
    import asru_lab as al

    bench = _benchmark(args)
    out = al.export_benchmark(bench, args.out, overwrite=args.overwrite)
    print(f"wrote {len(bench.people)} profiles and {len(bench.items)} questions to {out}")
    return 0


def cmd_build(args) -> int:
    from asru_lab.runs.build_embedded import BuildConfig, build_embedded

    cfg = BuildConfig()
    if args.steps is not None:
        cfg.steps = args.steps
    if args.seed is not None:
        cfg.seed = args.seed
    lm = build_embedded(args.out, cfg, overwrite=args.overwrite)
    print(json.dumps(lm.info["build"]["progress"][-1]))
    return 0


def cmd_finetune(args) -> int:
    from asru_lab.stages.finetune import FinetuneConfig, finetune, save_finetuned

    lm, bench = _load(args)
    cfg = FinetuneConfig(merge=not args.no_merge)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.lr is not None:
        cfg.lr = args.lr
    tuned, record = finetune(lm, bench, cfg)
    save_finetuned(tuned, record, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def cmd_unlearn(args) -> int:
    from dataclasses import replace

    from asru_lab.baselines import UnlearnConfig, get_method, save_unlearned, unlearn
    from asru_lab.probe import SteeringProbe
    from asru_lab.runs.reproduce import _seeded

    method = get_method(args.method)
    lm, bench = _load(args)
    make = method.paper_config if args.paper and method.paper_config else method.default_config
    config = _seeded(make(), seed(args), not args.quiet)
    options = {
        "lr": args.lr,
        "epochs": args.epochs,
        "lora_r": args.lora_r,
        "max_forget": args.max_forget,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if options:
        if not isinstance(config, UnlearnConfig):
            raise UsageError(
                f"--lr/--epochs/--lora-r apply to the gradient baselines, not {args.method}"
            )
        config = replace(config, **options)
    probe = SteeringProbe.load(args.probe) if args.probe else None
    result = unlearn(lm, bench, args.method, config, probe=probe)
    out = save_unlearned(result, args.out, overwrite=args.overwrite)
    probe_hint = f" --probe {out}/probe" if result.probe is not None else ""
    print(f"{args.method}: done in {result.record['wall_seconds']:.0f} s; wrote {out}")
    print(f"next: asru-lab evaluate --model {out}{probe_hint} --method {args.method} --out R.json")
    return 0


def cmd_reproduce(args) -> int:
    import asru_lab as al
    from asru_lab.runs.reproduce import FORGET_RATIOS, PAPER_METHODS, ReproduceConfig, reproduce

    configs = {}
    if args.baseline_lr is not None:
        from dataclasses import replace

        from asru_lab.baselines import get_method
        from asru_lab.runs.reproduce import HEADLINE_BASELINES

        for name in HEADLINE_BASELINES:
            configs[name] = replace(get_method(name).default_config(), lr=args.baseline_lr)
    config = ReproduceConfig(
        methods=tuple(args.methods or PAPER_METHODS),
        configs=configs,
        cache_dir=args.cache_dir,
        forget_ratios=tuple(args.forget_ratios or FORGET_RATIOS),
        seed=seed(args),
        evaluate=al.EvalConfig(max_items=args.max_items),
        paper=args.paper,
        cache=not args.no_cache,
        figures=not args.no_figures,
        progress=not args.quiet,
    )
    result = reproduce(args.out, config, model=args.model, data=args.data, overwrite=args.overwrite)
    print(result.summary())
    cached = sum(c["cached"] for c in result.manifest["cells"])
    print(
        f"{len(result.manifest['cells'])} cells ({cached} from cache) in "
        f"{result.manifest['wall_seconds']:.0f} s; wrote {args.out}/main_table.csv, "
        "main_table.md, summary.md, manifest.json and the figures"
    )
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "evaluate": cmd_evaluate,
    "locate": cmd_locate,
    "trace-causal": cmd_trace_causal,
    "redirect": cmd_redirect,
    "reinforce": cmd_reinforce,
    "run": cmd_run,
    "export-benchmark": cmd_export,
    "build-embedded": cmd_build,
    "finetune": cmd_finetune,
    "unlearn": cmd_unlearn,
    "reproduce": cmd_reproduce,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a person can fix print one line and exit 2; tracebacks only
    with --debug. Any other exception is a bug: one line naming it, exit 1."""
    args = build_parser().parse_args(argv)
    try:
        check_out(args)
        return COMMANDS[args.command](args)
    except (AsruLabError, OSError) as exc:
        if args.debug:
            raise
        print(f"asru-lab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"asru-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"asru-lab {args.command}: internal error ({type(exc).__name__}: {_one_line(exc)}); "
            "this is a bug in asru_lab: rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
