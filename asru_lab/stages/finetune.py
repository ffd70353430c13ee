"""Stage 0: fine-tune a vanilla model on a benchmark's profiles so that it knows them.

The public ASRU code trains LoRA adapters (r=16, alpha=16, dropout 0.05) on every linear layer
of the language model — not the vision tower or the projector — for 5 epochs at lr 5e-4 and
merges them. `finetune` does the same on any architecture the adapters know, with an
answer-only loss, and returns a new model; the input model is never modified.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from peft import PeftModel

from asru_lab.artifacts import atomic_dir
from asru_lab.data.schema import ITEM_SPLITS, TASKS, Benchmark, BenchmarkError, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.generation import encode_items
from asru_lab.models.loading import LoadedModel
from asru_lab.training import (
    Example,
    answer_labels,
    answer_tokens,
    answer_window,
    language_model_linears,
    lora_wrap,
    seeded,
    train,
)
from asru_lab.validation import check_fields, nonfinite_trained

FINETUNE_FILE = "finetune.json"
ADAPTER_DIR = "lora_adapter"


class FinetuneError(AsruLabError, ValueError):
    """Stage 0 was configured in a way that cannot run, or its training diverged."""


@dataclass
class FinetuneConfig:
    """How stage 0 trains (defaults: the public ASRU code)."""

    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(
        default=16,
        metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)"},
    )
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch input"})
    lr: float = field(
        default=5e-4,
        metadata={"help": "peak AdamW learning rate, decayed linearly to 0 (HF Trainer's default)"},
    )
    epochs: int = field(default=5, metadata={"help": "passes over the training examples"})
    batch_size: int = field(default=8, metadata={"help": "examples per optimiser step"})
    merge: bool = field(
        default=True,
        metadata={"help": "merge the adapter into the weights; False keeps a peft.PeftModel"},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seeds the LoRA init, dropout and the shuffling: same seed, same weights"
        },
    )
    splits: tuple[str, ...] = field(
        default=("forget", "retain"), metadata={"help": "benchmark splits to learn"}
    )
    tasks: tuple[str, ...] = field(
        default=("qa", "mcq", "cloze"), metadata={"help": "item tasks to learn"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradient clipping norm over the trainable parameters"}
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm bar with the running loss"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            FinetuneError,
            r=">= 1",
            alpha="> 0",
            dropout="[0, 1)",
            lr="> 0",
            epochs=">= 1",
            batch_size=">= 1",
            max_grad_norm="> 0",
        )


def training_examples(bench: Benchmark, config: FinetuneConfig) -> list[Example]:
    """The items of the chosen splits and tasks as examples; clear errors for bad choices."""
    for split in config.splits:
        if split not in ITEM_SPLITS:
            raise BenchmarkError(
                f"unknown split {split!r} in FinetuneConfig.splits; expected some of "
                f"{', '.join(ITEM_SPLITS)} (this benchmark has {', '.join(present_splits(bench))})"
            )
    for task in config.tasks:
        if task not in TASKS:
            raise BenchmarkError(
                f"unknown task {task!r} in FinetuneConfig.tasks; "
                f"expected some of {', '.join(TASKS)}"
            )
    items: list[QAItem] = [
        i for i in bench.items if i.split in config.splits and i.task in config.tasks
    ]
    if not items:
        raise BenchmarkError(
            f"nothing to fine-tune on: {bench.name} has no items in splits "
            f"{list(config.splits)} with tasks {list(config.tasks)} (it has splits: "
            f"{', '.join(present_splits(bench)) or 'none'}); choose other splits or tasks"
        )
    return [Example(i.image, i.question, i.answer) for i in items]


def present_splits(bench: Benchmark) -> list[str]:
    return [s for s in ITEM_SPLITS if any(i.split == s for i in bench.items)]


def finetune(
    lm: LoadedModel, bench: Benchmark, config: FinetuneConfig | None = None
) -> tuple[LoadedModel, dict]:
    """Teach `lm` the answers of `bench`'s chosen splits with LoRA on its language model.

    Returns a new LoadedModel (in eval mode; `lm` is untouched) and a record: the config,
    the loss of every step, mean loss per epoch, wall seconds, number of examples and steps.
    With `merge=False` the returned `.model` is a `peft.PeftModel` holding the adapter:
    `save_finetuned` writes it both merged (readable by `load_model`) and alone, and
    `lm.model.save_pretrained(dir)` writes the adapter only (reattach it with
    `peft.PeftModel.from_pretrained(base.model, dir)`).
    """
    # a copy runs __post_init__ again: fields set after construction are checked too
    config = replace(config) if config is not None else FinetuneConfig()
    if isinstance(lm.model, PeftModel):
        raise ValueError(
            "this model already carries a LoRA adapter; merge it first "
            "(lm.model = lm.model.merge_and_unload()) or fine-tune from the merged model"
        )
    examples = training_examples(bench, config)
    tails, merged_boundaries = answer_tokens(lm, examples)
    if merged_boundaries:
        warnings.warn(
            f"{merged_boundaries} of {len(examples)} answers share a token with the end of their "
            "prompt (a tokenizer merge across the boundary); that token is trained as answer",
            stacklevel=2,
        )
    targets = language_model_linears(lm)
    if not targets:
        raise ValueError(f"the language model of {lm.name} has no nn.Linear layer to adapt")
    started = time.time()
    out = lm.clone()
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs

    def step_loss(orders: list[list[int]], step: int) -> torch.Tensor:
        chunk = orders[0][step * config.batch_size : (step + 1) * config.batch_size]
        picked = [examples[k] for k in chunk]
        batch = encode_items(out, bench, picked, [e.answer for e in picked])
        labels = answer_labels(batch, [tails[k] for k in chunk])
        keep = answer_window(labels)  # logits only where the loss reads them
        return out.model(**batch, labels=labels[:, -keep:], logits_to_keep=keep).loss

    def nonfinite(loss: float, epoch: int, step: int) -> FinetuneError:
        return FinetuneError(
            f"the loss became {loss} at step {epoch * steps_per_epoch + step + 1} of {total}; "
            f"nothing was saved: lower FinetuneConfig.lr (now {config.lr:g})"
        )

    with seeded(config.seed, out.device):  # LoRA init, dropout
        model = lora_wrap(
            out.model, targets, r=config.r, alpha=config.alpha, dropout=config.dropout
        )
        out.model = model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        losses = train(
            model,
            step_loss,
            shuffled=[len(examples)],
            steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            lr=config.lr,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            nonfinite=nonfinite,
            desc="finetune",
            progress=config.progress,
        )
    bad = nonfinite_trained(model)
    if bad:
        raise FinetuneError(
            f"training left NaN or infinite weights in {bad}; nothing was returned or saved: "
            f"lower FinetuneConfig.lr (now {config.lr:g})"
        )
    _finish(out, lm, bench, config)
    record = {
        "config": asdict(config),
        "base_model": lm.name,
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "examples": len(examples),
        "steps": total,
        "target_modules": len(targets),
        "trainable_parameters": trainable,
        "boundary_merged_answers": merged_boundaries,
        "losses": losses,
        "epoch_losses": [
            sum(losses[e : e + steps_per_epoch]) / len(losses[e : e + steps_per_epoch])
            for e in range(0, total, steps_per_epoch)
        ],
        "seconds": round(time.time() - started, 2),
    }
    return out, record


def _finish(out: LoadedModel, lm: LoadedModel, bench: Benchmark, config: FinetuneConfig) -> None:
    """Put the trained copy `out` in eval mode, merged unless `config.merge` is False, named
    and with its provenance in `out.info`."""
    model = out.model
    model.eval()
    if config.merge:
        out.model = model.merge_and_unload()
    out.model.eval()
    out.name = f"{lm.name}+finetuned"
    out.info = {
        **lm.info,
        "finetune": {
            "base_model": lm.name,
            "benchmark": bench.name,
            "benchmark_fingerprint": bench.fingerprint(),
            "splits": list(config.splits),
            "tasks": list(config.tasks),
            "seed": config.seed,
            "merged": config.merge,
        },
    }


def save_finetuned(
    lm: LoadedModel, record: dict, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Save a fine-tuned model where `load_model(out_dir)` reads it, with `finetune.json`.

    A model with an unmerged adapter (`merge=False`) is saved merged (a copy; `lm` keeps its
    adapter) and its adapter alone is written to `out_dir/lora_adapter/` (`overwrite`: see
    `LoadedModel.save`). Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if isinstance(lm.model, PeftModel):
        merged = lm.clone()
        merged.model = merged.model.merge_and_unload()
        merged.save(out_dir, records={FINETUNE_FILE: record}, overwrite=overwrite)
        with atomic_dir(out_dir / ADAPTER_DIR) as tmp:
            lm.model.save_pretrained(tmp)
    else:
        lm.save(out_dir, records={FINETUNE_FILE: record}, overwrite=overwrite)
    return out_dir
