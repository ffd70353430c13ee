"""The embedded default: a tiny Qwen3-VL built offline, shipped inside the package.

This module knows how to make its parts from nothing (tokenizer, processor, config) and
where the shipped result lives. Training it is `asru_lab.runs.build_embedded`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil, Qwen3VLConfig

from asru_lab.models.processor import Qwen3VLImageOnlyProcessor

EMBEDDED_NAME = "asru-lab/embedded-qwen3-vl-tiny"
ORACLE_NAME = "asru-lab/embedded-qwen3-vl-tiny-oracle"
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IMAGE_SIZE = 64
PATCH_SIZE = 8
MERGE_SIZE = 2

# Qwen-style chat template. `{%-` would eat the newline after the role, so newlines are
# emitted inside the expressions.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string %}{{- message['content'] -}}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] -}}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' -}}{%- endif %}"
)


@dataclass(frozen=True)
class TinyDims:
    """Sizes of the embedded model (text decoder and vision tower)."""

    hidden: int = 192
    layers: int = 6
    intermediate: int = 576
    heads: int = 4
    kv_heads: int = 2
    vision_hidden: int = 96
    vision_depth: int = 2
    vision_heads: int = 4


def embedded_dir() -> Path:
    """Directory of the shipped embedded model (package data)."""
    return Path(str(resources.files("asru_lab") / "embedded"))


def oracle_dir(forget_ratio: float = 0.1, split_seed: int = 0) -> Path:
    """Directory of the retrain oracle for the synthetic forget set (`forget_ratio`,
    `split_seed`): the embedded recipe without those forget people. The default one ships."""
    return Path(
        str(resources.files("asru_lab") / "oracles" / f"forget{forget_ratio:g}-split{split_seed}")
    )


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with the Qwen special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        model_max_length=512,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Qwen3VLImageOnlyProcessor:
    """Processor for 64x64 images: 8x8 patches, merged 2x2 -> 16 image tokens."""
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    return Qwen3VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_config(tokenizer: PreTrainedTokenizerFast, dims: TinyDims = TinyDims()) -> Qwen3VLConfig:
    """A Qwen3-VL config of `dims`, with every special token id taken from `tokenizer`."""
    head_dim = dims.hidden // dims.heads
    half = head_dim // 2  # mrope sections (t, h, w) must sum to head_dim / 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": dims.hidden,
            "intermediate_size": dims.intermediate,
            "num_hidden_layers": dims.layers,
            "num_attention_heads": dims.heads,
            "num_key_value_heads": dims.kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": section,
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": True,
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": dims.vision_depth,
            "hidden_size": dims.vision_hidden,
            "intermediate_size": dims.vision_hidden * 2,
            "num_heads": dims.vision_heads,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
            "out_hidden_size": dims.hidden,
            "num_position_embeddings": (IMAGE_SIZE // PATCH_SIZE) ** 2,
            "deepstack_visual_indexes": list(range(dims.vision_depth - 1)),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    cfg.pad_token_id = ids["<|endoftext|>"]
    cfg.eos_token_id = ids["<|im_end|>"]
    return cfg
