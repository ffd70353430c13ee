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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from tqdm.auto import tqdm

from asru_lab.artifacts import atomic_dir
from asru_lab.data.schema import ITEM_SPLITS, TASKS, Benchmark, BenchmarkError, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.generation import build_prompt, encode
from asru_lab.models.loading import LoadedModel
from asru_lab.validation import check_fields, nonfinite_trained

FINETUNE_FILE = "finetune.json"
ADAPTER_DIR = "lora_adapter"
IGNORE_INDEX = -100  # label value the loss skips (prompt and padding)


class FinetuneError(AsruLabError, ValueError):
    """Stage 0 was configured in a way that cannot run, or its training diverged."""


@dataclass
class FinetuneConfig:
    """How stage 0 trains (defaults: the public ASRU code)."""

    r: int = 16  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.05  # dropout on the LoRA branch input
    lr: float = 5e-4  # peak AdamW learning rate, decayed linearly to 0 (HF Trainer's default)
    epochs: int = 5  # passes over the training examples
    batch_size: int = 8  # examples per optimiser step
    merge: bool = True  # merge the adapter into the weights; False keeps a peft.PeftModel
    seed: int = 0  # seeds the LoRA init, dropout and the shuffling: same seed, same weights
    splits: tuple[str, ...] = ("forget", "retain")  # benchmark splits to learn
    tasks: tuple[str, ...] = ("qa", "mcq", "cloze")  # item tasks to learn
    max_grad_norm: float = 1.0  # gradient clipping norm over the trainable parameters
    progress: bool = True  # show a tqdm bar with the running loss

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


@dataclass(frozen=True)
class Example:
    """One training example: prompt (image + question) and the answer to learn."""

    image: str | None
    question: str
    answer: str


def language_model_linears(lm: LoadedModel) -> list[str]:
    """Full module names (from `lm.model`) of every nn.Linear in the language model.

    The vision tower, the projector/merger and the LM head lie outside it and are left out.
    """
    language_model = lm.adapter.language_model(lm.model)
    prefix = next(name for name, module in lm.model.named_modules() if module is language_model)
    return [
        f"{prefix}.{name}" if prefix else name
        for name, module in language_model.named_modules()
        if isinstance(module, nn.Linear)
    ]


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


def answer_tokens(lm: LoadedModel, examples: list[Example]) -> tuple[list[list[int]], int]:
    """Per example, the token ids that end its prompt+answer+eos sequence and are the answer.

    Found in context (prompt and full text tokenised, their common prefix removed), so a BPE
    merge across the prompt/answer boundary is handled: the merged token counts as answer.
    Also returns how many answers tokenise differently standalone than appended.
    """
    tok = lm.tokenizer
    eos = tok.eos_token or ""
    tails, merged = [], 0
    for ex in examples:
        prompt = build_prompt(lm, ex.question, ex.image is not None)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(prompt + ex.answer + eos, add_special_tokens=False)["input_ids"]
        shared = 0
        for a, b in zip(prompt_ids, full_ids, strict=False):
            if a != b:
                break
            shared += 1
        tail = full_ids[shared:]
        if tail != tok(ex.answer + eos, add_special_tokens=False)["input_ids"]:
            merged += 1
        tails.append(tail)
    return tails, merged


def answer_labels(batch: dict[str, torch.Tensor], tails: list[list[int]]) -> torch.Tensor:
    """Labels for a left-padded batch: row r's answer tokens `tails[r]` at its end, -100 elsewhere.

    Checks that each row really ends with its answer, so a processor that pads on the right
    or tokenises differently from its tokenizer fails loudly instead of training on the prompt.
    """
    ids = batch["input_ids"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, tail in enumerate(tails):
        n = len(tail)
        if n >= ids.shape[1] or ids[row, -n:].tolist() != tail:
            raise RuntimeError(
                f"row {row} of the encoded batch does not end with its answer tokens {tail}; the "
                "processor must pad on the left (processor.tokenizer.padding_side = 'left') and "
                "tokenise text as its tokenizer does"
            )
        labels[row, -n:] = ids[row, -n:]
    return labels


def lr_factor(step: int, total: int) -> float:
    """Linear decay from 1 at step 0 to 0 after the last step."""
    return 1.0 - step / total


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
    device = out.device
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    losses: list[float] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)  # LoRA init and dropout
        lora = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            bias="none",
        )
        with warnings.catch_warnings():
            # peft 0.21 reads an attribute transformers 5 deprecated; nothing for users to do
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            model = get_peft_model(out.model, lora)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total)
        )
        shuffler = torch.Generator().manual_seed(config.seed)
        out.model = model
        model.train()
        bar = tqdm(total=total, desc="finetune", disable=not config.progress)
        try:
            for _ in range(config.epochs):
                order = torch.randperm(len(examples), generator=shuffler).tolist()
                for s in range(0, len(order), config.batch_size):
                    chunk = order[s : s + config.batch_size]
                    batch_ex = [examples[k] for k in chunk]
                    images = [bench.load_image(e.image) if e.image else None for e in batch_ex]
                    batch = encode(
                        out,
                        images,
                        [e.question for e in batch_ex],
                        [e.answer for e in batch_ex],
                    )
                    labels = answer_labels(batch, [tails[k] for k in chunk])
                    loss = model(**batch, labels=labels).loss
                    if not torch.isfinite(loss):
                        raise FinetuneError(
                            f"the loss became {float(loss)} at step {len(losses) + 1} of {total}; "
                            f"nothing was saved: lower FinetuneConfig.lr (now {config.lr:g})"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finally:
            bar.close()
    bad = nonfinite_trained(model)
    if bad:
        raise FinetuneError(
            f"training left NaN or infinite weights in {bad}; nothing was returned or saved: "
            f"lower FinetuneConfig.lr (now {config.lr:g})"
        )
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
    record = {
        "config": asdict(config),
        "base_model": lm.name,
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "examples": len(examples),
        "steps": total,
        "target_modules": len(targets),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "boundary_merged_answers": merged_boundaries,
        "losses": losses,
        "epoch_losses": [
            sum(losses[e : e + steps_per_epoch]) / len(losses[e : e + steps_per_epoch])
            for e in range(0, total, steps_per_epoch)
        ],
        "seconds": round(time.time() - started, 2),
    }
    return out, record


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
