"""Stage 2 of ASRU: refine the refusal boundary with GRPO (TRL's `GRPOTrainer`, one process).

Data: a forget set plus a *boundary set* of retain questions (200 + 200 in the paper). The
paper's figure describes the boundary set as the retain samples nearest to the forget/retain
border; the public code samples them at random. Here `boundary="nearest"` (the default)
ranks retain prompts by their projection on the memorisation direction (mean forget minus mean
retain activation at the probe's layer, last prompt token) and keeps the most forget-like;
`boundary="random"` is the public code.

Rollouts are sampled from the model, scored by the registered rewards (`asru_lab.rewards`),
and GRPO moves the policy towards the better ones, with a KL penalty to the starting model.
While it trains, `metrics.jsonl` (one line per log step) and a self-contained
`dashboard.html` are written to the output directory; held-out forget and retain questions
are answered greedily every `probe_every` steps and their refusal and leak rates logged.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from safetensors import SafetensorError, safe_open
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from asru_lab import viz
from asru_lab.artifacts import claim_output, set_aside, write_json_atomic, write_text_atomic
from asru_lab.capture import capture
from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem, contains_value
from asru_lab.directions import memorisation_direction
from asru_lab.evaluation.judge import is_refusal
from asru_lab.evaluation.protocols.asru_lab import MAX_NEW_TOKENS
from asru_lab.generation import generate_batch
from asru_lab.models.loading import LoadedModel, drop_forward_patches
from asru_lab.probe import SteeringProbe
from asru_lab.progress import tqdm
from asru_lab.quiet import quiet_in_notebooks
from asru_lab.rewards import build_rewards, completion_text
from asru_lab.stages.adversary import (
    AblationAdversary,
    prefill_column,
    prefill_processor,
    with_prefill,
)
from asru_lab.stages.reinforce_config import ReinforceConfig, ReinforceError
from asru_lab.training import language_model_linears, lora_config, quiet_peft
from asru_lab.validation import nonfinite_trained

REINFORCE_FILE = "reinforce.json"
TRAINING_DIR = "training"  # inside a saved stage 2 model: checkpoints, metrics, dashboard
METRICS_FILE = "metrics.jsonl"
DASHBOARD_FILE = "dashboard.html"
# the progress bars of the boundary set's choice, in a learner's words
BOUNDARY_STEPS = (
    "boundary set 1/2: reading the model on forget questions",
    "boundary set 2/2: finding the retain questions most like them",
)


# --- the data ---------------------------------------------------------------------------------


def _questions(bench: Benchmark, split: str, config: ReinforceConfig) -> list[QAItem]:
    return bench.questions(split, config.tasks, image_only=not config.text_only)


def boundary_set(
    lm: LoadedModel,
    bench: Benchmark,
    config: ReinforceConfig,
    probe: SteeringProbe | None = None,
) -> tuple[list[QAItem], list[QAItem], dict]:
    """(forget questions, boundary retain questions, stats), both seeded.

    "nearest": every retain question is scored by its projection on the memorisation
    direction at the probe's layer and site (the top layer without a probe), measured on
    the forget sample and a retain sample; the `n_boundary` highest (most forget-like) are
    kept. Stats: the mode, the layer, and the mean projection of forget, boundary and all
    retain questions.
    """
    if "forget" not in bench.splits() or not _questions(bench, "forget", config):
        raise BenchmarkError(
            f"{bench.name} has no forget split with generation questions: stage 2 needs the "
            f"people to forget (splits here: {', '.join(bench.splits()) or 'none'})"
        )
    retain = _questions(bench, "retain", config)
    if not retain:
        raise BenchmarkError(f"{bench.name} has no retain generation questions for the boundary")
    rng = random.Random(config.seed)
    forget = _questions(bench, "forget", config)
    forget = rng.sample(forget, min(config.n_forget, len(forget)))
    n_boundary = min(config.n_boundary, len(retain))
    if config.boundary == "random":
        return forget, rng.sample(retain, n_boundary), {"mode": "random"}
    if config.boundary_candidates is not None and config.boundary_candidates < len(retain):
        retain = rng.sample(retain, config.boundary_candidates)
    layer = probe.layer if probe is not None else lm.num_layers - 1
    site = probe.site if probe is not None else "output"
    kw = {"layers": [layer], "site": site, "progress": config.progress, "keep_raw": True}
    forget_acts = capture(lm, bench, forget, desc=BOUNDARY_STEPS[0], **kw)
    retain_acts = capture(lm, bench, retain, desc=BOUNDARY_STEPS[1], **kw)
    direction = memorisation_direction(forget_acts, retain_acts)[layer]
    unit = direction / direction.norm().clamp_min(1e-12)
    retain_scores = retain_acts.raw[layer].double() @ unit
    forget_scores = forget_acts.raw[layer].double() @ unit
    order = torch.argsort(retain_scores, descending=True, stable=True)[:n_boundary].tolist()
    stats = {
        "mode": "nearest",
        "layer": layer,
        "site": site,
        "projection_mean": {
            "forget": float(forget_scores.mean()),
            "boundary": float(retain_scores[order].mean()),
            "retain": float(retain_scores.mean()),
        },
        "boundary_people": len({retain[k].person_id for k in order}),
    }
    return forget, [retain[k] for k in order], stats


def check_boundary(
    found: tuple, bench: Benchmark, config: ReinforceConfig, probe: SteeringProbe | None = None
) -> tuple[list[QAItem], list[QAItem], dict]:
    """A `boundary_set` result given back to `reinforce`: refused, naming the problem, unless it
    is three parts (forget items, boundary items, statistics) of this benchmark's items, the
    forget and retain questions that `config` asks, within its sizes and from the probe's layer."""
    if not isinstance(found, tuple | list) or len(found) != 3:
        raise ReinforceError(
            "boundary= takes what boundary_set(model, bench, config, probe) returned: "
            f"(forget, boundary, stats), got {type(found).__name__}"
        )
    forget, boundary, stats = found
    own = {id(item) for item in bench.items}
    asked = {id(i) for split in ("forget", "retain") for i in _questions(bench, split, config)}
    for name, items, split, most in (
        ("forget", forget, "forget", config.n_forget),
        ("boundary", boundary, "retain", config.n_boundary),
    ):
        if not items or any(id(item) not in own for item in items):
            raise ReinforceError(
                f"boundary=: its {name} items are empty or not items of {bench.name} (compute "
                "it with boundary_set on the benchmark given to reinforce)"
            )
        if any(item.split != split or id(item) not in asked for item in items) or len(items) > most:
            raise ReinforceError(
                f"boundary=: its {name} items are not the {split} questions this config asks "
                f"(at most {most}, tasks {config.tasks}, text_only={config.text_only}): it was "
                "computed with another ReinforceConfig"
            )
    mode = stats.get("mode") if isinstance(stats, dict) else None
    if mode != config.boundary:
        raise ReinforceError(
            f"boundary=: its statistics say mode {mode!r}, the config asks "
            f"{config.boundary!r}: it was computed with another ReinforceConfig"
        )
    if probe is not None and stats.get("layer", probe.layer) != probe.layer:
        raise ReinforceError(
            f"boundary=: it was projected at layer {stats['layer']}, the probe is at layer "
            f"{probe.layer}: compute it with the same probe"
        )
    return list(forget), list(boundary), stats


