"""The quantisation attack (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via
quantization"): round the audited model's weights to 8 or 4 bits, then ask again.

Unlearning by small weight updates can fall inside one quantisation step: the unlearned weights
round to the same grid points as the original model's, and the forgotten facts come back (in
their setting 4 bits restored most of it, 8 bits little). A deployment that quantises the
model runs this attack without meaning to.

What is quantised: the weight of every `torch.nn.Linear` of the model — the language model's,
the vision tower's and the merger's, and an untied LM head (a matrix product like the others).
Round-to-nearest, symmetric, one scale per output channel (row), from the row's largest
magnitude; no calibration data, so nothing of the forget set enters through the quantiser.
What is not: biases, norms, the patch embedding (a convolution) and the token embedding, as a
weight-only quantiser keeps them; and an LM head *tied* to the token embedding (its weight is
the embedding table: rounding it would round the input embeddings too, and untying it to round
only the output side would audit a model with one more matrix than the shipped one).
`left_out_tied` names it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from asru_lab.models.loading import LoadedModel

from .attacks import Subject, no_attack, prefill


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` (`[out, in]`) rounded to `bits`-bit integers and scaled back, in its dtype:
    per row, scale = max|w| / (2^(bits-1) - 1) and w_q = clamp(round(w / scale), ±(2^(bits-1)
    - 1)) · scale (symmetric: the most negative integer is unused). A row of zeros stays zero."""
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / levels
    scale = scale.masked_fill(scale == 0, 1.0)  # a zero row: any scale keeps it zero
    return ((w / scale).round().clamp(-levels, levels) * scale).to(weight.dtype)


def quantized_linears(lm: LoadedModel) -> tuple[list[str], list[str]]:
    """(full module names of the linears the attack quantises, those left in full precision:
    an LM head tied to the token embedding)."""
    embedding = lm.adapter.embed_tokens(lm.model).weight
    quantized, tied = [], []
    for name, module in lm.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            (tied if module.weight is embedding else quantized).append(name)
    return quantized, tied


def quantize(subject: Subject) -> tuple[dict, list[dict]]:
    """Per width in `AuditConfig.quant_bits` ("int8", "int4"): on a quantised copy of the
    audited model (its probe applied to the copy), the no-attack answers — forget and test
    leak, retain recall (a width that loses it broke the model: `report.void_attacks`) — and
    the prefill attack's under "prefill"; with `weight_error`, the relative Frobenius error of
    the quantised weights (‖W_q − W‖ / ‖W‖ over all of them). The audited model is unchanged:
    the attack holds one copy of the quantised linears (about the model's size) while it runs."""
    names, tied = quantized_linears(subject.lm)
    # one copy of the quantised linears serves every width; the other weights are shared
    twin = subject.lm.clone(copy_only=names)
    originals = dict(subject.lm.model.named_modules())
    copies = dict(twin.model.named_modules())
    quantized = replace(subject, lm=twin)
    out: dict = {}
    records: list[dict] = []
    for bits in subject.config.quant_bits:
        width = f"int{bits}"
        error = total = 0.0
        with torch.no_grad():
            for name in names:
                weight = originals[name].weight
                rounded = fake_quantize(weight, bits)
                copies[name].weight.copy_(rounded)
                error += float((rounded.float() - weight.float()).pow(2).sum())
                total += float(weight.float().pow(2).sum())
        plain, asked = no_attack(quantized)
        prefilled, started = prefill(quantized, variants=("name",))
        out[width] = {
            **plain,
            "prefill": prefilled,
            "weight_error": math.sqrt(error / total) if total else 0.0,
            "n_linears": len(names),
            "left_out_tied": tied,
        }
        for variant, mine in ((width, asked), (f"{width}+prefill", started)):
            records += [{**r, "attack": "quantize", "variant": variant} for r in mine]
    return out, records
