"""Tiny random vision-language models of each supported family, built offline.

Each `make_tiny_*` writes a `save_pretrained` directory (model + processor) that
`asru_lab.models.loading.load_model(dir)` reads back. Weights are random: the models exist to
prove module paths, processors and generation plumbing, not to answer anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLForConditionalGeneration,
)

from asru_lab.models.embedded import (
    CHAT_TEMPLATE,
    TinyDims,
    build_config,
    build_processor,
    build_tokenizer,
)
from asru_lab.models.processor import Qwen2_5_VLImageOnlyProcessor

HIDDEN = 64
LAYERS = 2
HEADS = 2
HEAD_DIM = HIDDEN // HEADS
# Qwen M-RoPE sections (t, h, w) must sum to head_dim / 2.
MROPE_SECTION = [6, 5, 5]
IMAGE_SIZE = 32
PATCH_SIZE = 8
SENTENCES = [
    "What is this? This is a picture of a person.",
    "Where was this person born? I do not know who this is.",
    "The person in the image is a painter born in a small town.",
    "USER: ASSISTANT: what is shown in the picture?",
] * 4

# LLaVA-1.5 (llava-hf) chat template: images of a turn first, each as `<image>\n`.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' %}{{- message['role'].upper() + ': ' -}}{%- endif %}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{- '<image>\\n' -}}{%- endfor %}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{- part['text'] + ' ' -}}{%- endfor %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT:' -}}{%- endif %}"
)


def _tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(SENTENCES, vocab_size=320)


def _save(model: torch.nn.Module, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    pixels = IMAGE_SIZE * IMAGE_SIZE
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )


def make_tiny_qwen3_vl(out_dir: str | Path) -> Path:
    """A random Qwen3-VL (hidden 64, 2 layers, DeepStack after layer 0) saved to `out_dir`."""
    torch.manual_seed(0)
    tok = _tokenizer()
    dims = TinyDims(
        hidden=HIDDEN,
        layers=LAYERS,
        intermediate=2 * HIDDEN,
        heads=HEADS,
        kv_heads=1,
        vision_hidden=32,
        vision_depth=2,
        vision_heads=2,
    )
    cfg = build_config(tok, dims)
    # Untied, so a random model's greedy answer is not an echo of the prompt's last token.
    cfg.tie_word_embeddings = cfg.text_config.tie_word_embeddings = False
    model = Qwen3VLForConditionalGeneration(cfg)
    return _save(model, build_processor(tok), out_dir)


def make_tiny_qwen2_5_vl(out_dir: str | Path) -> Path:
    """A random Qwen2.5-VL (hidden 64, 2 layers, 32x32 images -> 4 image tokens)."""
    torch.manual_seed(0)
    tok = _tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": MROPE_SECTION,
            },
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 2 * PATCH_SIZE * 2,
            "fullatt_block_indexes": [1],
            "out_hidden_size": HIDDEN,
        },
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    cfg.pad_token_id = ids["<|endoftext|>"]
    cfg.eos_token_id = ids["<|im_end|>"]
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    processor = Qwen2_5_VLImageOnlyProcessor(
        image_processor=_qwen_image_processor(), tokenizer=tok, chat_template=CHAT_TEMPLATE
    )
    return _save(model, processor, out_dir)


def make_tiny_llava(out_dir: str | Path) -> Path:
    """A random LLaVA (Llama decoder hidden 64, 2 layers; CLIP tower, 32x32 -> 16 image tokens)."""
    torch.manual_seed(0)
    tok = _tokenizer()
    tok.add_special_tokens({"image_token": "<image>"})
    pad, eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2  # "default" strategy drops the CLS token
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=1,
            max_position_embeddings=512,
            pad_token_id=pad,
            eos_token_id=eos,
            bos_token_id=None,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    cfg.pad_token_id, cfg.eos_token_id = pad, eos
    model = LlavaForConditionalGeneration(cfg)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)
