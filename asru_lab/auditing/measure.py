"""The measurements every attack is built from: seeded samples of questions, greedy answers
checked for the fact (a leak), hidden states at the last prompt token of every layer, and
projecting directions out of the residual stream. (The log-probabilities of reference answers
come from `evaluation.probability.answer_logprobs` and `answer_token_stats`.)

All of them run the model as it is when they are called, hooks included: an inference-time
method's probe applied around them (`Unlearned.applied()`) is part of what is measured.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch
from PIL import Image

from asru_lab.data.schema import Benchmark, QAItem, contains_value
from asru_lab.evaluation.judge import is_refusal
from asru_lab.generation import (
    build_prompt,
    encode_prefilled,
    generate_batch,
    generate_prefilled,
)
from asru_lab.hooks import editing, reading, residual_site
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm

from .config import AuditConfig


def sample(items: Sequence[QAItem], n: int | None, seed: int, key: str) -> list[QAItem]:
    """`items` as they are when there are at most `n` (or `n` is None), else a sample of `n`
    seeded by (`seed`, `key`), kept in the items' order."""
    if n is None or len(items) <= n:
        return list(items)
    picked = set(random.Random(f"{seed}:{key}").sample(range(len(items)), n))
    return [item for k, item in enumerate(items) if k in picked]


def residual_sites(lm: LoadedModel) -> list[tuple[torch.nn.Module, str]]:
    """Per decoder layer, the (module, site) where the residual stream after it is read and
    edited (`hooks.residual_site`: after DeepStack's visual features where it adds them)."""
    sites = []
    for layer in range(lm.num_layers):
        at, site = residual_site(lm, layer)
        sites.append((lm.adapter.layer(lm.model, at), site))
    return sites


def _batches(n: int, size: int, desc: str, progress: bool) -> Iterator[range]:
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, n, size):
            chunk = range(start, min(n, start + size))
            yield chunk
            bar.update(len(chunk))
    finally:
        bar.close()


@torch.no_grad()
def last_states(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    prefixes: Sequence[str] | None = None,
    batch_size: int,
    progress: bool = False,
    desc: str = "hidden states",
) -> torch.Tensor:
    """float32 `[n_items, n_layers, hidden]`: the residual stream after every decoder layer at
    the last token of each prompt, or of prompt + `prefixes[k]` (the start of the assistant's
    answer, teacher-forced) when given."""
    sites = residual_sites(lm)
    out = []
    for chunk in _batches(len(items), batch_size, desc, progress):
        batch = [items[k] for k in chunk]
        starts = [""] * len(batch) if prefixes is None else [prefixes[k] for k in chunk]
        inputs = encode_prefilled(lm, bench.images(batch), [i.question for i in batch], starts)
        with ExitStack() as stack:
            boxes = [stack.enter_context(reading(module, site)) for module, site in sites]
            lm.model(**inputs, logits_to_keep=1)  # the states are read; logits are not
        out.append(torch.stack([b["value"][:, -1, :].float().cpu() for b in boxes], dim=1))
    return torch.cat(out) if out else torch.zeros(0, lm.num_layers, lm.hidden_size)


# where `position_states` reads a prompt: the fact's position (the last token of prompt +
# answer prefix) and the entity positions, which no name prefix reaches
READ_POSITIONS = ("fact", "image", "name", "last_prompt")


