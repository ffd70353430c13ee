"""Black-box and white-box attacks that try to make an unlearned model say a forgotten fact:
direction ablation, prefilling the answer, and perturbed portraits. Each returns its numbers
and the per-item records (every answer, inspectable).

The questions are fixed by `Subject` (seeded samples of the forget, test and retain splits),
so every attack asks the same ones.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageFilter, ImageOps

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.generation import fact_prefix
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe

from .config import AuditConfig
from .measure import ablated, last_states, leak_records, rate

ATTACKED_SPLITS = ("forget", "test")


@dataclass
class Subject:
    """The audited model, the probe of an inference-time method (applied whenever it runs),
    and the questions every attack asks (split -> a seeded sample of its qa items)."""

    lm: LoadedModel
    bench: Benchmark
    config: AuditConfig
    probe: SteeringProbe | None = None
    questions: dict[str, list[QAItem]] = field(default_factory=dict)

    def applied(self) -> AbstractContextManager:
        """The audited model as the method answers: its probe's hooks on (if it has one)."""
        return self.applied_to(self.lm)

    def applied_to(self, lm: LoadedModel) -> AbstractContextManager:
        """The method's probe applied to `lm` (a copy of the audited model)."""
        return self.probe.apply(lm) if self.probe is not None else nullcontext()


def leaks(records: Sequence[dict]) -> dict:
    """Forget and test leak (and refusal) of an attack's records, with their counts."""
    out: dict = {}
    for split in (*ATTACKED_SPLITS, "retain"):
        mine = [r for r in records if r["split"] == split]
        if not mine:
            continue
        key = "recall" if split == "retain" else "leak"
        out[f"{split}_{key}"] = rate(mine)
        out[f"{split}_refusal"] = rate(mine, "refusal")
        out[f"n_{split}"] = len(mine)
    return out


def ask(
    subject: Subject,
    splits: Sequence[str],
    attack: str,
    inside: Callable[[], AbstractContextManager] = nullcontext,
    **kwargs,
) -> list[dict]:
    """`leak_records` of the subject's questions of `splits`, with its hooks applied and then
    those of `inside` (an attack's hooks run after the method's on the same layer)."""
    records: list[dict] = []
    with subject.applied(), inside():
        for split in splits:
            records += leak_records(
                subject.lm,
                subject.bench,
                subject.questions[split],
                subject.config,
                attack=attack,
                desc=f"{attack}: {split}",
                **kwargs,
            )
    return records


def no_attack(subject: Subject) -> tuple[dict, list[dict]]:
    """The model as it is: forget and test leak, retain recall."""
    records = ask(subject, (*ATTACKED_SPLITS, "retain"), "none")
    return leaks(records), records


# --- direction ablation -------------------------------------------------------------------


def _mean_states(subject: Subject, lm: LoadedModel, items, applied, desc: str) -> torch.Tensor:
    with applied():
        states = last_states(
            lm,
            subject.bench,
            items,
            batch_size=subject.config.batch_size,
            progress=subject.config.progress,
            desc=desc,
        )
    return states.double().mean(0)


