"""Prompt encoding and batched generation for any loaded vision-language model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from asru_lab.data.files import open_image
from asru_lab.data.schema import Benchmark, QAItem, shorten
from asru_lab.errors import AsruLabError
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm

ImageLike = Image.Image | str | os.PathLike | None
# The most text tokens one prompt may hold (chat template and any appended answer included,
# each image counting as its placeholder): 25x the longest prompt of any protocol on any
# supported benchmark (about 150), while a batch of 32 prompts padded to it already needs
# some 15 GB of KV cache at 2B. The model's max_position_embeddings lowers it further.
PROMPT_TOKEN_LIMIT = 4096


class PromptTooLongError(AsruLabError, ValueError):
    """A prompt holds more tokens than the model may be given; the message names it."""


def as_image(image: ImageLike) -> Image.Image | None:
    """A PIL image from a PIL image, a path, or None (text only)."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | os.PathLike):
        return open_image(Path(image))
    raise TypeError(f"image must be a PIL image, a path or None, not {type(image).__name__}")


@dataclass(frozen=True)
class Turn:
    """One user turn of a chat prompt, model-agnostic: its text, the benchmark path of the image
    shown with it (None: text only) and, for a few-shot turn, the assistant's reply to it (None
    for the turn that is asked)."""

    text: str
    image: str | None = None
    reply: str | None = None


def build_prompt(lm: LoadedModel, question: str, has_image: bool) -> str:
    """The chat-formatted prompt ending with the assistant turn's opening."""
    messages = lm.adapter.user_message(question, has_image)
    return lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_chat_prompt(lm: LoadedModel, turns: Sequence[Turn]) -> str:
    """The chat-formatted text of a multi-turn prompt (few-shot turns with their replies, then
    the asked turn), ending with the assistant turn's opening. One turn gives exactly
    `build_prompt`'s text."""
    messages: list[dict] = []
    for turn in turns:
        messages += lm.adapter.user_message(turn.text, turn.image is not None)
        if turn.reply is not None:
            messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": turn.reply}]}
            )
    return lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_token_limit(lm: LoadedModel) -> int:
    """The most text tokens one prompt for `lm` may hold: PROMPT_TOKEN_LIMIT, or the model's
    max_position_embeddings when smaller."""
    positions = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    return min(PROMPT_TOKEN_LIMIT, positions or PROMPT_TOKEN_LIMIT)


def check_prompt_lengths(lm: LoadedModel, texts: Sequence[str], names: Sequence[str]) -> None:
    """Raise a PromptTooLongError naming the first of `texts` (`names[k]` says what it asks)
    holding more tokens than `prompt_token_limit`: before any forward pass, not after memory
    runs out."""
    limit = prompt_token_limit(lm)
    # a token covers at least one byte of the text: only longer texts need counting
    suspect = [k for k, text in enumerate(texts) if len(text.encode()) > limit]
    if not suspect:
        return
    ids = lm.tokenizer([texts[k] for k in suspect], add_special_tokens=False, verbose=False)
    for k, tokens in zip(suspect, ids["input_ids"], strict=True):
        if len(tokens) > limit:
            raise PromptTooLongError(
                f"{names[k]} makes a prompt of {len(tokens)} tokens; {lm.name} is given at most "
                f"{limit} (the smaller of its max_position_embeddings and asru_lab's cap of "
                f"{PROMPT_TOKEN_LIMIT}, which keeps one item from exhausting memory): shorten it "
                "or remove it from the dataset"
            )


def asked(question: str) -> str:
    """How errors name a prompt: by its question's opening words."""
    return f"the question {shorten(question)!r}"