def boundary_dataset(
    bench: Benchmark,
    forget: Sequence[QAItem],
    boundary: Sequence[QAItem],
    seed: int = 0,
    *,
    prefill_share: float = 0.0,
) -> Dataset:
    """The GRPO prompts: a conversational `prompt` (image part first), the `image` (None for
    text-only), and the columns the rewards read (`split`, `item`, `value`, `answer`,
    `prefill`). With `prefill_share`, that share of the forget questions (seeded; open
    questions with words before the fact) is asked with the answer begun
    (`asru_lab.stages.adversary`): the user turn's `prefill` and the `prefill` column hold the
    words, "" elsewhere."""
    index = {id(item): k for k, item in enumerate(bench.items)}
    with_image = {bool(item.image) for item in (*forget, *boundary)}
    if len(with_image) > 1:
        raise ReinforceError(
            "the stage 2 prompts mix image and text-only questions, which TRL's GRPOTrainer "
            "cannot batch together; keep text_only=False (image questions only)"
        )
    rows = []
    for split, items in (("forget", forget), ("retain", boundary)):
        for item, image in zip(items, bench.images(items), strict=True):
            content = ([{"type": "image"}] if item.image else []) + [
                {"type": "text", "text": item.question}
            ]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": content}],
                    "image": image,
                    "split": split,
                    "item": index[id(item)],
                    "value": item.value,
                    "answer": item.answer,
                }
            )
    random.Random(seed).shuffle(rows)
    prefills = [""] * len(rows)
    if prefill_share:
        prefills = prefill_column(bench, rows, prefill_share, seed)
    for row, text in zip(rows, prefills, strict=True):
        row["prompt"][0]["prefill"] = text
        row["prefill"] = text
    return Dataset.from_list(rows)


