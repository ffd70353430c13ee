"""Qwen-VL processors that work without torchvision.

The stock `Qwen3VLProcessor` and `Qwen2_5_VLProcessor` build a video processor, which needs
torchvision; no CPU torchvision wheel works beside torch 2.13 here. Images only need the PIL
image processor (`Qwen2VLImageProcessorPil`), so these subclasses pass `video_processor=None`.
They are registered for their configs only when torchvision is missing, so a machine that has
torchvision keeps the stock processors. LLaVA needs nothing here: `LlavaProcessor` has no video
processor and loads the PIL CLIP image processor (`CLIPImageProcessorPil`) by itself.
"""

from __future__ import annotations

import importlib.util

from transformers import (
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
)


def torchvision_available() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:  # PyPI's torchvision can be present yet fail to import beside a CPU torch
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


class _WithoutVideo:
    """Mixin for a Qwen-VL processor: no video processor (images and text only)."""

    # ProcessorMixin derives the sub-processors to load from this signature: no video here.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(_WithoutVideo, Qwen3VLProcessor):
    """`Qwen3VLProcessor` with no video processor (images and text only)."""


class Qwen2_5_VLImageOnlyProcessor(_WithoutVideo, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` with no video processor (images and text only)."""


IMAGE_ONLY_PROCESSORS = {
    Qwen3VLConfig: Qwen3VLImageOnlyProcessor,
    Qwen2_5_VLConfig: Qwen2_5_VLImageOnlyProcessor,
}


def register_image_only_processor() -> None:
    """Make AutoProcessor build the image-only processors for Qwen-VL checkpoints.

    Does nothing when torchvision works (the stock processors are used then).
    """
    if not torchvision_available():
        for config_class, processor_class in IMAGE_ONLY_PROCESSORS.items():
            AutoProcessor.register(config_class, processor_class, exist_ok=True)