def _processor_batch(
    lm: LoadedModel, texts: Sequence[str], images: Sequence[Image.Image], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Processor outputs for left-padded `texts` once each is within the token limit (`names`
    say what each asks, for the error); `images` fill their placeholders in order."""
    check_prompt_lengths(lm, texts, names)
    batch = lm.processor(
        text=list(texts), images=list(images) or None, return_tensors="pt", padding=True
    )
    return {k: v.to(lm.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def encode(
    lm: LoadedModel,
    images: Sequence[Image.Image | None],
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Processor outputs for a left-padded batch of prompts (+ optional answers appended).

    Every key the processor returns is kept (Qwen3-VL needs `mm_token_type_ids` for M-RoPE).
    A prompt over `prompt_token_limit` raises a PromptTooLongError naming it (`names`, one per
    question; default: the question's opening words).
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    texts = [build_prompt(lm, q, img is not None) for img, q in zip(images, questions, strict=True)]
    if answers is not None:
        eos = lm.tokenizer.eos_token or ""
        texts = [t + a + eos for t, a in zip(texts, answers, strict=True)]
    names = [asked(q) for q in questions] if names is None else names
    return _processor_batch(lm, texts, [img for img in images if img is not None], names)


def encode_items(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    answers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """`encode` for benchmark items (or training Examples: anything with an image path and a
    question): each one's image (opened by `bench`) and question, with `answers` appended when
    given (one per item)."""
    names = [
        f"the {i.split} item about {i.person_id!r}, {asked(i.question)},"
        if isinstance(i, QAItem)
        else asked(i.question)  # a training Example: its question is all it has
        for i in items
    ]
    return encode(lm, bench.images(items), [i.question for i in items], answers, names=names)


@torch.no_grad()
def generate_batch(
    lm: LoadedModel,
    images: Sequence[Image.Image | None],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    **gen_kwargs,
) -> list[str]:
    """Answers (decoded, special tokens removed, stripped) for one batch."""
    batch = encode(lm, images, questions)
    return _generate(lm, batch, max_new_tokens, do_sample, **gen_kwargs)


@torch.no_grad()
def generate_chats(
    lm: LoadedModel,
    chats: Sequence[Sequence[Turn]],
    images: Sequence[Sequence[Image.Image]],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    **gen_kwargs,
) -> list[str]:
    """Answers (decoded, special tokens removed, stripped) for one batch of multi-turn prompts
    (`build_chat_prompt`); `images[k]` holds chat k's images in the order of its turns."""
    if len(images) != len(chats):
        raise ValueError(f"{len(images)} image lists for {len(chats)} chats")
    for turns, shown in zip(chats, images, strict=True):
        wanted = sum(t.image is not None for t in turns)
        if len(shown) != wanted:
            raise ValueError(f"a chat with {wanted} image turns got {len(shown)} images")
    texts = [build_chat_prompt(lm, turns) for turns in chats]
    names = [asked(turns[-1].text) for turns in chats]
    batch = _processor_batch(lm, texts, [img for shown in images for img in shown], names)
    return _generate(lm, batch, max_new_tokens, do_sample, **gen_kwargs)


@torch.no_grad()
def generate_prefilled(
    lm: LoadedModel,
    images: Sequence[Image.Image | None],
    questions: Sequence[str],
    prefixes: Sequence[str],
    *,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy continuations of assistant turns that already start with `prefixes` (one per
    question; teacher-forced: each prefix is part of the prompt). Returns only the generated
    text after the prefix, decoded and stripped."""
    if not len(images) == len(questions) == len(prefixes):
        raise ValueError(
            f"{len(images)} images, {len(questions)} questions and {len(prefixes)} prefixes"
        )
    return _generate(lm, encode_prefilled(lm, images, questions, prefixes), max_new_tokens, False)


def encode_prefilled(
    lm: LoadedModel,
    images: Sequence[Image.Image | None],
    questions: Sequence[str],
    prefixes: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Processor outputs for left-padded prompts whose assistant turn starts with `prefixes`."""
    texts = [
        build_prompt(lm, q, img is not None) + prefix
        for img, q, prefix in zip(images, questions, prefixes, strict=True)
    ]
    names = [asked(q) for q in questions]
    return _processor_batch(lm, texts, [img for img in images if img is not None], names)


def fact_prefix(answer: str, value: str) -> tuple[str, str]:
    """(the words of the reference `answer` before the fact, the fact as `answer` spells it):
    ("Alma Aldous was born in", "Lisbon") for ("Alma Aldous was born in Lisbon.", "lisbon").
    The prefix is "" when the answer starts with the fact or does not contain it."""
    at = answer.lower().find(value.lower())
    prefix = answer[:at].rstrip() if at > 0 else ""
    return prefix, (answer[at : at + len(value)] if at >= 0 else value)


def fact_token(lm: LoadedModel, prompt: str, prefix: str, fact: str) -> int | None:
    """The id of the fact's first token after `prompt + prefix` (a space between prefix and
    fact); None when the tokenizer merges the prefix's end with the fact."""
    joint = f"{prefix} {fact}" if prefix else fact
    tok = lm.tokenizer
    before = tok(prompt + prefix, add_special_tokens=False)["input_ids"]
    after = tok(prompt + joint, add_special_tokens=False)["input_ids"]
    if after[: len(before)] != before or len(after) == len(before):
        return None
    return after[len(before)]


def _generate(
    lm: LoadedModel, batch: dict, max_new_tokens: int, do_sample: bool, **gen_kwargs
) -> list[str]:
    tok = lm.tokenizer
    out = lm.model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **gen_kwargs,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def generate(
    lm: LoadedModel,
    image: ImageLike | Sequence[ImageLike],
    question: str | Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    **gen_kwargs,
) -> str | list[str]:
    """Answer `question` about `image` (None for text only). Greedy by default.

    Pass lists of images and questions for batched use (one image may serve several questions
    if a single image is given with a list of questions); returns a string or a list.
    """
    single = isinstance(question, str)
    questions = [question] if single else list(question)
    if isinstance(image, Sequence) and not isinstance(image, str):
        images = list(image)
    else:
        images = [image] * len(questions)
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images for {len(questions)} questions")
    pil = [as_image(i) for i in images]
    answers: list[str] = []
    starts = range(0, len(questions), batch_size)
    show = progress if progress is not None else len(questions) > batch_size
    for s in tqdm(starts, desc="generate", disable=not show, leave=False):
        answers += generate_batch(
            lm,
            pil[s : s + batch_size],
            questions[s : s + batch_size],
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            **gen_kwargs,
        )
    return answers[0] if single else answers
