"""Activation checkpointing (`training.activation_checkpointing`, on in the audit's relearning
of large models): the same gradients as without it, a fraction of the saved activations, and
the model left as it was found."""

from __future__ import annotations

import torch
from torch.autograd.graph import saved_tensors_hooks

from asru_lab.generation import encode_items
from asru_lab.training import (
    Example,
    activation_checkpointing,
    answer_labels,
    answer_tokens,
    answer_window,
    language_model_linears,
    lora_wrap,
    seeded,
)


def _lora_step(lm, bench, on: bool) -> tuple[dict[str, torch.Tensor], int]:
    """LoRA gradients of one answer-only loss on 4 image questions, and the bytes the autograd
    graph saved for the backward pass."""
    twin = lm.clone(copy_only=())
    items = bench.questions("forget", "qa", image_only=True)[:4]
    examples = [Example(i.image, i.question, i.answer) for i in items]
    tails, _ = answer_tokens(twin, examples)
    batch = encode_items(twin, bench, items, [i.answer for i in items])
    labels = answer_labels(batch, tails)
    keep = answer_window(labels)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.untyped_storage().nbytes()
        return t

    with seeded(0, twin.device):
        peft_model = lora_wrap(twin.model, language_model_linears(twin), r=4, alpha=4, dropout=0)
    peft_model.train()
    with activation_checkpointing(peft_model, on):
        with saved_tensors_hooks(pack, lambda t: t):  # what the forward pass keeps
            loss = peft_model(
                **batch, labels=labels[:, -keep:], logits_to_keep=keep, use_cache=False
            ).loss
        loss.backward()
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    flagged = [m for m in twin.model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert not flagged, "checkpointing must be off again after the block"
    assert not getattr(twin.model, "_require_grads_hooks", None)
    return grads, saved


def test_checkpointing_gives_the_same_gradients_from_fewer_saved_activations(lm, bench):
    plain, saved_plain = _lora_step(lm, bench, on=False)
    checkpointed, saved_checkpointed = _lora_step(lm, bench, on=True)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert any(float(g.abs().sum()) > 0 for g in plain.values())
    # checkpointed, the decoder layers keep their inputs only
    assert saved_checkpointed < saved_plain / 3, (saved_checkpointed, saved_plain)