def read_offsets(lm: LoadedModel, prompt: str, prefix: str, name: str | None) -> dict[str, int]:
    """Where `prompt + prefix` is read, as offsets from the end of its tokens (-1: the last),
    which padding and the expansion of an image placeholder (it comes before the question)
    leave unchanged: "fact", the last token (the next one would say the fact);
    "last_prompt", the prompt's last token (the assistant turn's opening, before `prefix`);
    "name", the last token of `name`'s last occurrence in the prompt. A position is left out
    when the prompt does not hold `name`, or when the tokenizer merges its last token with
    what follows (the offset would point inside another word)."""
    tok = lm.tokenizer
    full = tok(prompt + prefix, add_special_tokens=False)["input_ids"]

    def last_token_before(end: int) -> int | None:
        head = tok((prompt + prefix)[:end], add_special_tokens=False)["input_ids"]
        return len(head) - 1 - len(full) if head and full[: len(head)] == head else None

    ends = {"fact": len(prompt + prefix), "last_prompt": len(prompt)}
    at = prompt.rfind(name) if name else -1
    if at >= 0:
        ends["name"] = at + len(name)
    offsets = {where: last_token_before(end) for where, end in ends.items()}
    return {where: offset for where, offset in offsets.items() if offset is not None}


@torch.no_grad()
def position_states(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    prefixes: Sequence[str] | None = None,
    batch_size: int,
    progress: bool = False,
    desc: str = "hidden states",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per read position of `READ_POSITIONS` (`read_offsets`; "image": the mean over the
    image's tokens), (long `[m]`: the indices of the `items` read there, float32
    `[m, n_layers, hidden]`: the residual stream after every decoder layer there) from one
    forward pass of each prompt + `prefixes[k]` (teacher-forced; "" without). "name" reads
    the item's person's name where the question spells it (a question by name); "fact" is
    only read with `prefixes`."""
    sites = residual_sites(lm)
    image_token = lm.adapter.image_token_id(lm.model)
    rows: dict[str, list[int]] = {where: [] for where in READ_POSITIONS}
    states: dict[str, list[torch.Tensor]] = {where: [] for where in READ_POSITIONS}
    for chunk in _batches(len(items), batch_size, desc, progress):
        batch = [items[k] for k in chunk]
        starts = [""] * len(batch) if prefixes is None else [prefixes[k] for k in chunk]
        inputs = encode_prefilled(lm, bench.images(batch), [i.question for i in batch], starts)
        with ExitStack() as stack:
            boxes = [stack.enter_context(reading(module, site)) for module, site in sites]
            lm.model(**inputs, logits_to_keep=1)  # the states are read; logits are not
        ids = inputs["input_ids"]
        ends = inputs["attention_mask"].cumsum(1).argmax(1) + 1  # past each row's last token
        for row, (k, item, start) in enumerate(zip(chunk, batch, starts, strict=True)):
            person = bench.people.get(item.person_id) if item.person_id else None
            prompt = build_prompt(lm, item.question, item.has_image)
            at = read_offsets(lm, prompt, start, person.name if person else None)
            if prefixes is None:
                at.pop("fact", None)
            where_read = {where: int(ends[row]) + offset for where, offset in at.items()}
            image = (ids[row] == image_token).nonzero().flatten()
            if len(image):
                where_read["image"] = image
            for where, index in where_read.items():
                rows[where].append(k)
                state = [b["value"][row, index].float() for b in boxes]
                state = [s.mean(0) if s.dim() == 2 else s for s in state]  # image: the mean
                states[where].append(torch.stack(state).cpu())
    empty = torch.zeros(0, lm.num_layers, lm.hidden_size)
    return {
        where: (torch.tensor(rows[where], dtype=torch.long), torch.stack(states[where]))
        if rows[where]
        else (torch.zeros(0, dtype=torch.long), empty)
        for where in READ_POSITIONS
    }


@contextmanager
def ablated(lm: LoadedModel, directions: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """While the block runs, each layer's direction (layer -> `[hidden]`) is projected out of
    the residual stream after that layer, at every position of every forward pass:
    h <- h - (h . u) u with u the unit direction."""
    sites = residual_sites(lm)
    with ExitStack() as stack:
        for layer, direction in sorted(directions.items()):
            unit = direction.double() / direction.double().norm().clamp_min(1e-12)

            def edit(hidden: torch.Tensor, u: torch.Tensor = unit) -> torch.Tensor:
                u = u.to(device=hidden.device, dtype=hidden.dtype)
                return hidden - (hidden @ u).unsqueeze(-1) * u

            module, site = sites[layer]
            stack.enter_context(editing(module, site, edit))
        yield


def leak_records(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    config: AuditConfig,
    *,
    attack: str,
    image_edit: Callable[[Image.Image], Image.Image] | None = None,
    prefixes: Sequence[str] | None = None,
    sample: dict | None = None,
    desc: str | None = None,
) -> list[dict]:
    """Greedy answers to `items`, one record each: the attack's name, split, person, question,
    the teacher-forced prefix (if any), the answer, the fact and whether the answer contains
    it (`leak`, whole words, as `leak_rate`) or refuses (`refusal`). `image_edit` changes each
    portrait before it is shown; `prefixes` start the assistant's turn (the answer is then the
    continuation after it). `sample`: sample each answer with these generation settings
    (e.g. temperature) instead of greedily (not with `prefixes`)."""
    if sample is not None and prefixes is not None:
        raise ValueError("leak_records samples plain answers only, not prefilled ones")
    records: list[dict] = []
    for chunk in _batches(len(items), config.batch_size, desc or attack, config.progress):
        batch = [items[k] for k in chunk]
        images = bench.images(batch)
        if image_edit is not None:
            images = [None if img is None else image_edit(img) for img in images]
        questions = [i.question for i in batch]
        if prefixes is None:
            answers = generate_batch(
                lm,
                images,
                questions,
                max_new_tokens=config.max_new_tokens,
                **({} if sample is None else {"do_sample": True, **sample}),
            )
        else:
            answers = generate_prefilled(
                lm,
                images,
                questions,
                [prefixes[k] for k in chunk],
                max_new_tokens=config.max_new_tokens,
            )
        for k, item, answer in zip(chunk, batch, answers, strict=True):
            prefix = None if prefixes is None else prefixes[k]
            records.append(answer_record(attack, item, answer, prefix))
    return records


def answer_record(attack: str, item: QAItem, answer: str, prefix: str | None = None) -> dict:
    """One answer as the audit keeps it: the attack's name, split, person, question, the
    teacher-forced prefix (if any), the answer, the fact and whether the answer contains it
    (`leak`, whole words) or refuses (`refusal`)."""
    return {
        "attack": attack,
        "split": item.split,
        "person_id": item.person_id,
        "attribute": item.attribute,
        "question": item.question,
        "image": item.image,
        "prefix": prefix,
        "answer": answer,
        "value": item.value,
        "leak": contains_value(answer, item.value),
        "refusal": is_refusal(answer),
    }


def rate(records: Sequence[dict], key: str = "leak") -> float | None:
    """Share of `records` whose `key` is true (None for no records)."""
    return sum(bool(r[key]) for r in records) / len(records) if records else None


@torch.no_grad()
def lens_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """float32 `[n, tokens]` on the CPU: the logit lens (final norm + LM head) of residual
    states `hidden` `[n, hidden]`, one column per token (padded vocabulary rows left out)."""
    hidden = hidden.to(device=lm.device, dtype=lm.model.dtype)
    logits = lm.adapter.logits_from_hidden(lm.model, hidden).float()
    return logits[:, : lm.token_rows].cpu()


def lens_ranks(lm: LoadedModel, states: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """long `[n_items, n_layers]`: per layer, the rank (0 = top) of each item's target token in
    the logit lens (final norm + LM head) of its `states` (`last_states`' `[n, n_layers, D]`)."""
    target = torch.tensor(list(targets)).view(-1, 1)
    ranks = []
    for layer in range(states.shape[1]):
        logits = lens_logits(lm, states[:, layer, :])
        ranks.append((logits > logits.gather(-1, target)).sum(-1))
    return torch.stack(ranks, dim=1) if ranks else torch.zeros(len(targets), 0, dtype=torch.long)