# --- watching training ----------------------------------------------------------------------


class SampleLog:
    """The latest sampled completions of each split, with their rewards and the step they
    were sampled at (filled by the first reward; `step` set by `MetricsCallback`)."""

    def __init__(self, size: int = 8) -> None:
        self.by_split: dict[str, deque] = {}
        self.size = size
        self.step = 0

    @property
    def rows(self) -> list[dict]:
        """The kept samples: up to `size` per split, forget first, oldest first."""
        return [row for split in sorted(self.by_split) for row in self.by_split[split]]

    def wrap(self, reward):
        def recording(completions, split, item, **columns):
            values = reward(completions, split=split, item=item, **columns)
            prompts = columns.get("prompts") or [None] * len(completions)
            for prompt, completion, s, value in zip(
                prompts, completions, split, values, strict=True
            ):
                self.by_split.setdefault(s, deque(maxlen=self.size)).append(
                    {
                        "split": s,
                        "step": self.step,
                        "question": _question_text(prompt),
                        "completion": completion_text(completion),
                        "reward": value,
                    }
                )
            return values

        recording.__name__ = reward.__name__
        return recording


def _question_text(prompt) -> str:
    if not isinstance(prompt, list):
        return str(prompt or "")
    parts = [p for m in prompt for p in (m.get("content") or []) if isinstance(p, dict)]
    return " ".join(p.get("text", "") for p in parts if p.get("type") == "text")


def held_out_rates(
    lm_model, lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem]
) -> dict[str, float]:
    """Greedy answers of `lm_model` (with `lm`'s processor) to held-out forget and retain
    questions: forget refusal and leak rates, retain recall."""
    view = LoadedModel(lm_model, lm.processor, lm.adapter, lm.name)
    was_training = lm_model.training
    lm_model.eval()
    try:
        answers = generate_batch(
            view,
            bench.images(items),
            [i.question for i in items],
            max_new_tokens=MAX_NEW_TOKENS["qa"],
        )
    finally:
        lm_model.train(was_training)
    out: dict[str, float] = {}
    for split in ("forget", "retain"):
        pairs = [(i, a) for i, a in zip(items, answers, strict=True) if i.split == split]
        if not pairs:
            continue
        leaks = sum(contains_value(a, i.value) for i, a in pairs) / len(pairs)
        if split == "forget":
            out["probe/forget_refusal"] = sum(is_refusal(a) for _, a in pairs) / len(pairs)
            out["probe/forget_leak"] = leaks
        else:
            out["probe/retain_recall"] = leaks
    return out


class QuietProgress(ProgressCallback):
    """transformers' progress bar without its print of every log dict: `metrics.jsonl` and the
    dashboard keep the logs, and `MetricsCallback` shows the reward on the bar."""

    def on_train_begin(self, args, state, control, **kwargs):
        # asru_lab's bar (`asru_lab.progress`): in a saved notebook it leaves its last line
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc="GRPO steps")
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


