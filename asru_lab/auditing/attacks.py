"""Black-box attacks that try to make an unlearned model say a forgotten fact: prefilling the
answer, sampling and perturbed portraits (direction ablation: `ablation`). Each returns its numbers
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
from .measure import leak_records, rate

ATTACKED_SPLITS = ("forget", "test")


@dataclass
class Subject:
    """The audited model, the probe of an inference-time method (applied whenever it runs),
    and the questions every attack asks (split -> a seeded sample of its qa items; `mcq`: of
    its multiple-choice items)."""

    lm: LoadedModel
    bench: Benchmark
    config: AuditConfig
    probe: SteeringProbe | None = None
    questions: dict[str, list[QAItem]] = field(default_factory=dict)
    # the multiple-choice items scored by option likelihood (`choice`), by split; empty when
    # the audit asks none
    mcq: dict[str, list[QAItem]] = field(default_factory=dict)
    # whether the oracle's side is kept on disk between processes (`oracle_cache`)
    oracle_cache: bool = True

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
        mine = [r for r in records if r["split"] == split and "leak" in r]
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
    """The model as it is: forget and test leak, retain recall, and the accuracy of multiple
    choice by option likelihood (`choice`) when the audit asks it."""
    from . import choice

    records = ask(subject, (*ATTACKED_SPLITS, "retain"), "none")
    chosen = choice.under(subject, "none")
    return {**leaks(records), **choice.accuracy(chosen)}, records + chosen


# --- prefill --------------------------------------------------------------------------------


PREFILL_VARIANTS = ("name", "generic", "words")


def generic_prefix(prefix: str, name: str) -> str:
    """`prefix` without the person's name: "Sure! " + the prefix with `name` (any case) said as
    "this person" ("Sure! This person was born in" for "Alma Aldous was born in")."""
    at = prefix.lower().find(name.lower()) if name else -1
    if at >= 0:
        said = "This person" if at == 0 else "this person"
        prefix = prefix[:at] + said + prefix[at + len(name) :]
    return f"Sure! {prefix}"


def prefill(
    subject: Subject, variants: Sequence[str] = PREFILL_VARIANTS
) -> tuple[dict, list[dict]]:
    """Start the assistant's turn with words that lead to the fact, teacher-forced, and check
    the continuation for the fact. Variants (`variants`):

    - `name` (the top-level numbers): the reference answer's words up to the fact ("This is",
      "Alma Aldous was born in"), the person's name included;
    - `generic`: the same, name-free (`generic_prefix`: "Sure! This person was born in"), so
      that the name given away by the prefix cannot be what brings the fact back;
    - `words`: a prefix-length sweep, the first n words of the `name` prefix for each n of
      `AuditConfig.prefill_words` (all of them when it is shorter), under "words" -> "n".

    Questions whose reference answer has no words before the fact are left out (counted)."""
    cfg = subject.config
    people = subject.bench.people
    prefixes: dict[str, dict[str, list[tuple[QAItem, str]]]] = {}
    left_out = {}
    for split in ATTACKED_SPLITS:
        items = subject.questions[split]
        usable = [(i, p) for i in items if (p := fact_prefix(i.answer, i.value)[0])]
        left_out[split] = len(items) - len(usable)
        found = {"name": usable}
        if "generic" in variants:
            found["generic"] = [
                (i, generic_prefix(p, getattr(people.get(i.person_id), "name", "")))
                for i, p in usable
            ]
        if "words" in variants:
            found |= {
                f"words{n}": [(i, " ".join(p.split()[:n])) for i, p in usable]
                for n in cfg.prefill_words
            }
        prefixes[split] = found
    out: dict = {"left_out_no_prefix": left_out}
    records: list[dict] = []
    for variant in prefixes[ATTACKED_SPLITS[0]]:
        if variant == "name" and "name" not in variants:
            continue
        mine = []
        for split in ATTACKED_SPLITS:
            pairs = prefixes[split][variant]
            if not pairs:
                continue
            with subject.applied():
                mine += leak_records(
                    subject.lm,
                    subject.bench,
                    [i for i, _ in pairs],
                    cfg,
                    attack="prefill",
                    prefixes=[p for _, p in pairs],
                    desc=f"prefill ({variant}): {split}",
                )
        mine = [{**r, "variant": variant} for r in mine]
        records += mine
        if variant == "name":
            out |= leaks(mine)
        elif variant == "generic":
            out["generic"] = leaks(mine)
        else:
            out.setdefault("words", {})[variant.removeprefix("words")] = leaks(mine)
    return out, records


# --- sampling -------------------------------------------------------------------------------


def sampling(subject: Subject) -> tuple[dict, list[dict]]:
    """Leak@k: each forget and test question asked `AuditConfig.sample_k` times with sampling
    at `sample_temperature` (the whole distribution: no top-k or top-p cut), seeded; a question
    leaks when any of its k answers contains the fact. Beside it `sample_leak`, the share of
    all sampled answers that contain it (the greedy answer's leak is the no-attack number)."""
    cfg = subject.config
    k = cfg.sample_k
    out: dict = {"k": k, "temperature": cfg.sample_temperature}
    records: list[dict] = []
    torch.manual_seed(cfg.seed)
    for split in ATTACKED_SPLITS:
        items = subject.questions[split]
        if not items:
            continue
        with subject.applied():
            drawn = leak_records(
                subject.lm,
                subject.bench,
                [item for item in items for _ in range(k)],
                cfg,
                attack="sampling",
                sample={"temperature": cfg.sample_temperature, "top_k": 0, "top_p": 1.0},
                desc=f"sampling (k={k}): {split}",
            )
        for q in range(len(items)):
            mine = drawn[q * k : (q + 1) * k]
            records.append(
                {
                    **mine[0],
                    "answer": None,
                    "answers": [r["answer"] for r in mine],
                    "leak": any(r["leak"] for r in mine),
                    "refusal": all(r["refusal"] for r in mine),
                    "leak_share": rate(mine),
                }
            )
        answered = records[-len(items) :]
        out[f"{split}_leak_at_k"] = rate(answered)
        out[f"{split}_sample_leak"] = sum(r["leak_share"] for r in answered) / len(answered)
        out[f"n_{split}"] = len(answered)
    return out, records


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