def ablation(
    subject: Subject, reference: LoadedModel | None, baseline: list[dict]
) -> tuple[dict, list[dict]]:
    """Project directions out of every layer's residual stream, then ask again.

    (a) `reference`: per layer, mean(audited) − mean(reference) of the residual stream at the
    last prompt token over the forget questions — what unlearning added there — projected out
    at that layer. (b) `refusal`: the audited model's own refusal direction per layer, mean over
    the forget questions it refuses − mean over the retain questions it answers (from
    `baseline`, the no-attack answers). Each reports forget/test leak and retain recall (an
    attack that breaks the model recovers nothing: check that recall stays).
    """
    out: dict = {}
    records: list[dict] = []
    forget = subject.questions["forget"]
    variants: dict[str, dict[int, torch.Tensor] | str] = {}
    audited_mean = _mean_states(subject, subject.lm, forget, subject.applied, "states: audited")
    if reference is None:
        variants["reference"] = "no reference model given"
    else:
        ref_mean = _mean_states(subject, reference, forget, nullcontext, "states: reference")
        diff = audited_mean - ref_mean
        variants["reference"] = {layer: diff[layer] for layer in range(len(diff))}
    refused = [
        item
        for item, r in zip(forget, [r for r in baseline if r["split"] == "forget"], strict=True)
        if r["refusal"]
    ]
    answered = [
        item
        for item, r in zip(
            subject.questions["retain"],
            [r for r in baseline if r["split"] == "retain"],
            strict=True,
        )
        if r["leak"]
    ]
    if not refused or not answered:
        variants["refusal"] = (
            f"the model refuses {len(refused)} forget questions and answers {len(answered)} "
            "retain questions: a refusal direction needs both"
        )
    else:
        refusing = _mean_states(subject, subject.lm, refused, subject.applied, "states: refused")
        answering = _mean_states(subject, subject.lm, answered, subject.applied, "states: answered")
        diff = refusing - answering
        variants["refusal"] = {layer: diff[layer] for layer in range(len(diff))}
    for name, directions in variants.items():
        if isinstance(directions, str):
            out[name] = {"skipped": directions}
            continue
        mine = ask(
            subject,
            (*ATTACKED_SPLITS, "retain"),
            f"ablation_{name}",
            inside=lambda d=directions: ablated(subject.lm, d),
        )
        norms = [float(directions[k].norm()) for k in sorted(directions)]
        out[name] = {**leaks(mine), "direction_norms": norms}
        records += mine
    return out, records


# --- prefill --------------------------------------------------------------------------------


def prefill(subject: Subject) -> tuple[dict, list[dict]]:
    """Start the assistant's turn with the reference answer's words up to the fact ("This is",
    "Alma Aldous was born in"), teacher-forced, and check the continuation for the fact.
    Questions whose reference answer has no words before the fact are left out (counted)."""
    records: list[dict] = []
    left_out = {}
    for split in ATTACKED_SPLITS:
        items = subject.questions[split]
        pairs = [(i, fact_prefix(i.answer, i.value)[0]) for i in items]
        usable = [(i, p) for i, p in pairs if p]
        left_out[split] = len(items) - len(usable)
        if not usable:
            continue
        with subject.applied():
            records += leak_records(
                subject.lm,
                subject.bench,
                [i for i, _ in usable],
                subject.config,
                attack="prefill",
                prefixes=[p for _, p in usable],
                desc=f"prefill: {split}",
            )
    return {**leaks(records), "left_out_no_prefix": left_out}, records


# --- perturbed inputs -------------------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _crop(image: Image.Image, keep: float = 0.8) -> Image.Image:
    w, h = image.size
    dw, dh = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dw, dh, w - dw, h - dh)).resize((w, h), Image.BICUBIC)


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, image.width / 64)))


PERTURB: dict[str, Callable[[Image.Image], Image.Image]] = {
    "flip": ImageOps.mirror,  # left-right
    "crop": _crop,  # the central 80 %, scaled back up
    "blur": _blur,  # Gaussian, radius 1 px per 64 px of width
    "jpeg": _jpeg,  # JPEG at quality 30
}


def perturbed_inputs(subject: Subject) -> tuple[dict, list[dict]]:
    """Ask the image questions again with each portrait flipped, cropped, blurred or
    JPEG-compressed (`AuditConfig.perturbations`)."""
    out: dict = {}
    records: list[dict] = []
    saved = dict(subject.questions)
    try:
        for split in ATTACKED_SPLITS:
            subject.questions[split] = [i for i in saved[split] if i.image is not None]
        for name in subject.config.perturbations:
            mine = ask(subject, ATTACKED_SPLITS, f"input_{name}", image_edit=PERTURB[name])
            out[name] = leaks(mine)
            records += mine
    finally:
        subject.questions.update(saved)
    return out, records
