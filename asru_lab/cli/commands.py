"""The `asru-lab` subcommands: each a thin call into the library (`COMMANDS`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from asru_lab.errors import AsruLabError

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


class UsageError(AsruLabError):
    """Command-line options that do not go together."""


# the options that name a path a command reads, and those that name a path it writes
INPUT_OPTIONS = ("model", "data", "probe", "reference", "oracle", "answers", "base")
OUTPUT_OPTIONS = ("out", "items_out", "cache_dir")


def command_paths(args) -> tuple[dict[str, Path], dict[str, Path]]:
    """(inputs, outputs) of a command line, by option ("--model" -> path). Inputs are the local
    paths it reads: an omitted --model is the embedded model, audit's omitted --reference and
    --oracle and evaluate's `--reference oracle` the shipped models; a hub id is none. Outputs
    are every path it writes (evaluate's answers file too)."""
    from asru_lab.models.embedded import embedded_dir, oracle_dir

    shipped_oracles = oracle_dir().parent
    inputs: dict[str, Path] = {}
    for name in INPUT_OPTIONS:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if value is None and name == "model":
            value = embedded_dir()
        elif value is None and args.command == "audit" and name in ("reference", "oracle"):
            value = embedded_dir() if name == "reference" else shipped_oracles
        elif value == "oracle" and name == "reference":
            value = shipped_oracles
        if not isinstance(value, str | Path) or value == "none":
            continue  # a flag (build-embedded --oracle), or nothing read
        if name == "data":
            value = str(value).removeprefix("mllmu:").removeprefix("clear:")
        if Path(value).expanduser().exists():
            inputs["--" + name.replace("_", "-")] = Path(value)
    outputs = {
        "--" + name.replace("_", "-"): Path(getattr(args, name))
        for name in OUTPUT_OPTIONS
        if getattr(args, name, None) is not None
    }
    if args.command == "evaluate" and not args.answers:
        outputs["the answers file"] = answers_path(args)
    if args.command == "build-embedded" and args.out is None and not args.format_stage:
        outputs["--out"] = (
            oracle_dir(args.forget_ratio, args.split_seed) if args.oracle else embedded_dir()
        )
    return inputs, outputs


def folder_entries_written(args) -> dict[str, set[str]]:
    """For a command that fills its --out entry by entry, the only entries it writes there
    (`artifacts.check_apart`): trace-causal's trace, heatmap and, without --probe, the probe
    that its own locate found; an input elsewhere in that folder stays untouched."""
    if args.command != "trace-causal":
        return {}
    from asru_lab.artifacts import MARKER
    from asru_lab.causal.result import TRACE_FILE

    written = {MARKER, TRACE_FILE, "causal_heatmap.html", "causal_heatmap.png", "plotly.min.js"}
    return {"--out": written if args.probe else written | {"probe"}}


def check_out(args) -> None:
    """Refuse an unusable output before any model is loaded: one that is (or lies inside, or
    holds) an input, or two outputs at one path (`artifacts.check_apart`); an --out that
    cannot be written (`artifacts.check_output`)."""
    from asru_lab.artifacts import check_apart, check_output, check_output_file
    from asru_lab.evaluation.report import is_report_file

    check_apart(*command_paths(args), writes=folder_entries_written(args))
    out = getattr(args, "out", None)
    if args.command == "build-embedded" and out is None:
        out = command_paths(args)[1].get("--out")  # none with --format-stage: it asks for one
    if out is None:
        return
    if args.command == "evaluate":
        from asru_lab.evaluation.answers import is_answers_file

        check_output_file(out, overwrite=args.overwrite, own=is_report_file)
        if not args.answers:
            check_output_file(answers_path(args), overwrite=args.overwrite, own=is_answers_file)
        if args.items_out:
            from asru_lab.evaluation.records import check_items_path

            check_items_path(args.items_out, overwrite=args.overwrite)
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
    """--data with --forget-ratio / --split-seed (else --seed) where they choose the forgotten
    people."""
    import asru_lab as al
    from asru_lab.data import benchmark_kind

    source = args.data
    kind = benchmark_kind(source)
    if kind == "synthetic":
        split_seed = args.seed if args.split_seed is None else args.split_seed
        return al.load_benchmark(source, forget_ratio=args.forget_ratio, seed=split_seed)
    if args.split_seed is not None:
        raise UsageError(
            f"--split-seed only applies to the synthetic benchmark: who is forgotten in {source} "
            "is fixed by its files (drop --split-seed; --seed seeds the run)"
        )
    if kind in ("mllmu", "clear"):  # their forget sets are fixed folders: --seed seeds the run
        return al.load_benchmark(source, forget_ratio=args.forget_ratio)
    if args.forget_ratio is not None:
        raise UsageError(
            f"--forget-ratio only applies to the synthetic benchmark, MLLMU-Bench and CLEAR; the "
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
    from asru_lab.evaluation.judge import JudgeError
    from asru_lab.evaluation.llm_judge import DEFAULT_RUBRIC, OpenAIJudge

    if args.judge_rubric and not args.judge_url:
        raise UsageError(
            f"--judge-rubric {args.judge_rubric} needs --judge-url URL --judge-model NAME: a "
            "rubric is how an LLM judge is asked; without --judge-url the closed-world judge "
            "scores by rule"
        )
    judge = None
    if args.judge_url:
        if not args.judge_model:
            raise UsageError("--judge-url needs --judge-model")
        judge = OpenAIJudge(
            args.judge_url,
            args.judge_model,
            allow_insecure_http=args.judge_allow_http,
            rubric=args.judge_rubric or DEFAULT_RUBRIC,
        )
    lm, bench = _load(args)
    config = al.EvalConfig(
        splits=tuple(args.splits) if args.splits else None,
        max_items=None if args.full else args.max_items,
        protocol=args.protocol,
        shots=args.shots,
        probabilities=not args.no_probabilities,
    )
    answers = answers_path(args)
    scoring = {
        "judge": judge,
        "answers_path": answers,
        "reuse_answers": bool(args.answers),
        "items_path": args.items_out,
        "overwrite": args.overwrite,
        "reference": _reference(args, bench),
    }
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
    print("\n" + report.legend())
    saved = "scored the answers in" if args.answers else "answers in"
    print(f"\nwrote {args.out} ({report.meta['seconds']} s; {saved} {answers})")
    if args.items_out:
        print(f"wrote the per-item records to {args.items_out}")
    return 0


def _reference(args, bench):
    """`evaluate --reference`: None, the shipped oracle of the benchmark's forget set
    ('oracle', synthetic benchmark only), or a model dir."""
    if args.reference is None:
        return None
    import asru_lab as al
    from asru_lab.data import benchmark_kind

    if args.reference != "oracle":
        return al.load_model(args.reference)
    if benchmark_kind(args.data) != "synthetic":
        raise UsageError(
            "--reference oracle names the shipped retrain oracle of the synthetic benchmark; "
            f"for {args.data} give the dir of a model trained without its forget people"
        )
    meta = bench.meta or {}
    return al.load_oracle(meta.get("forget_ratio", 0.1), meta.get("split_seed", 0))


def cmd_locate(args) -> int:
    from asru_lab import viz
    from asru_lab.stages.locate import LocateConfig, LocateResult, locate

    lm, bench = _load(args)
    config = LocateConfig(site=args.site, seed=seed(args), progress=not args.quiet)
    for name in (
        "max_examples retain_examples sweep_forget sweep_retain n_candidates max_new_tokens "
        "batch_size"
    ).split():
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
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
        "adversarial": tuple(args.adversarial) if args.adversarial else None,
        "adversarial_share": args.adversarial_share,
        "ablation_every": args.ablation_every,
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

    if args.format_stage or args.base is not None or args.stages or args.resume:
        return _format_stage(args)
    cfg = _training_overrides(BuildConfig(), args)
    if args.oracle:
        cfg.oracle_forget_ratio, cfg.oracle_split_seed = args.forget_ratio, args.split_seed
    lm = build_embedded(args.out, cfg, overwrite=args.overwrite)
    print(json.dumps(lm.info["build"]["progress"][-1]))
    return 0


def _training_overrides(cfg, args):
    """`cfg` (a build or format-stage config) with the --steps, --seed, --threads given."""
    for name in ("steps", "seed", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


def _format_stage(args) -> int:
    from asru_lab.runs.build_embedded import FORMAT_CURRICULUM, curriculum, format_stage

    if not (args.format_stage and args.base and args.out):
        raise UsageError(
            "the format stage continues a built model into a new folder: pass --format-stage "
            "--base DIR --out NEW_DIR (--base, --stages and --resume are read only with "
            "--format-stage)"
        )
    given = {k: getattr(args, k) for k in ("steps", "seed", "threads")}
    stages = curriculum(
        args.stages or FORMAT_CURRICULUM, **{k: v for k, v in given.items() if v is not None}
    )
    oracle = (args.forget_ratio, args.split_seed) if args.oracle else None
    lm = format_stage(
        args.base, args.out, stages, oracle=oracle, overwrite=args.overwrite, resume=args.resume
    )
    print(json.dumps(lm.info["format_stage"]["stages"][-1]["progress"][-1]))
    return 0


def cmd_make_model(args) -> int:
    from asru_lab.models.loading import DTYPES
    from asru_lab.models.sizes import SizeError, build_random_model, get_size

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if value.strip().lower() == "none":  # head_dim none: hidden / heads
            overrides[key.strip()] = None
        elif sep and value.strip().lstrip("-").isdigit():
            overrides[key.strip()] = int(value)
        else:
            raise SizeError(f"--set {item!r}: expected FIELD=INTEGER (e.g. layers=4)")
    size = get_size(get_size(args.size).shrunk(args.shrink), **overrides)
    params = size.parameters()["total"]
    print(f"building {size.name}: {params / 1e9:.2f} B parameters, random weights, {args.dtype}")
    lm = build_random_model(size, pixels=args.pixels, dtype=DTYPES[args.dtype], seed=args.seed)
    out = lm.save(args.out, overwrite=args.overwrite)
    print(
        f"wrote {out} ({lm.info['image_tokens']} image tokens per portrait); "
        f"load it with --model {out}"
    )
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
    from dataclasses import fields, is_dataclass, replace

    from asru_lab.baselines import get_method, save_unlearned, unlearn
    from asru_lab.probe import SteeringProbe
    from asru_lab.runs.reproduce import seeded_config

    method = get_method(args.method)
    make = method.paper_config if args.paper and method.paper_config else method.default_config
    config = seeded_config(make(), seed(args), not args.quiet)
    options = {
        "lr": args.lr,
        "epochs": args.epochs,
        "lora_r": args.lora_r,
        "max_forget": args.max_forget,
        "vision_fraction": args.vision_fraction,
        "language_fraction": args.language_fraction,
        "min_ratio": args.min_ratio,
        "alpha": args.alpha,
        "n_retain": args.n_retain,
        "energy": args.energy,
        "coefficient": args.coefficient,
        "layer": args.layer,
        "steps": args.steps,
        "noise_weight": args.noise_weight,
        "sam_rho": args.sam_rho,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if options:
        known = {f.name for f in fields(config)} if is_dataclass(config) else set()
        unknown = ["--" + k.replace("_", "-") for k in options if k not in known]
        if unknown:
            raise UsageError(
                f"{'/'.join(unknown)} do not apply to {args.method} "
                f"(its config, {type(config).__name__}, has no such field)"
            )
        config = replace(config, **options)
    probe = SteeringProbe.load(args.probe) if args.probe else None
    lm, bench = _load(args)  # after the options are checked: a usage error comes at once
    result = unlearn(lm, bench, args.method, config, probe=probe)
    out = save_unlearned(result, args.out, overwrite=args.overwrite)
    probe_hint = f" --probe {out}/probe" if result.probe is not None else ""
    print(f"{args.method}: done in {result.record['wall_seconds']:.0f} s; wrote {out}")
    print(f"next: asru-lab evaluate --model {out}{probe_hint} --method {args.method} --out R.json")
    return 0


def _checks_text(values: dict) -> str:
    keys = ("retain_recall", "retain_mcq", "general_recall")
    return " / ".join(f"{values.get(k, float('nan')):.2f}" for k in keys)


def cmd_distill(args) -> int:
    from dataclasses import fields

    from asru_lab.baselines import Unlearned, save_unlearned
    from asru_lab.probe import SteeringProbe
    from asru_lab.stages.distill import DistillConfig, DistillError, distill

    named = [f.name for f in fields(DistillConfig) if f.name not in ("seed", "progress")]
    chosen = {name: getattr(args, name, None) for name in named}
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v is not None}
    if args.all_prompts:
        if "max_prompts" in chosen:
            raise DistillError("give --all-prompts or --max-prompts, not both")
        chosen["max_prompts"] = None
    if args.last_step:
        chosen["keep_best"] = False
    config = DistillConfig(**chosen, seed=seed(args), progress=not args.quiet)
    probe = SteeringProbe.load(args.probe) if args.probe else None
    lm, bench = _load(args)
    result = distill(lm, bench, config, teacher_probe=probe)
    record = {"method": "distill", "teacher": args.model or "embedded", **result.record(config)}
    out = save_unlearned(
        Unlearned("distill", result.model, record), args.out, overwrite=args.overwrite
    )
    kept = next((r for r in result.history if r["step"] == result.kept_step), {})
    print(
        f"distilled {result.steps} steps in {result.seconds:.0f} s "
        f"({'stopped' if result.stopped else 'not stopped'}; kept step {result.kept_step}: "
        f"retain recall / multiple choice / picture questions {_checks_text(kept)}; the teacher "
        f"{_checks_text(result.teacher)}); wrote {out}"
    )
    print(f"next: asru-lab audit --model {out} --out {out}-audit")
    return 0


def cmd_audit(args) -> int:
    import asru_lab as al
    from asru_lab.auditing import AuditConfig, AuditError, audit, load_oracle
    from asru_lab.data import benchmark_kind
    from asru_lab.probe import SteeringProbe

    lm, bench = _load(args)
    synthetic = benchmark_kind(args.data) == "synthetic"
    fields = (
        *("attacks", "max_items", "relearn_steps", "relearn_modes", "relearn_lr"),
        *("relearn_full_lr", "relearn_data", "quant_bits", "sample_k", "prefill_words"),
        *("soft_prompt_steps", "soft_prompt_lr", "probe_attribute"),
    )
    chosen = {f: getattr(args, f) for f in (*fields, "batch_size")}
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v is not None}
    if args.all_items:
        if args.max_items is not None:
            raise AuditError("give --all-items or --max-items, not both")
        chosen["max_items"] = None
    config = AuditConfig(**chosen, seed=seed(args), progress=not args.quiet)
    probe = SteeringProbe.load(args.probe) if args.probe else None
    if args.reference == "none" or (args.reference is None and not synthetic):
        reference = None
    else:
        reference = al.load_model(args.reference)
    oracle = None
    if args.oracle not in (None, "none"):
        oracle = al.load_model(args.oracle)
    elif args.oracle is None and synthetic:
        meta = bench.meta or {}
        try:
            oracle = load_oracle(meta.get("forget_ratio", 0.1), meta.get("split_seed", 0))
        except AuditError as exc:
            print(f"note: auditing without an oracle: {exc}", file=sys.stderr)
    report = audit(
        lm,
        bench,
        reference=reference,
        oracle=oracle,
        probe=probe,
        config=config,
        oracle_cache=not args.no_oracle_cache,
    )
    out = report.save(args.out, overwrite=args.overwrite)
    print(json.dumps(report.summary, indent=2))
    sides = [
        report.results.get("oracle_side"),
        report.results.get("relearn", {}).get("oracle_side"),
    ]
    kept = " (the oracle's side found in the oracle cache)" if "disk" in sides else ""
    print(
        f"wrote {out}/audit.json, items.jsonl and audit.html in "
        f"{report.timing['total']:.0f} s{kept}"
    )
    print(report.verdict(args.model or "the embedded model"))
    return 0


def _audit_config(args):
    """reproduce's AuditConfig: None without --audit."""
    if not args.audit:
        if args.audit_max_items is not None:
            raise UsageError("--audit-max-items needs --audit")
        return None
    from asru_lab.auditing import AuditConfig

    return (
        AuditConfig()
        if args.audit_max_items is None
        else AuditConfig(max_items=args.audit_max_items)
    )


def cmd_reproduce(args) -> int:
    import asru_lab as al
    from asru_lab.runs.reproduce import FORGET_RATIOS, PAPER_METHODS, ReproduceConfig, reproduce
    from asru_lab.runs.tuning import TuningConfig

    configs = {}
    if args.baseline_lr is not None:
        from dataclasses import replace

        from asru_lab.baselines import get_method
        from asru_lab.evaluation.headline import HEADLINE_BASELINES

        for name in HEADLINE_BASELINES:
            configs[name] = replace(get_method(name).default_config(), lr=args.baseline_lr)
    config = ReproduceConfig(
        methods=tuple(args.methods or PAPER_METHODS),
        configs=configs,
        cache_dir=args.cache_dir,
        forget_ratios=tuple(args.forget_ratios or FORGET_RATIOS),
        seed=seed(args),
        evaluate=al.EvalConfig(
            max_items=args.max_items,
            protocol=args.protocol,
            shots=args.shots,
            probabilities=not args.no_probabilities,
        ),
        oracle=not args.no_oracle,
        tuning=None
        if args.no_tuning
        else TuningConfig(max_retain_drop=args.max_retain_drop, criterion=args.tune_on),
        paper=args.paper,
        cache=not args.no_cache,
        figures=not args.no_figures,
        progress=not args.quiet,
        audit=_audit_config(args),
    )
    result = reproduce(args.out, config, model=args.model, data=args.data, overwrite=args.overwrite)
    print(result.summary())
    cached = sum(c["cached"] for c in result.manifest["cells"])
    paper = f", and the paper's layout in {args.out}/paper/" if "paper" in result.manifest else ""
    print(
        f"{len(result.manifest['cells'])} cells ({cached} from cache) in "
        f"{result.manifest['wall_seconds']:.0f} s; wrote {args.out}/main_table.csv, "
        f"main_table.md, summary.md, manifest.json and the figures{paper}"
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
    "make-model": cmd_make_model,
    "finetune": cmd_finetune,
    "unlearn": cmd_unlearn,
    "distill": cmd_distill,
    "audit": cmd_audit,
    "reproduce": cmd_reproduce,
}
