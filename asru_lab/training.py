"""The training kernel shared by stage 0 (`finetune`), stage 1.2's SGD solver (`redirect`),
stage 2's LoRA (`reinforce`) and the gradient baselines.

Examples with answer-only labels, LoRA on the language model's linear layers, and one
optimisation loop: AdamW decayed linearly to 0, seeded shuffling, gradient clipping, a refusal
of non-finite losses and a progress bar with the running loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from asru_lab.generation import build_prompt
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm

IGNORE_INDEX = -100  # label value the loss skips (prompt and padding)


@dataclass(frozen=True)
class Example:
    """One training example: prompt (image + question) and the answer to learn."""

    image: str | None
    question: str
    answer: str


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


def answer_window(labels: torch.Tensor) -> int:
    """How many last positions of a left-padded batch a loss on `labels` needs logits for:
    from the position before the first answer token to the end (at least 2). Pass it as
    `logits_to_keep` with `labels[:, -window:]`: the loss is the same, and the logits are
    batch x window x vocab floats instead of batch x length x vocab (151 936 columns on a real
    Qwen3-VL)."""
    answered = (labels != IGNORE_INDEX).any(0).nonzero()
    length = labels.shape[1]
    window = length - int(answered[0]) + 1 if len(answered) else 2
    return min(max(window, 2), length)


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


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Run the block without the FutureWarnings peft 0.21 and TRL 1.16 raise when they wrap a
    model or switch its activation checkpointing (deprecated names; nothing for users to do)."""
    with warnings.catch_warnings():
        # peft 0.21 reads an attribute transformers 5 deprecated; nothing for users to do
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        # TRL 1.16 calls the gradient_checkpointing_* names transformers 5 deprecated
        warnings.filterwarnings("ignore", "`gradient_checkpointing_", FutureWarning)
        yield


def lora_config(targets: list[str], *, r: int, alpha: int, dropout: float) -> LoraConfig:
    """LoRA of rank `r` (update scaled by alpha / r, `dropout` on its input) on `targets`."""
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )


def lora_wrap(
    model: nn.Module, targets: list[str], *, r: int, alpha: int, dropout: float
) -> PeftModel:
    """`model` with LoRA adapters on the modules named `targets` (only they train).

    The adapters' initialisation draws from torch's global RNG: seed it first (`seeded`).
    """
    with quiet_peft():
        return get_peft_model(model, lora_config(targets, r=r, alpha=alpha, dropout=dropout))


@contextmanager
def activation_checkpointing(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Run the block with activation checkpointing on `model` (a transformers model, or a PEFT
    model around one) when `on`: in training, each decoder layer keeps only its input and
    recomputes the rest during the backward pass, so a step holds one layer's activations
    instead of every layer's (about a third more compute; the same gradients). Off again
    afterwards; `model` must be the caller's own (its layers are flagged)."""
    if not on:
        yield
        return
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(base).__name__} does not support activation checkpointing; turn it off"
        )
    # non-reentrant: frozen layers (LoRA training) need no input that requires grad
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        base.activation_checkpointing_disable()
        base.disable_input_require_grads()  # the embedding hook the enable call added


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU and `device`) seeded with `seed`: LoRA init
    and dropout repeat from run to run; the caller's RNG state is restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def lr_factor(step: int, total: int) -> float:
    """Linear decay from 1 at step 0 to 0 after the last step."""
    return 1.0 - step / total


StepLoss = Callable[[list[list[int]], int], torch.Tensor]


def train(
    model: nn.Module,
    step_loss: StepLoss,
    *,
    shuffled: Sequence[int],
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    max_grad_norm: float,
    seed: int,
    nonfinite: Callable[[float, int, int], Exception],
    desc: str,
    progress: bool,
    grad_masks: Mapping[nn.Parameter, torch.Tensor] | None = None,
) -> list[float]:
    """Train `model`'s parameters that require grad; returns the loss of every step.

    Every epoch each example set of size `shuffled[j]` gets a fresh permutation (one
    `torch.Generator` seeded with `seed`, drawn in that order); `step_loss(orders, step)`
    computes the loss of step `step` of the epoch from them. AdamW (no weight decay) at `lr`
    decays linearly to 0 over `steps_per_epoch * epochs` steps, gradients are clipped to
    `max_grad_norm`. A non-finite loss raises `nonfinite(loss, epoch, step)` (both from 0)
    before the step is taken. `grad_masks`: parameter -> a 0/1 tensor of its shape that its
    gradient is multiplied by before clipping, so that only the weights marked 1 move (AdamW
    without weight decay never moves a weight whose gradient is always 0).
    """
    total = steps_per_epoch * epochs
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total))
    shuffler = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, disable=not progress)
    try:
        for epoch in range(epochs):
            orders = [torch.randperm(n, generator=shuffler).tolist() for n in shuffled]
            for step in range(steps_per_epoch):
                # cleared before the step's loss: a loss may backpropagate a part itself
                # (sharpness-aware NPO's perturbed forget term) before returning the rest
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(orders, step)
                if not torch.isfinite(loss):
                    raise nonfinite(float(loss), epoch, step)
                loss.backward()
                for p, mask in (grad_masks or {}).items():
                    if p.grad is not None:
                        p.grad.mul_(mask)
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        bar.close()
    return losses
