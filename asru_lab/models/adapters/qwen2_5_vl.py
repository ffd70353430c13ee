"""Qwen2.5-VL: decoder under `model.language_model`, no DeepStack (visual tokens enter once)."""

from __future__ import annotations

from asru_lab.models.adapters.base import ArchitectureAdapter

# transformers 5.24 `Qwen2_5_VLForConditionalGeneration`: `model.language_model` is a
# `Qwen2_5_VLTextModel` (`embed_tokens`, `layers`, `norm`); `lm_head` sits at the top. These are
# the base adapter's defaults, and so is the Qwen vision placeholder.
QWEN2_5_VL = ArchitectureAdapter(family="qwen2_5_vl", model_types=("qwen2_5_vl",))
