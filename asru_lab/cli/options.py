"""The `asru-lab` parser: one small function per subcommand; an option that sets a config
field is generated from the field, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing

OUTPUT_FILE_COMMANDS = ("evaluate",)  # --out is a file; every other command writes a folder


def _add_common(p: argparse.ArgumentParser, *, out_help: str | None = None) -> None:
    p.add_argument("--model", default=None, help="HF id or local model dir (default: embedded)")
    p.add_argument(
        "--data",
        default=None,
        help="dataset dir, 'mllmu:<dir>' or 'clear:<dir>' (default: embedded benchmark)",
    )
    p.add_argument(
        "--forget-ratio",
        type=float,
        default=None,
        help="synthetic, MLLMU-Bench: 0.05, 0.1 (default), 0.15; CLEAR: 0.01, 0.05, 0.1 (default)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seeds the run; synthetic: the forgotten people (0)"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="synthetic: the seed that draws the forgotten people instead of --seed, so that "
        "--seed varies the run alone (training seeds of one forget set: --split-seed 0 --seed 1)",
    )
    if out_help:
        p.add_argument("--out", required=True, help=out_help)


def _add_fields(
    parser: argparse.ArgumentParser, config: type, names: str, *, none: bool = False, **changes
) -> None:
    """Add an option for each field in `names` (space-separated) of the dataclass `config`:
    `--lora-r` for `lora_r`, typed by the field (a tuple field takes one or more values), with
    the field's help and default, grouped under the config's name and what it configures. The
    option's default is the field's, or None with `none` (the config's own default, or --paper's,
    then applies). `changes` maps a field to the add_argument keywords that differ, with `flag`
    for another option name; a `help` given there is the whole text. A `functools.partial` of
    a config (a config with other defaults) gives the options of its class."""
    config = _config_class(config)
    what = " ".join(config.__doc__.split()).split(". ")[0].rstrip(".")  # its first sentence
    group = parser.add_argument_group(f"{config.__name__}: {what[0].lower()}{what[1:]}")
    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name in names.split():
        field, options = fields[name], dict(changes.get(name, {}))
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            text = f"{text} (default: {shown})".lstrip()
        kind, nargs = _option_type(hints[name])
        option = {"type": kind, "nargs": nargs, "default": None if none else default, "help": text}
        group.add_argument(options.pop("flag", "--" + name.replace("_", "-")), **option | options)


def _config_class(config):
    """The dataclass behind `config`, which may be a `functools.partial` of it."""
    while isinstance(config, functools.partial):
        config = config.func
    return config


def _option_type(hint) -> tuple[type | None, str | None]:
    """argparse's `type` and `nargs` for a field annotation: `int | None` is an int, a
    `tuple[float, ...]` one or more floats; a str needs no type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    nargs = None
    if typing.get_origin(hint) is tuple:
        hint, nargs = typing.get_args(hint)[0], "+"
    if hint not in (int, float, str):
        raise TypeError(f"a field of type {hint} has no command-line form: add its option by hand")
    return (None if hint is str else hint), nargs


