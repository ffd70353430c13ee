"""The traced cases: one image question per person (`select_items`), its teacher-forced target,
its encoding with each token's position group, the swap partner or the noise that corrupts
it, and the left-padding that packs cases into batches."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from asru_lab.causal.config import ALL_GROUPS, CausalTraceConfig, CausalTraceError
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem
from asru_lab.generation import asked, build_prompt, check_prompt_lengths, fact_prefix, fact_token
from asru_lab.models.loading import LoadedModel


@dataclass
class _Case:
    person: Person
    item: QAItem
    question: str
    prefix: str
    target_id: int
    inputs: dict  # clean encoding, batch of one, no padding
    corrupt_inputs: dict  # the swap image's encoding, or `inputs` (noise)
    groups: dict[str, torch.Tensor]  # group -> bool [T]
    swap_with: str | None = None
    noise: list[torch.Tensor] = field(default_factory=list)  # per visual site, like its output
    clean: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # site -> [T, D]
    patched: dict[tuple, float] = field(default_factory=dict)  # (site, group) -> p
    p_clean: float = math.nan
    p_corrupt: float = math.nan


def _items_for(bench: Benchmark, person: Person, config: CausalTraceConfig) -> list[QAItem]:
    """The person's generation questions about `attribute`, the wanted split first; for
    corruption "name", only those that ask by name (no image, the name in the question)."""
    items = [
        i
        for i in bench.items
        if i.person_id == person.id and i.task == "qa" and i.attribute == config.attribute
    ]
    if config.corruption == "name":
        items = [i for i in items if _by_name(person, i)]
    return sorted(items, key=lambda i: (i.split != config.split, i.image is None))


def _by_name(person: Person, item: QAItem) -> bool:
    return item.image is None and bool(person.name) and person.name in item.question


def select_items(bench: Benchmark, config: CausalTraceConfig) -> list[QAItem]:
    """One image question per traced person (the first about `attribute`).

    Unknown person ids, and people without an image question about the attribute, are
    refused with the list of what exists.
    """
    if config.people is None:
        people = bench.people_in(config.split)
        if not people:
            raise BenchmarkError(
                f"split {config.split!r} of {bench.name} has no people to trace "
                f"(splits with people: {sorted({p.split for p in bench.people.values()})})"
            )
    else:
        missing = [pid for pid in config.people if pid not in bench.people]
        if missing:
            known = [p.id for p in bench.people_in(config.split)]
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise CausalTraceError(
                f"person id {missing[0]!r} does not exist in {bench.name} "
                f"({len(bench.people)} people; {config.split} people: {shown})"
            )
        people = [bench.people[pid] for pid in config.people]
    items = []
    by_name = config.corruption == "name"
    for person in people:
        found = _items_for(bench, person, config)
        if not found:
            asked_how = "no question by name" if by_name else "no question"
            raise CausalTraceError(
                f"person {person.id} ({person.name}) has {asked_how} about "
                f"{config.attribute!r} (their facts: {sorted(person.facts)})"
            )
        if by_name:
            items.append(found[0])
            continue
        if found[0].image is None and config.people is not None:
            raise CausalTraceError(
                f"person {person.id} ({person.name}) has only text-only questions about "
                f"{config.attribute!r}, but corruption {config.corruption!r} corrupts the image"
            )
        if found[0].image is not None:
            items.append(found[0])
    if not items:
        kind = "question by name" if by_name else "image question"
        raise CausalTraceError(f"no {config.split} person has an {kind} about {config.attribute!r}")
    return items[: config.max_people] if config.max_people else items


def _target(lm: LoadedModel, prompt: str, item: QAItem) -> tuple[str, int]:
    """The answer prefix before the fact, and the fact's first token id after it."""
    prefix, fact = fact_prefix(item.answer, item.value)
    target = fact_token(lm, prompt, prefix, fact)
    if target is None:
        raise CausalTraceError(
            f"cannot place the fact {item.value!r} after {prefix!r}: the tokenizer merges them"
        )
    return prefix, target


