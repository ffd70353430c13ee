"""LLaVA: a CLIP vision tower and projector in front of a Llama-style decoder."""

from __future__ import annotations

from asru_lab.models.adapters.base import ArchitectureAdapter

# transformers 5.24 `LlavaForConditionalGeneration`: `model.language_model` is the text backbone
# (`LlamaModel` for LLaVA-1.5: `embed_tokens`, `layers`, `norm`); `lm_head` sits at the top.
# LLaVA chat templates render an `{"type": "image"}` part as `<image>`, which the processor
# expands to one token per vision patch, so the base `user_message` (image part first) fits.
LLAVA = ArchitectureAdapter(
    family="llava",
    model_types=("llava",),
    image_placeholder="<image>",
    visual_projector_path="model.multi_modal_projector",
)