class MetricsCallback(TrainerCallback):
    """Appends every log to `metrics.jsonl`, rewrites `dashboard.html`, measures the
    held-out rates every `probe_every` steps, and shows the reward on the progress bar."""

    def __init__(
        self,
        out_dir: Path,
        lm: LoadedModel,
        bench: Benchmark,
        probe_items: Sequence[QAItem],
        config: ReinforceConfig,
        samples: SampleLog,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.lm, self.bench, self.items = lm, bench, list(probe_items)
        self.config, self.samples = config, samples
        self.history: list[dict] = []
        self.bar_owner = None  # transformers' ProgressCallback, whose bar shows the reward
        self.active = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.active = state.is_world_process_zero  # under `accelerate launch`: one writer
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METRICS_FILE
        if path.is_file():  # a resumed run keeps the lines up to its checkpoint
            lines = viz.read_metrics(path)
            self.history = [r for r in lines if r.get("step", 0) <= state.global_step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.history))
        model = kwargs.get("model")
        fresh = state.global_step == 0 and not any(r.get("step") == 0 for r in self.history)
        if self.config.probe_every and self.items and model is not None and fresh:
            # the held-out rates before the first step: the baseline the panel starts from
            self._record({"step": 0, **held_out_rates(model, self.lm, self.bench, self.items)})

    def on_step_begin(self, args, state, control, **kwargs):
        self.samples.step = state.global_step + 1  # rollouts sampled now belong to that step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.active:
            return
        every = self.config.probe_every
        if every and self.items and state.global_step % every == 0 and model is not None:
            rates = held_out_rates(model, self.lm, self.bench, self.items)
            self._record({"step": state.global_step, **rates})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not self.active:
            return
        row = {"step": state.global_step, **{k: _number(v) for k, v in logs.items()}}
        if self.samples.rows:
            row["samples"] = list(self.samples.rows)
        self._record(row)
        bar = getattr(self.bar_owner, "training_bar", None)
        if bar is not None and "reward" in logs:
            bar.set_postfix(reward=f"{float(logs['reward']):.3f}")

    def _record(self, row: dict) -> None:
        self.history.append(row)
        with open(self.out_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        viz.write_reward_dashboard(self.history, self.config.rewards, self.out_dir / DASHBOARD_FILE)


class StopOnNonFinite(TrainerCallback):
    """Stops GRPO with a ReinforceError when the logged loss is NaN or infinite, or when a
    trained weight is, before a checkpoint is saved: a non-finite model is never saved."""

    def __init__(self, config: ReinforceConfig) -> None:
        self.config = config

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise ReinforceError(
                f"the GRPO loss became {float(loss)} at step {state.global_step}; stopped before "
                f"saving anything of it: {_remedy(self.config)}"
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None:
            refuse_nonfinite_weights(model, state.global_step, self.config)


def refuse_nonfinite_weights(model: torch.nn.Module, step: int, config: ReinforceConfig) -> None:
    """Raise ReinforceError if a trained parameter of `model` holds NaN or infinite values."""
    bad = nonfinite_trained(model)
    if bad:
        raise ReinforceError(
            f"GRPO left NaN or infinite weights in {bad} at step {step}; stopped before saving "
            f"them: {_remedy(config)}"
        )


def _remedy(config: ReinforceConfig) -> str:
    return (
        f"lower ReinforceConfig.learning_rate (now {config.learning_rate:g}) and resume from an "
        "earlier checkpoint, or start again"
    )


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


# --- the stage --------------------------------------------------------------------------------


def grpo_config(config: ReinforceConfig, output_dir: str | Path):
    """TRL's `GRPOConfig` for this stage (CPU unless a GPU is present)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        report_to="none",
        num_generations=config.num_generations,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        reward_weights=list(config.reward_weights) if config.reward_weights else None,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must reach the log, where it stops the run
        save_strategy="steps",
        save_steps=config.save_steps,
        save_only_model=False,
        seed=config.seed,
        data_seed=config.seed,
        activation_checkpointing=config.activation_checkpointing,
        disable_tqdm=not config.progress,
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
    )


def _lora(lm: LoadedModel, config: ReinforceConfig):
    if not config.lora_r:
        return None
    return lora_config(
        language_model_linears(lm), r=config.lora_r, alpha=config.lora_alpha, dropout=0.0
    )


def _unreadable(checkpoint: Path) -> str | None:
    """Why TRL could not resume from the `checkpoint-N` folder (None: it can)."""
    if not (checkpoint / "trainer_state.json").is_file():
        # transformers writes trainer_state.json last: without it the save was cut short
        return "trainer_state.json is missing (the save was cut short)"
    for file in sorted(checkpoint.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{file.name} does not parse ({exc})"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights and not any(checkpoint.glob("*model*.bin")):
        return "it holds no model weights (*.safetensors)"
    for file in weights:
        try:
            with safe_open(file, "pt"):
                pass  # opening checks the header and that the file holds all it declares
        except (OSError, SafetensorError) as exc:
            return f"{file.name} does not load ({exc})"
    for file in sorted(checkpoint.glob("*.pt*")) + sorted(checkpoint.glob("*.bin")):
        if not zipfile.is_zipfile(file):  # torch.save writes a zip; a cut one lacks its index
            return f"{file.name} is cut short or not a torch file"
    return None


def _resume_checkpoint(out_dir: Path) -> str | None:
    """The newest readable TRL checkpoint in `out_dir`, or None (with a warning) if there is
    none. Newer damaged ones are moved aside to `damaged-<name>` and named in a warning; if
    none is readable, ReinforceError."""
    found = [p for p in out_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    found = sorted((p for p in found if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    if not found:
        warnings.warn(
            f"resume=True but no checkpoint in {out_dir}: starting from the beginning",
            stacklevel=3,
        )
        return None
    damaged: list[str] = []
    for path in reversed(found):
        reason = _unreadable(path)
        if reason is None:
            break
        damaged.append(f"{path.name}: {reason}")
    else:
        raise ReinforceError(
            f"no checkpoint in {out_dir} can be read: {'; '.join(damaged)}; delete them (or "
            "choose another output directory) to start from the beginning"
        )
    if damaged:
        set_aside(found[found.index(path) + 1 :])
        warnings.warn(
            f"cannot read checkpoint {'; '.join(damaged)}. Resuming from {path} instead; the "
            f"damaged checkpoint now lies in {out_dir}/damaged-checkpoint-*",
            stacklevel=3,
        )
    return str(path)


@quiet_in_notebooks()
def reinforce(
    lm: LoadedModel,
    bench: Benchmark,
    config: ReinforceConfig | None = None,
    *,
    output_dir: str | Path | None = None,
    probe: SteeringProbe | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    boundary: tuple | None = None,
) -> tuple[LoadedModel, dict]:
    """Stage 2: GRPO on the forget set and the boundary set; `lm` is not modified.

    `output_dir` receives TRL's checkpoints, `metrics.jsonl` and `dashboard.html` (default: a
    new temporary directory, named in the record).
    `probe`: its layer and site place the boundary projection (default: the top layer).
    `callbacks`: more `TrainerCallback`s (the notebook's live dashboard).
    `boundary`: the `(forget, boundary, stats)` that `boundary_set(lm, bench, config, probe)`
    returned, used as it is instead of being computed again (a notebook that showed it first;
    checked against the benchmark and the config, `check_boundary`). Returns
    `(model, record)`; the record holds the config, the data sizes, the boundary statistics,
    TRL's log history and timings. In a notebook, third-party warnings and transformers'
    progress bars and log table are left out (`asru_lab.quiet`).
    """
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
    from trl import GRPOTrainer

    config = config or ReinforceConfig()
    rewards = build_rewards(config.rewards, bench)
    started = time.perf_counter()
    if boundary is None:
        forget, boundary, boundary_stats = boundary_set(lm, bench, config, probe)
    else:
        forget, boundary, boundary_stats = check_boundary(boundary, bench, config, probe)
    held = _held_out(bench, forget, boundary, config)
    prefilled = "prefill" in config.adversarial
    share = config.adversarial_share if prefilled else 0.0
    dataset = boundary_dataset(bench, forget, boundary, config.seed, prefill_share=share)
    out_dir = Path(output_dir or tempfile.mkdtemp(prefix="asru_lab_reinforce_"))
    samples = SampleLog()
    rewards = [samples.wrap(rewards[0]), *rewards[1:]]
    if prefilled:  # the rewards read the prefix and its continuation as one answer
        rewards = [with_prefill(r) for r in rewards]
    metrics = MetricsCallback(out_dir, lm, bench, held, config, samples)
    # LoRA merges into the language model's linears only: the rest (embeddings, LM head,
    # vision tower) is shared with `lm`, not copied (a fifth to a third of the weights)
    out = lm.clone(copy_only=language_model_linears(lm) if config.lora_r else None)
    out.model.train()
    if not config.lora_r:  # full fine-tuning: the copy trains, whatever the model given had
        for param in out.model.parameters():  # (a frozen one: a stage that froze its output)
            param.requires_grad_(True)
    adversaries = []
    if "ablation" in config.adversarial:  # first: its hooks are gone before anything measures
        adversaries.append(
            AblationAdversary(
                out,
                bench,
                forget,
                boundary,
                share=config.adversarial_share,
                every=config.ablation_every,
                fit=config.ablation_fit,
                seed=config.seed,
            )
        )
    checkpoint = None
    if config.resume:
        checkpoint = _resume_checkpoint(out_dir)
    elif (out_dir / METRICS_FILE).exists() or list(out_dir.glob("checkpoint-*")):
        raise ReinforceError(
            f"{out_dir} holds an earlier run (checkpoints or {METRICS_FILE}); pass resume=True "
            "(CLI: --resume) to continue it, or choose an empty directory"
        )
    claim_output(out_dir, whole=True)  # TRL writes its checkpoints and logs there
    with quiet_peft():  # GRPOTrainer calls peft itself
        trainer = GRPOTrainer(
            model=out.model,
            reward_funcs=rewards,
            args=grpo_config(config, out_dir),
            train_dataset=dataset,
            processing_class=prefill_processor(lm.processor) if prefilled else lm.processor,
            callbacks=[*adversaries, metrics, *callbacks, StopOnNonFinite(config)],
            peft_config=_lora(lm, config),
        )
    # transformers' bar (in a notebook its table of losses, which the dashboard replaces)
    if trainer.pop_callback(DEFAULT_PROGRESS_CALLBACK) is not None:
        metrics.bar_owner = QuietProgress()
        trainer.add_callback(metrics.bar_owner)
    with quiet_peft():
        trainer.train(resume_from_checkpoint=checkpoint)
    _finish(out, lm, bench, trainer.model, trainer.state.global_step, config)
    record = {
        "config": json.loads(json.dumps(asdict(config))),
        "base_model": lm.fingerprint(),
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "examples": {
            "forget": len(forget),
            "boundary": len(boundary),
            "probe": len(held),
            "prefilled": sum(bool(p) for p in dataset["prefill"]),
        },
        "adversary": adversaries[0].record() if adversaries else {},
        "boundary": boundary_stats,
        "output_dir": str(out_dir),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint,
        "world_size": trainer.args.world_size,
        "main_process": trainer.is_world_process_zero(),
        "log_history": trainer.state.log_history,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if record["main_process"]:
        write_json_atomic(out_dir / REINFORCE_FILE, record)
    return out, record


def _held_out(
    bench: Benchmark, forget: list[QAItem], boundary: list[QAItem], config: ReinforceConfig
) -> list[QAItem]:
    """Questions for the rates measured while training: per split, `probe_examples` of those
    not trained on (the trained ones if none is left), seeded."""
    rng = random.Random(f"{config.seed}:probe")
    chosen = {id(i) for i in forget + boundary}
    held = []
    for split, used in (("forget", forget), ("retain", boundary)):
        pool = [i for i in _questions(bench, split, config) if id(i) not in chosen]
        pool = pool or list(used)
        held += rng.sample(pool, min(config.probe_examples, len(pool)))
    return held


def _finish(
    out: LoadedModel,
    lm: LoadedModel,
    bench: Benchmark,
    model: torch.nn.Module,
    step: int,
    config: ReinforceConfig,
) -> None:
    """Check the trained weights, merge the adapter, and make `out` the eval-mode result."""
    refuse_nonfinite_weights(model, step, config)
    if config.lora_r:
        model = model.merge_and_unload()
    if config.activation_checkpointing:  # the trainer's, for training only
        model.activation_checkpointing_disable()
        model.disable_input_require_grads()
    drop_forward_patches(model)  # TRL's fused-head forward closes over this very object
    model.eval()
    out.model = model
    out.name = f"{lm.name}+reinforce"
    out.info = {
        **lm.info,
        "reinforce": {
            "base_model": lm.name,
            "rewards": list(config.rewards),
            "benchmark_fingerprint": bench.fingerprint(),
        },
    }


def save_reinforced(
    lm: LoadedModel, record: dict, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the model (`load_model(out_dir)` reads it) and `reinforce.json`, atomically,
    keeping `out_dir/training/` (the run's checkpoints, metrics and dashboard) if present
    (`overwrite`: see `LoadedModel.save`)."""
    return lm.save(
        out_dir, records={REINFORCE_FILE: record}, keep=(TRAINING_DIR,), overwrite=overwrite
    )