def _encode_case(
    lm: LoadedModel, image, question: str, prefix: str, person_name: str | None = None
) -> tuple[dict, dict]:
    """Batch-of-one processor outputs for prompt + prefix, and each token's group (the tokens
    of every occurrence of `person_name` form the "name" group)."""
    prompt = build_prompt(lm, question, image is not None)
    text = prompt + prefix
    check_prompt_lengths(lm, [text], [asked(question)])
    enc = lm.processor(
        text=[text],
        images=None if image is None else [image],
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    offsets = enc.pop("offset_mapping")[0].tolist()
    inputs = {k: v.to(lm.device) if torch.is_tensor(v) else v for k, v in enc.items()}
    ids = inputs["input_ids"][0]
    image_mask = (ids == lm.adapter.image_token_id(lm.model)).cpu()
    n_images = text.count(lm.adapter.image_placeholder)
    # the processor expands each image placeholder's pad token into one per visual token;
    # offsets refer to that expanded text
    pad = lm.tokenizer.convert_ids_to_tokens(lm.adapter.image_token_id(lm.model))
    per_image = int(image_mask.sum()) // max(n_images, 1)
    expanded = text.replace(pad, pad * per_image) if n_images else text
    end_of_prompt = len(expanded) - len(prefix)
    q_start = expanded.rfind(question, 0, end_of_prompt)
    if q_start < 0 or offsets[-1][1] != len(expanded):
        raise CausalTraceError("could not align the question's tokens with the prompt text")
    q_end = q_start + len(question)
    spans = []  # the name's character spans, in the question and the answer prefix
    if person_name:
        at = expanded.find(person_name, q_start)
        while at >= 0:
            spans.append((at, at + len(person_name)))
            at = expanded.find(person_name, at + len(person_name))
    groups = {g: torch.zeros(len(ids), dtype=torch.bool) for g in ALL_GROUPS}
    for t, (start, end) in enumerate(offsets):
        if t == len(ids) - 1:
            name = "last"
        elif image_mask[t]:
            name = "image"
        elif any(start < b and end > a for a, b in spans):
            name = "name"
        elif start >= end_of_prompt:
            name = "answer_prefix"
        elif end == end_of_prompt:
            name = "last_prompt"
        elif start < q_end and end > q_start:
            name = "question"
        else:
            name = "template"
        groups[name][t] = True
    return inputs, groups


def _person_seed(seed: int, person_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{person_id}".encode()).digest()[:8], "big")


def _cases(
    lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem], config: CausalTraceConfig
) -> list[_Case]:
    """Each item encoded for tracing: its clean inputs and, for "swap", the corrupted ones."""
    for item in items:
        if config.corruption == "name":
            person = bench.people.get(item.person_id)
            if person is None or not _by_name(person, item):
                raise CausalTraceError(
                    f"corruption 'name' traces questions by name: {item.question!r} about "
                    f"{item.person_id} has an image or does not contain the person's name"
                )
            continue
        if item.image is None:
            raise CausalTraceError(
                f"the question {item.question!r} about {item.person_id} has no image, but "
                f"corruption {config.corruption!r} corrupts the image: trace image questions"
            )
        if item.person_id not in bench.people:
            raise CausalTraceError(f"item's person id {item.person_id!r} does not exist")
    images = [None] * len(items) if config.corruption == "name" else bench.images(items)
    return [
        _case(lm, bench, item, image, config) for item, image in zip(items, images, strict=True)
    ]


def _case(
    lm: LoadedModel, bench: Benchmark, item: QAItem, image, config: CausalTraceConfig
) -> _Case:
    person = bench.people[item.person_id]
    question = config.question or item.question
    prompt = build_prompt(lm, question, image is not None)
    prefix, target = _target(lm, prompt, item)
    name = person.name if config.corruption == "name" else None
    if name and name not in question:
        raise CausalTraceError(
            f"corruption 'name': the question {question!r} does not contain {name!r}"
        )
    inputs, groups = _encode_case(lm, image, question, prefix, name)
    case = _Case(person, item, question, prefix, target, inputs, inputs, groups)
    if config.corruption == "swap":
        case.swap_with, image = _swap_partner(bench, person, item, config)
        case.corrupt_inputs, _ = _encode_case(lm, image, question, prefix)
        if case.corrupt_inputs["input_ids"].shape != inputs["input_ids"].shape:
            raise CausalTraceError(
                f"swap: {case.swap_with}'s image gives "
                f"{case.corrupt_inputs['input_ids'].shape[1]} tokens, {person.id}'s "
                f"{inputs['input_ids'].shape[1]}; swapped images must have the same size"
            )
    return case


def _swap_partner(bench: Benchmark, person: Person, item: QAItem, config: CausalTraceConfig):
    """Another person of the same split (seeded choice) and their image for the question."""
    others = [
        i
        for i in bench.questions(item.split, "qa", image_only=True)
        if i.person_id not in (None, person.id)
    ]
    if not others:
        raise CausalTraceError(
            f"swap: split {item.split!r} has no other person's image to swap in for {person.id}"
        )
    partners = sorted({i.person_id for i in others})
    partner = random.Random(_person_seed(config.seed, person.id)).choice(partners)
    chosen = next(i for i in others if i.person_id == partner)
    return partner, bench.load_image(chosen.image)


def _visual_rows(features: torch.Tensor, counts: Sequence[int], chunk) -> list[int]:
    """Rows of a visual site's output that belong to each case (dim 0 is per token or per
    image, depending on the architecture)."""
    if features.shape[0] == sum(counts):
        return list(counts)
    if features.shape[0] == len(chunk):
        return [1] * len(chunk)
    raise CausalTraceError(
        f"cannot split visual features of shape {tuple(features.shape)} over {len(chunk)} images"
    )


def _draw_noise(
    chunk: Sequence[_Case], visual: Sequence[torch.Tensor], config: CausalTraceConfig
) -> None:
    """Set each case's noise: per visual site, Gaussian noise shaped like the case's clean
    features there, std `noise_scale` x their std, seeded by `seed` and the person id."""
    counts = [int(c.groups["image"].sum()) for c in chunk]
    per_site = [torch.split(v, _visual_rows(v, counts, chunk)) for v in visual]
    for r, case in enumerate(chunk):
        gen = torch.Generator().manual_seed(_person_seed(config.seed, case.person.id))
        case.noise = []
        for feats in per_site:
            f = feats[r]
            noise = torch.randn(f.shape, generator=gen, dtype=torch.float32)
            noise *= config.noise_scale * float(f.float().std())
            case.noise.append(noise.to(device=f.device, dtype=f.dtype))


def _draw_name_noise(
    chunk: Sequence[_Case], embeddings: torch.Tensor, offsets: Sequence[int], config
) -> None:
    """Corruption "name": each case's noise on the token embeddings (`[T, D]`), Gaussian on
    the name's tokens with std `noise_scale` x the std of those embeddings, zero elsewhere,
    seeded by `seed` and the person id."""
    for r, case in enumerate(chunk):
        own = embeddings[r, offsets[r] :]
        mask = case.groups["name"].to(own.device)
        if not mask.any():
            raise CausalTraceError(f"no token of {case.person.name!r} found in the prompt")
        gen = torch.Generator().manual_seed(_person_seed(config.seed, case.person.id))
        noise = torch.randn(own.shape, generator=gen, dtype=torch.float32)
        noise *= config.noise_scale * float(own[mask].float().std())
        noise[~mask.cpu()] = 0
        case.noise = [noise.to(device=own.device, dtype=own.dtype)]


def _noise(
    cases: Sequence[_Case], config: CausalTraceConfig, length: int | None = None
) -> list[torch.Tensor] | None:
    """The batch's noise per corrupted site: visual features concatenated case after case, or
    (corruption "name") the token-embedding noise left-padded to `length` and stacked."""
    if config.corruption == "name":
        return [torch.stack([_left_pad(c.noise[0], length) for c in cases])]
    if config.corruption != "noise":
        return None
    return [torch.cat(parts) for parts in zip(*(c.noise for c in cases), strict=True)]


def _pad_batch(lm: LoadedModel, encodings: Sequence[dict]) -> tuple[dict, list[int]]:
    """Left-pad batch-of-one encodings into one batch; returns it and each row's offset."""
    length = max(e["input_ids"].shape[1] for e in encodings)
    offsets = [length - e["input_ids"].shape[1] for e in encodings]
    pad_id = lm.tokenizer.pad_token_id or 0
    batch = {}
    for key in encodings[0]:
        values = [e[key] for e in encodings]
        if not torch.is_tensor(values[0]):
            batch[key] = values[0]
            continue
        if values[0].ndim == 2 and values[0].shape == encodings[0]["input_ids"].shape:
            fill = pad_id if key == "input_ids" else 0
            values = [
                torch.nn.functional.pad(v, (off, 0), value=fill)
                for v, off in zip(values, offsets, strict=True)
            ]
        batch[key] = torch.cat(values)
    return batch, offsets


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """`t` ([T] or [T, D]) left-padded with zeros / False to `length` rows."""
    pad = (0, 0, length - t.shape[0], 0) if t.ndim == 2 else (length - t.shape[0], 0)
    return torch.nn.functional.pad(t, pad)
