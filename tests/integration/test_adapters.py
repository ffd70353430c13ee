"""Every supported family loads through its adapter and generates, with tiny random models.

Each family is built offline (tests/tiny_models.py), saved, reloaded with `load_model` and
driven through the same adapter interface the rest of asru_lab uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer

from asru_lab.generation import build_prompt, encode, generate
from asru_lab.models.adapters import AdapterError
from asru_lab.models.loading import LoadedModel, load_model
from tests.tiny_models import (
    HIDDEN,
    LAYERS,
    make_tiny_llava,
    make_tiny_qwen2_5_vl,
    make_tiny_qwen3_vl,
)

QUESTION = "What is this?"


@dataclass(frozen=True)
class Family:
    family: str
    make: Callable[[Path], Path]
    layer_class: type
    image_tokens: int  # placeholder tokens one image expands to in the prompt
    deepstack: range


FAMILIES = [
    Family("qwen3_vl", make_tiny_qwen3_vl, Qwen3VLTextDecoderLayer, 16, range(1)),
    Family("qwen2_5_vl", make_tiny_qwen2_5_vl, Qwen2_5_VLDecoderLayer, 4, range(0)),
    Family("llava", make_tiny_llava, LlamaDecoderLayer, 16, range(0)),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.family for f in FAMILIES])
def family_model(request, tmp_path_factory) -> tuple[Family, LoadedModel]:
    fam: Family = request.param
    out = fam.make(tmp_path_factory.mktemp(fam.family))
    return fam, load_model(str(out))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A 40x40 two-colour picture (not the model's native size, so the processor resizes)."""
    img = Image.new("RGB", (40, 40), (200, 40, 40))
    img.paste((30, 90, 220), (0, 20, 40, 40))
    return img


def test_adapter_finds_the_decoder(family_model):
    fam, lm = family_model
    adapter, model = lm.adapter, lm.model
    assert adapter.family == fam.family
    assert adapter.num_layers(model) == lm.num_layers == LAYERS
    assert adapter.hidden_size(model) == lm.hidden_size == HIDDEN
    assert isinstance(adapter.layer(model, 0), fam.layer_class)
    assert adapter.layer(model, -1) is adapter.decoder_layers(model)[LAYERS - 1]
    assert adapter.deepstack_layers(model) == fam.deepstack
    assert lm.fingerprint()["family"] == fam.family


def test_missing_layer_names_the_layer_count(family_model):
    _, lm = family_model
    with pytest.raises(AdapterError, match=f"layer 99 does not exist.*{LAYERS} decoder layers"):
        lm.adapter.layer(lm.model, 99)


def test_logit_lens_uses_final_norm_and_lm_head(family_model):
    _, lm = family_model
    norm, head = lm.adapter.final_norm(lm.model), lm.adapter.lm_head(lm.model)
    assert isinstance(norm, torch.nn.Module)
    assert isinstance(head, torch.nn.Linear) and head.in_features == HIDDEN
    hidden = torch.randn(1, 3, HIDDEN)
    with torch.no_grad():
        logits = lm.adapter.logits_from_hidden(lm.model, hidden)
    assert logits.shape == (1, 3, head.out_features)


def test_prompt_places_one_image_placeholder(family_model, image):
    fam, lm = family_model
    placeholder = lm.adapter.image_placeholder
    with_image = build_prompt(lm, QUESTION, has_image=True)
    text_only = build_prompt(lm, QUESTION, has_image=False)
    assert with_image.count(placeholder) == 1 and QUESTION in with_image
    assert placeholder not in text_only and QUESTION in text_only
    batch = encode(lm, [image, None], [QUESTION, QUESTION])
    image_token_counts = (batch["input_ids"] == lm.processor.image_token_id).sum(dim=1)
    assert image_token_counts.tolist() == [fam.image_tokens, 0]


def test_generate_with_image_text_only_and_mixed_batch(family_model, image):
    _, lm = family_model
    with_image = generate(lm, image, QUESTION, max_new_tokens=4)
    text_only = generate(lm, None, QUESTION, max_new_tokens=4)
    assert isinstance(with_image, str) and isinstance(text_only, str)
    mixed = generate(lm, [image, None], [QUESTION, QUESTION], max_new_tokens=4)
    # Left padding and a batch-mate without an image must not change a row's greedy answer.
    assert mixed == [with_image, text_only]


def test_the_image_reaches_the_decoder(family_model, image):
    _, lm = family_model
    flipped = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    with torch.no_grad():
        logits = [
            lm.model(**encode(lm, [img], [QUESTION])).logits[0, -1] for img in (image, flipped)
        ]
    assert not torch.allclose(logits[0], logits[1])


def test_forward_hook_on_a_layer_fires_during_generate(family_model, image):
    _, lm = family_model
    outputs: list[torch.Tensor] = []
    handle = lm.adapter.layer(lm.model, 0).register_forward_hook(
        lambda _module, _args, out: outputs.append(out)
    )
    try:
        generate(lm, image, QUESTION, max_new_tokens=4)
    finally:
        handle.remove()
    assert outputs, "the hook on layer 0 never fired"
    first = outputs[0]
    assert torch.is_tensor(first) and first.shape[0] == 1 and first.shape[-1] == HIDDEN
