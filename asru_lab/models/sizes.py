"""Random-weight Qwen3-VL models at the published sizes, for measuring cost at real scale.

No weights can be downloaded here, but a model's *shapes* can be built: a random Qwen3-VL at
2B / 4B / 8B dimensions runs every code path of the toolkit at the real cost (151 936-row
vocabulary, 28-36 decoder layers, 196 image tokens per portrait, DeepStack) without knowing
anything. Its answers are noise; its seconds and bytes are real.

The text and vision dimensions are the published configs' facts (`ModelSize`, `SIZES`; see
STACK.md). The tokenizer is the embedded model's, its ids kept and the embedding padded to the
real vocabulary size, so the synthetic benchmark's prompts work unchanged; the image processor
has Qwen3-VL's real patch (16), spatial merge (2) and temporal patch (2), with a pixel budget
(default 448 x 448 -> 196 image tokens).

    lm = build_random_model("qwen3-vl-2b")            # in memory, float32
    lm = build_random_model(SIZES["qwen3-vl-4b"].shrunk(16), pixels=224 * 224)
    asru-lab make-model --size qwen3-vl-2b --out models/random-2b
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.initialization import no_init_weights

from asru_lab.errors import AsruLabError
from asru_lab.models.adapters import adapter_for
from asru_lab.models.embedded import CHAT_TEMPLATE, SPECIAL_TOKENS, embedded_dir
from asru_lab.models.loading import LoadedModel
from asru_lab.models.processor import Qwen3VLImageOnlyProcessor

QWEN_VOCAB = 151_936
PATCH = 16
MERGE = 2
TEMPORAL_PATCH = 2
DEFAULT_PIXELS = 448 * 448  # -> (448 / 32)^2 = 196 image tokens
MROPE_SECTION = (24, 20, 20)  # Qwen3-VL's interleaved M-RoPE sections for head_dim 128


class SizeError(AsruLabError, ValueError):
    """A model size that does not exist or cannot be built (names the size and the field)."""


@dataclass(frozen=True)
class ModelSize:
    """The dimensions of a Qwen3-VL: text decoder and vision tower.

    `head_dim` None means `hidden // heads` (which must then divide). `deepstack` lists the
    vision blocks whose features are added after decoder layers 0, 1, 2, ...
    """

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    deepstack: tuple[int, ...]
    head_dim: int | None = 128
    vocab: int = QWEN_VOCAB
    patch: int = PATCH
    merge: int = MERGE
    vision_positions: int = 2304  # learned position grid of the vision tower (48 x 48)
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, ...] = field(default=MROPE_SECTION)

    def __post_init__(self) -> None:
        ints = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.type in ("int", "int | None") and getattr(self, f.name) is not None
        }
        for key, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SizeError(
                    f"size {self.name!r}: {key} must be a positive integer, got {value!r}"
                )
        if self.head_dim is None and self.hidden % self.heads:
            raise SizeError(
                f"size {self.name!r}: hidden width {self.hidden} does not divide by its "
                f"{self.heads} attention heads (set head_dim, or a width that divides)"
            )
        if self.heads % self.kv_heads:
            raise SizeError(
                f"size {self.name!r}: {self.heads} attention heads do not divide into "
                f"{self.kv_heads} key/value heads"
            )
        if self.vision_hidden % self.vision_heads:
            raise SizeError(
                f"size {self.name!r}: vision width {self.vision_hidden} does not divide by its "
                f"{self.vision_heads} heads"
            )
        if self.text_head_dim % 2 or sum(self.mrope_section) != self.text_head_dim // 2:
            raise SizeError(
                f"size {self.name!r}: M-RoPE sections {list(self.mrope_section)} must sum to "
                f"head_dim / 2 = {self.text_head_dim / 2:g}"
            )
        bad = [i for i in self.deepstack if not 0 <= i < self.vision_depth]
        if bad or len(self.deepstack) > self.layers:
            raise SizeError(
                f"size {self.name!r}: DeepStack vision indexes {list(self.deepstack)} must lie "
                f"in 0..{self.vision_depth - 1} and number at most the {self.layers} layers"
            )
        if self.vocab < len(SPECIAL_TOKENS):
            raise SizeError(f"size {self.name!r}: vocab {self.vocab} is too small")

    @property
    def text_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    def shrunk(self, factor: int) -> ModelSize:
        """The same architecture with every width divided by `factor` (layer counts, vocabulary,
        patch, merge and DeepStack kept): the real code paths, at a fraction of the cost."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise SizeError(f"shrink factor must be a positive integer, got {factor!r}")
        if factor == 1:
            return self

        def div(value: int, floor: int = 1) -> int:
            return max(floor, value // factor)

        heads = div(self.heads)
        kv = max(1, self.kv_heads * heads // self.heads)
        head_dim = max(8, (self.text_head_dim // factor) // 2 * 2)
        half = head_dim // 2
        section = [max(1, round(s * half / sum(self.mrope_section))) for s in self.mrope_section]
        section[0] += half - sum(section)
        vision_heads = div(self.vision_heads)
        vision_hidden = max(
            vision_heads * 8, div(self.vision_hidden) // vision_heads * vision_heads
        )
        return dataclasses.replace(
            self,
            name=f"{self.name}/{factor}",
            hidden=div(self.hidden, 16),
            intermediate=div(self.intermediate, 16),
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
            mrope_section=tuple(section),
            vision_hidden=vision_hidden,
            vision_intermediate=div(self.vision_intermediate, 16),
            vision_heads=vision_heads,
        )

    def parameters(self) -> dict[str, int]:
        """Parameter counts computed from the dimensions (no model built): embedding, LM head
        (0 when tied), decoder, vision tower + merger, total."""
        d, f, hd = self.hidden, self.intermediate, self.text_head_dim
        attn = d * hd * (self.heads * 2 + self.kv_heads * 2) + 2 * hd  # q,o + k,v + q/k norms
        layer = attn + 3 * d * f + 2 * d
        v, vf = self.vision_hidden, self.vision_intermediate
        vision_block = 4 * v * v + 4 * v + 2 * v * vf + v + vf + 4 * v
        merged = v * self.merge**2
        mlp = merged * merged + merged + merged * d + d  # fc1, fc2
        # the main merger normalises before the 2x2 shuffle, DeepStack's after it
        mergers = 2 * v + mlp + len(self.deepstack) * (2 * merged + mlp)
        vision = (
            3 * TEMPORAL_PATCH * self.patch**2 * v
            + v  # patch embedding (with bias)
            + self.vision_positions * v
            + self.vision_depth * vision_block
            + mergers
        )
        embed = self.vocab * d
        head = 0 if self.tied else self.vocab * d
        decoder = self.layers * layer + d
        return {
            "embedding": embed,
            "lm_head": head,
            "decoder": decoder,
            "vision": vision,
            "total": embed + head + decoder + vision,
        }


# The published configs' facts (STACK.md). 2B's are the engine defaults (unverified).
SIZES: dict[str, ModelSize] = {
    "qwen3-vl-2b": ModelSize(
        "qwen3-vl-2b", hidden=2048, layers=28, intermediate=6144, heads=16, kv_heads=8,
        tied=True, vision_depth=24, vision_hidden=1024, vision_intermediate=4096,
        vision_heads=16, deepstack=(5, 11, 17),
    ),
    "qwen3-vl-4b": ModelSize(
        "qwen3-vl-4b", hidden=2560, layers=36, intermediate=9728, heads=32, kv_heads=8,
        tied=True, vision_depth=24, vision_hidden=1024, vision_intermediate=4096,
        vision_heads=16, deepstack=(5, 11, 17),
    ),
    "qwen3-vl-8b": ModelSize(
        "qwen3-vl-8b", hidden=4096, layers=36, intermediate=12288, heads=32, kv_heads=8,
        tied=False, vision_depth=27, vision_hidden=1152, vision_intermediate=4304,
        vision_heads=16, deepstack=(8, 16, 24),
    ),
    # Real vocabulary, patch, merge and DeepStack at toy widths: dry runs of the scale scripts.
    "tiny": ModelSize(
        "tiny", hidden=128, layers=4, intermediate=384, heads=4, kv_heads=2, tied=True,
        vision_depth=4, vision_hidden=64, vision_intermediate=128, vision_heads=4,
        deepstack=(0, 1, 2), head_dim=32, mrope_section=(6, 5, 5),
    ),
}  # fmt: skip


def get_size(size: str | ModelSize, **overrides) -> ModelSize:
    """A `ModelSize` by name (`SIZES`), optionally with fields replaced (`hidden=...`);
    a name may end in `/N` for the size shrunk N times."""
    if isinstance(size, ModelSize):
        spec = size
    else:
        base, _, factor = str(size).partition("/")
        if base not in SIZES:
            raise SizeError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
        if factor and not factor.isdigit():
            raise SizeError(f"{size!r}: the shrink factor after '/' must be a whole number")
        spec = SIZES[base].shrunk(int(factor)) if factor else SIZES[base]
    if overrides:
        known = {f.name for f in dataclasses.fields(ModelSize)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SizeError(f"unknown size field(s) {unknown}; expected some of {sorted(known)}")
        spec = dataclasses.replace(spec, **overrides)
    return spec


def check_pixels(pixels: int, size: ModelSize) -> int:
    """The pixel budget per image, refused below one merged patch (one image token)."""
    least = (size.patch * size.merge) ** 2
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < least:
        raise SizeError(
            f"pixel budget {pixels!r} is below one merged patch: an image token covers "
            f"{size.patch * size.merge} x {size.patch * size.merge} = {least} pixels "
            f"(patch {size.patch}, merge {size.merge})"
        )
    return pixels


def image_tokens(pixels: int, size: ModelSize) -> int:
    """Image tokens of a square image at `pixels` (what the processor's budget gives)."""
    side = round(pixels**0.5 / (size.patch * size.merge))
    return max(1, side) ** 2


def available_memory(device: torch.device) -> int | None:
    """Bytes that new tensors can take on `device` now: a CUDA device's free memory, or the
    host's MemAvailable (/proc/meminfo; free pages where there is none). None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(spec: ModelSize, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before allocating anything, a size whose weights alone (parameter count x bytes
    per element) exceed the memory available on `device`."""
    params = spec.parameters()["total"]
    need = params * dtype.itemsize
    free = available_memory(device)
    if free is None or need <= free:
        return
    gib = 1024**3
    smaller = " or in bfloat16 (--dtype bfloat16)" if dtype == torch.float32 else ""
    raise SizeError(
        f"size {spec.name!r} has {params / 1e9:,.1f} B parameters: its weights alone would "
        f"take about {need / gib:,.1f} GiB in {str(dtype).removeprefix('torch.')}, but "
        f"{free / gib:,.1f} GiB of memory is available on {device}; choose a smaller size, "
        f"shrink it (--shrink N, or the size 'name/N'){smaller}"
    )


def build_processor(size: ModelSize, pixels: int = DEFAULT_PIXELS) -> Qwen3VLImageOnlyProcessor:
    """The embedded tokenizer with Qwen3-VL's real image processing at a fixed pixel budget."""
    check_pixels(pixels, size)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir(), trust_remote_code=False)
    tokenizer.padding_side = "left"
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=size.patch,
        merge_size=size.merge,
        temporal_patch_size=TEMPORAL_PATCH,
        size={"shortest_edge": pixels, "longest_edge": pixels},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_config(size: ModelSize, tokenizer) -> Qwen3VLConfig:
    """A Qwen3-VL config of `size` whose special token ids are `tokenizer`'s."""
    if len(tokenizer) > size.vocab:
        raise SizeError(
            f"size {size.name!r}: vocab {size.vocab} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = Qwen3VLConfig(
        text_config={
            "vocab_size": size.vocab,
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "head_dim": size.text_head_dim,
            "max_position_embeddings": 262_144,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": size.rope_theta,
                "mrope_section": list(size.mrope_section),
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": size.tied,
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_intermediate,
            "num_heads": size.vision_heads,
            "patch_size": size.patch,
            "spatial_merge_size": size.merge,
            "temporal_patch_size": TEMPORAL_PATCH,
            "out_hidden_size": size.hidden,
            "num_position_embeddings": size.vision_positions,
            "deepstack_visual_indexes": list(size.deepstack),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=size.tied,
    )
    cfg.pad_token_id = ids["<|endoftext|>"]
    cfg.eos_token_id = ids["<|im_end|>"]
    return cfg


@torch.no_grad()
def _fill_random(model: nn.Module, seed: int, device: torch.device, std: float = 0.02) -> None:
    """Initialise every weight from one seeded generator, in module order: normal(0, std)
    matrices and embeddings, zero biases, unit norms (much faster than HF's own init at 2B+).
    Same seed, device and dtype: same weights."""
    gen = torch.Generator(device).manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        if isinstance(module, nn.Linear | nn.Embedding | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if id(weight) not in done:  # a tied LM head shares the embedding
                weight.normal_(0.0, std, generator=gen)
        elif isinstance(weight, nn.Parameter) and weight.dim() == 1:  # LayerNorm / RMSNorm
            weight.fill_(1.0)
        if isinstance(bias, nn.Parameter):
            bias.zero_()
        for p in (weight, bias):
            if isinstance(p, nn.Parameter):
                done.add(id(p))
    left = [n for n, p in model.named_parameters() if id(p) not in done]
    if left:
        raise SizeError(f"random init does not know how to fill {left[:5]}")


def build_random_model(
    size: str | ModelSize,
    *,
    pixels: int = DEFAULT_PIXELS,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A random-weight Qwen3-VL of `size` (a `SIZES` name, `"name/N"` shrunk, or a
    `ModelSize`) around the embedded tokenizer, in eval mode, built in `dtype` on `device`.
    Same seed, dtype and device: same weights."""
    spec = get_size(size)
    device = torch.device(device or "cpu")
    check_fits(spec, dtype, device)
    processor = build_processor(spec, pixels)
    config = build_config(spec, processor.tokenizer)
    started = time.perf_counter()
    # built directly in its dtype on its device: no float32 copy of an 8B model in host memory
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), device:
            model = Qwen3VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    if spec.tied:
        model.tie_weights()
    _fill_random(model, seed, device)
    model.eval()
    info = {
        "random_weights": True,
        "size": dataclasses.asdict(spec),
        "pixels": pixels,
        "image_tokens": image_tokens(pixels, spec),
        "seed": seed,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return LoadedModel(
        model,
        processor,
        adapter_for(model.config),
        f"asru-lab/random-{spec.name.replace('/', '-shrunk')}",
        None,
        None,
        info,
    )