def build_parser() -> argparse.ArgumentParser:
    """The `asru-lab` parser. An option that sets a config field is made from the field
    (`_add_fields`), so the two cannot drift apart; method names come from the registry."""
    parser = argparse.ArgumentParser(
        prog="asru-lab",
        description="ASRU unlearning for multimodal LLMs: steering + reinforcement unlearning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_options in SUBCOMMANDS:
        add_options(sub)
    for name, command in sub.choices.items():
        if name in OUTPUT_FILE_COMMANDS:
            what = "replace an existing --out file that is not an earlier asru_lab result"
        else:
            what = "write into an --out folder that holds other files (they are kept)"
        command.add_argument("--overwrite", action="store_true", help=what)
        command.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _demo_options(sub) -> None:
    p = sub.add_parser("demo", help="the whole story on the embedded model: ASRU vs GA and NPO")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--max-items", type=int, default=32, help="evaluation items per split/task")
    p.add_argument("--no-cache", action="store_true", help="recompute every step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _evaluate_options(sub) -> None:
    from asru_lab.evaluation.harness import EvalConfig
    from asru_lab.evaluation.llm_judge import DEFAULT_RUBRIC, RUBRICS
    from asru_lab.evaluation.protocols import PROTOCOLS

    p = sub.add_parser("evaluate", help="evaluate a model, write the evaluation JSON")
    _add_common(p, out_help="results JSON path")
    p.add_argument("--method", default="vanilla", help="label stored in the JSON")
    _add_fields(
        p,
        EvalConfig,
        "splits max_items protocol shots",
        splits={"nargs": "*"},
        protocol={"choices": tuple(PROTOCOLS)},
    )
    p.add_argument("--full", action="store_true", help="evaluate every item")
    p.add_argument(
        "--items-out",
        default=None,
        metavar="FILE",
        help="also write one JSON line per evaluated item (prompt, reply, scores) to FILE",
    )
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the judge")
    p.add_argument("--judge-model", default=None, help="model name at --judge-url")
    p.add_argument(
        "--judge-rubric",
        default=None,
        choices=sorted(RUBRICS),
        help="how the --judge-url judge is asked and what it rates: "
        + "; ".join(f"{r.name}: {r.summary}" for r in RUBRICS.values())
        + f" (default: {DEFAULT_RUBRIC})",
    )
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
    p.add_argument(
        "--no-probabilities",
        action="store_true",
        help="skip the answer probability and truth ratio passes (open-unlearning's metrics)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="DIR|oracle",
        help="forget quality against this model: a model dir of the same architecture, or "
        "'oracle' for the shipped retrain oracle of the synthetic forget set",
    )
    p.add_argument("--probe", default=None, help="steering probe dir: evaluate with it applied")
    p.add_argument("--alpha", type=float, default=None, help="override the probe's strength")
    p.add_argument("--no-gate", action="store_true", help="steer every prompt (ignore the gate)")


def _locate_options(sub) -> None:
    from asru_lab.hooks import SITES
    from asru_lab.stages.locate import LocateConfig

    p = sub.add_parser("locate", help="stage 1.1: find the direction, sweep, write a probe")
    _add_common(p, out_help="probe directory (probe + sweep.json + locate.html)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        p,
        LocateConfig,
        "layers strengths site",
        layers={"nargs": "*", "default": None},
        strengths={"nargs": "*", "default": None},
        site={"choices": SITES},
    )
    # the sizes of a first look at a big model (each pass costs minutes there)
    _add_fields(
        p,
        LocateConfig,
        "max_examples retain_examples sweep_forget sweep_retain n_candidates max_new_tokens "
        "batch_size",
        none=True,
    )


def _trace_causal_options(sub) -> None:
    from asru_lab.causal import BACKENDS, CORRUPTIONS, CausalTraceConfig

    p = sub.add_parser(
        "trace-causal", help="causal tracing: which layers and positions recall a person"
    )
    _add_common(p, out_help="output folder: trace.json, causal_heatmap.html/png, probe/")
    p.add_argument("--probe", default=None, help="locate's probe dir to compare with")
    p.add_argument("--no-compare", action="store_true", help="skip locate (no --probe)")
    p.add_argument("--no-png", action="store_true", help="HTML heatmap only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        p,
        CausalTraceConfig,
        "split people max_people attribute question corruption noise_scale layers components "
        "backend batch_size",
        corruption={"choices": CORRUPTIONS},
        components={"default": None},
        backend={"choices": BACKENDS},
    )


def _redirect_options(sub) -> None:
    from asru_lab.stages.redirect_config import LOSS_POSITIONS, SOLVERS, RedirectConfig

    p = sub.add_parser("redirect", help="stage 1.2: write a probe's direction into the weights")
    _add_common(p, out_help="output model directory (+ redirect.json)")
    p.add_argument("--probe", required=True, help="steering probe dir (from `asru-lab locate`)")
    p.add_argument("--paper", action="store_true", help="the public code's settings (SGD, ...)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--no-early-exit", action="store_true", help="run full forward passes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        p,
        RedirectConfig,
        "solver lam alpha preserve_weight positions modules lora_r epochs lr batch_size "
        "max_forget max_retain checkpoint_every",
        none=True,
        solver={"choices": SOLVERS},
        positions={"choices": LOSS_POSITIONS},
    )


def _reinforce_options(sub) -> None:
    from asru_lab.stages.reinforce_config import (
        ADVERSARIAL_ATTACKS,
        BOUNDARY_MODES,
        ReinforceConfig,
    )

    p = sub.add_parser("reinforce", help="stage 2: GRPO on the forget and boundary sets")
    _add_common(p, out_help="output model directory (+ training/: metrics, dashboard)")
    p.add_argument("--probe", default=None, help="probe dir: its layer places the boundary")
    p.add_argument("--paper", action="store_true", help="the paper's GRPO settings")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        p,
        ReinforceConfig,
        "rewards reward_weights boundary n_forget n_boundary tasks max_steps epochs "
        "learning_rate num_generations batch_size lora_r save_steps adversarial "
        "adversarial_share ablation_every",
        none=True,
        boundary={"choices": BOUNDARY_MODES},
        adversarial={"choices": ADVERSARIAL_ATTACKS},
        max_steps={"flag": "--steps"},
        learning_rate={"flag": "--lr"},
    )


def _run_options(sub) -> None:
    from asru_lab.evaluation.harness import EvalConfig
    from asru_lab.stages.reinforce import ReinforceConfig

    p = sub.add_parser("run", help="locate -> redirect -> reinforce -> evaluate, one folder")
    _add_common(p, out_help="output folder: probe/, stage1/, final/, results/")
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(p, ReinforceConfig, "max_steps", none=True, max_steps={"flag": "--steps"})
    _add_fields(p, EvalConfig, "max_items")


def _unlearn_options(sub) -> None:
    from asru_lab.baselines import METHODS, UnlearnConfig
    from asru_lab.baselines.gated_steer import GatedSteerConfig
    from asru_lab.baselines.mmunlearner import MMUnlearnerConfig
    from asru_lab.baselines.npo_sam import NpoSamConfig
    from asru_lab.baselines.repnoise import RepNoiseConfig
    from asru_lab.baselines.rmu import RmuConfig

    methods = "\n".join(f"  {name:<12} {method.summary}" for name, method in METHODS.items())
    p = sub.add_parser(
        "unlearn",
        help="run one unlearning method (a baseline or ASRU)",
        epilog=f"methods:\n{methods}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p, out_help="output model dir (+ unlearn.json; probe/ for steer_only)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--paper", action="store_true", help="the public code's settings")
    p.add_argument("--probe", default=None, help="probe dir for steer_only / asru* (else located)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        p,
        UnlearnConfig,
        "lr epochs lora_r max_forget",
        none=True,
        lr={"help": "peak AdamW learning rate, decayed linearly to 0 (default: the method's)"},
    )
    _add_fields(p, MMUnlearnerConfig, "vision_fraction language_fraction min_ratio", none=True)
    _add_fields(p, GatedSteerConfig, "alpha n_retain energy", none=True)
    _add_fields(p, RmuConfig, "coefficient layer steps", none=True)
    _add_fields(p, RepNoiseConfig, "noise_weight", none=True)
    _add_fields(p, NpoSamConfig, "sam_rho", none=True)


def _distill_options(sub) -> None:
    from asru_lab.stages.distill import FORGET_ARMS, DistillConfig

    p = sub.add_parser(
        "distill",
        help="re-grow an unlearned model by distillation (UNDO): a shrunk, perturbed copy "
        "learns its answers about everyone but the forget people",
    )
    _add_common(p, out_help="output model dir (+ unlearn.json with the distillation's record)")
    p.add_argument(
        "--probe", default=None, help="the teacher's probe dir (an inference-time method's)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--all-prompts", action="store_true", help="distil on the whole pool (no --max-prompts)"
    )
    p.add_argument(
        "--last-step",
        action="store_true",
        help="keep the last step's weights (default: the best stop check's, on retain and "
        "pictures)",
    )
    _add_fields(
        p,
        DistillConfig,
        "alpha beta steps batch_size lr min_lr warmup_steps forget splits tasks max_prompts "
        "eval_every eval_items stop_retain stop_general stop_margin",
        none=True,
        forget={"choices": FORGET_ARMS},
    )


def _reproduce_options(sub) -> None:
    from asru_lab.baselines import UnlearnConfig
    from asru_lab.evaluation.harness import EvalConfig
    from asru_lab.evaluation.protocols import PROTOCOLS
    from asru_lab.runs.reproduce import ReproduceConfig

    p = sub.add_parser("reproduce", help="every method x forget ratio: tables, figures, manifest")
    p.add_argument("--out", required=True, help="output folder (e.g. figures/)")
    p.add_argument("--model", default=None, help="HF id or local model dir (default: embedded)")
    p.add_argument(
        "--data",
        default=None,
        help="dataset dir, 'mllmu:<dir>' or 'clear:<dir>' (default: embedded)",
    )
    p.add_argument("--paper", action="store_true", help="the public code's settings")
    p.add_argument("--no-cache", action="store_true", help="recompute every cell")
    p.add_argument("--no-figures", action="store_true", help="tables and manifest only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-tuning",
        action="store_true",
        help="run every method at its own default settings instead of tuning its strength "
        "knob on validation forget people (runs.tuning)",
    )
    p.add_argument(
        "--max-retain-drop",
        type=float,
        default=0.05,
        help="tuning: the largest retain-accuracy drop a chosen setting may cost (default: 0.05)",
    )
    p.add_argument(
        "--tune-on",
        choices=("leak", "attacked"),
        default="leak",
        help="tuning: 'forgets most' by the plain validation forget leak, or by its union under "
        "direction ablation and prefill ('attacked': tuning no longer rewards hiding)",
    )
    p.add_argument(
        "--no-oracle",
        action="store_true",
        help="no retrain-oracle row and no forget quality (synthetic benchmark; without it, "
        "each forget ratio's oracle must be built: build-embedded --oracle --forget-ratio R)",
    )
    p.add_argument(
        "--no-probabilities",
        action="store_true",
        help="skip the answer probability / truth ratio passes (and so forget quality)",
    )
    _add_fields(
        p,
        ReproduceConfig,
        "methods forget_ratios seed cache_dir",
        methods={"default": None},
        forget_ratios={"default": None},
    )
    _add_fields(p, EvalConfig, "max_items protocol shots", protocol={"choices": tuple(PROTOCOLS)})
    _add_fields(
        p,
        UnlearnConfig,
        "lr",
        none=True,
        lr={
            "flag": "--baseline-lr",
            "help": "lr of GA/GradDiff/KL-Min/NPO/MMUnlearner, untuned (2e-5/1e-5/1e-4)",
        },
    )
    p.add_argument(
        "--audit",
        action="store_true",
        help="also audit every method (`audit.*` columns; the retrain oracle as a row)",
    )
    p.add_argument(
        "--audit-max-items",
        type=int,
        default=None,
        help="with --audit: questions per split and measurement (default: AuditConfig's, 64)",
    )


def _export_benchmark_options(sub) -> None:
    p = sub.add_parser("export-benchmark", help="write the benchmark as a user dataset dir")
    _add_common(p, out_help="output directory")


def _build_embedded_options(sub) -> None:
    from asru_lab.runs.build_embedded import FORMAT_CURRICULUM, FORMAT_STAGES, BuildConfig

    p = sub.add_parser("build-embedded", help="train the embedded tiny Qwen3-VL from scratch")
    p.add_argument(
        "--out",
        default=None,
        help="output dir (default: the package's embedded/, or oracles/ with --oracle; "
        "required with --format-stage)",
    )
    steps = _config_class(BuildConfig).steps
    _add_fields(
        p,
        BuildConfig,
        "steps seed threads",
        none=True,
        steps={
            "help": f"optimiser steps (default: {steps}; with --format-stage: every stage's "
            "steps, default each stage's own)"
        },
    )
    p.add_argument(
        "--format-stage",
        action="store_true",
        help="instead of building from scratch, continue the built model --base on "
        "MLLMU-Bench's official prompts (with a replay of its own recipe) into --out",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=list(FORMAT_STAGES),
        default=None,
        metavar="STAGE",
        help="with --format-stage: the stages to run, in order (default: the curriculum "
        f"{' '.join(FORMAT_CURRICULUM)}; one of {', '.join(FORMAT_STAGES)} each)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --format-stage: continue from the stages --out already holds (it is saved "
        "after every stage) when they are the first of those asked",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="DIR",
        help="with --format-stage: the embedded model or retrain oracle to continue (an "
        "oracle needs --oracle with its --forget-ratio and --split-seed)",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="build the retrain oracle: the same recipe without the forget people",
    )
    p.add_argument(
        "--forget-ratio",
        type=float,
        default=0.1,
        help="with --oracle: the forget set's ratio of the known people (default: 0.1)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="with --oracle: the seed that draws the forget set (default: 0)",
    )


def _audit_options(sub) -> None:
    from asru_lab.auditing import AuditConfig

    p = sub.add_parser(
        "audit",
        help="attack an unlearned model: is its forgotten knowledge gone, or only hidden?",
    )
    _add_common(p, out_help="output folder (audit.json, items.jsonl, audit.html)")
    p.add_argument(
        "--probe", default=None, help="probe dir: audit an inference-time method with its hooks"
    )
    p.add_argument(
        "--reference",
        default=None,
        help="the model before unlearning (default: the embedded model for the synthetic "
        "benchmark; 'none' to skip what needs it)",
    )
    p.add_argument(
        "--oracle",
        default=None,
        help="the retrain oracle's dir (default: the shipped oracle of the synthetic forget "
        "set, when it is built; 'none' to skip)",
    )
    p.add_argument(
        "--no-oracle-cache",
        action="store_true",
        help="attack the oracle again even if an earlier audit kept its side on disk (and "
        "keep nothing): see asru_lab.auditing.oracle_cache",
    )
    _add_fields(
        p,
        AuditConfig,
        "attacks max_items relearn_steps relearn_modes relearn_lr relearn_full_lr relearn_data "
        "quant_bits sample_k prefill_words soft_prompt_steps soft_prompt_lr probe_attribute "
        "batch_size",
        none=True,
    )
    p.add_argument(
        "--all-items",
        action="store_true",
        help="ask every forget and test question (AuditConfig max_items None) instead of a "
        "sample of --max-items",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _make_model_options(sub) -> None:
    from asru_lab.models.sizes import DEFAULT_PIXELS, SIZES

    p = sub.add_parser(
        "make-model",
        help="write a random-weight Qwen3-VL at a real size (for measuring cost, not answers)",
    )
    p.add_argument("--size", required=True, help=f"one of {', '.join(SIZES)}")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--shrink", type=int, default=1, help="divide every width by this (layers kept)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="replace one dimension of the size (e.g. --set layers=4; head_dim=none for "
        "hidden / heads); repeatable",
    )
    p.add_argument(
        "--pixels",
        type=int,
        default=DEFAULT_PIXELS,
        help=f"pixel budget per image (default: {DEFAULT_PIXELS} = 448x448 -> 196 image tokens)",
    )
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16", "float16"),
        help="weights' dtype on disk (default: bfloat16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights")


def _finetune_options(sub) -> None:
    from asru_lab.stages.finetune import FinetuneConfig

    p = sub.add_parser("finetune", help="stage 0: LoRA fine-tune a model on a dataset")
    _add_common(p, out_help="output model directory")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA weights unmerged")
    _add_fields(p, FinetuneConfig, "epochs lr", none=True)


# in the order `asru-lab --help` lists them
SUBCOMMANDS = (
    _demo_options,
    _evaluate_options,
    _locate_options,
    _trace_causal_options,
    _redirect_options,
    _reinforce_options,
    _run_options,
    _unlearn_options,
    _distill_options,
    _audit_options,
    _reproduce_options,
    _export_benchmark_options,
    _build_embedded_options,
    _make_model_options,
    _finetune_options,
)
