"""The architecture adapter interface: the only place that knows a model's module paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asru_lab.errors import AsruLabError


class AdapterError(AsruLabError, ValueError):
    """The model does not have the structure the adapter expects (or a layer is out of range)."""


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where things live inside one family of HF vision-language models.

    Paths are dotted attribute paths from the `*ForConditionalGeneration` object. Layer
    indices are 0-based positions in the decoder's layer list; "the output of layer L" is the
    residual stream after decoder layer L.
    """

    family: str
    model_types: tuple[str, ...]
    language_model_path: str = "model.language_model"
    layers_attr: str = "layers"
    norm_attr: str = "norm"
    lm_head_path: str = "lm_head"
    embed_attr: str = "embed_tokens"
    mlp_out_attr: str = "mlp.down_proj"  # in a decoder layer: the linear whose output is added
    # to the residual stream last (nothing in the layer reads it), which stage 1.2 edits
    attention_attr: str = "self_attn"  # in a decoder layer: the attention block; element 0 of
    # its output is what the layer adds to the residual stream
    mlp_attr: str = "mlp"  # in a decoder layer: the MLP block (its output is added likewise)
    visual_projector_path: str = "model.visual.merger"  # its output: the visual tokens'
    # embeddings as they enter the language model
    image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>"

    # --- module access --------------------------------------------------------------------
    def _get(self, model: nn.Module, path: str) -> nn.Module:
        obj = model
        for part in path.split("."):
            if not hasattr(obj, part):
                raise AdapterError(
                    f"{self.family} adapter: {type(model).__name__} has no module {path!r}"
                )
            obj = getattr(obj, part)
        return obj

    def language_model(self, model: nn.Module) -> nn.Module:
        return self._get(model, self.language_model_path)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self._get(model, f"{self.language_model_path}.{self.layers_attr}")

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        layers = self.decoder_layers(model)
        if not -len(layers) <= index < len(layers):
            raise AdapterError(
                f"layer {index} does not exist: this model has {len(layers)} decoder layers "
                f"(valid: 0..{len(layers) - 1})"
            )
        return layers[index]

    def layer_path(self, index: int) -> str:
        return f"{self.language_model_path}.{self.layers_attr}.{index}"

    def mlp_out_path(self, index: int) -> str:
        """Dotted path of decoder layer `index`'s MLP output projection."""
        return f"{self.layer_path(index)}.{self.mlp_out_attr}"

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self._get(model, f"{self.language_model_path}.{self.norm_attr}")

    def lm_head(self, model: nn.Module) -> nn.Module:
        return self._get(model, self.lm_head_path)

    def embed_tokens(self, model: nn.Module) -> nn.Module:
        return self._get(model, self.embed_path)

    @property
    def embed_path(self) -> str:
        return f"{self.language_model_path}.{self.embed_attr}"

    def attention_path(self, index: int) -> str:
        return f"{self.layer_path(index)}.{self.attention_attr}"

    def mlp(self, model: nn.Module, index: int) -> nn.Module:
        """Decoder layer `index`'s MLP module."""
        self.layer(model, index)  # the clear error for a layer that does not exist
        return self._get(model, self.mlp_path(index))

    def mlp_path(self, index: int) -> str:
        return f"{self.layer_path(index)}.{self.mlp_attr}"

    def visual_feature_paths(self, model: nn.Module) -> list[str]:
        """Modules whose outputs carry the image into the language model, in the order the
        forward pass runs them (one row per visual token)."""
        return [self.visual_projector_path]

    # --- TransformerLens `TransformerBridge` hook names -----------------------------------
    def lens_hook(self, component: str, layer: int, site: str = "output") -> str:
        """The bridge's hook on decoder layer `layer`: "residual" at the layer's "output"
        (the stream after it) or "input" (the stream entering it), "attention" or "mlp" at
        their "output" (what the layer adds to the residual stream)."""
        if component == "residual" and site in ("output", "input"):
            return f"blocks.{layer}.hook_{'out' if site == 'output' else 'in'}"
        if component in ("attention", "mlp") and site == "output":
            return f"blocks.{layer}.hook_{'attn' if component == 'attention' else 'mlp'}_out"
        raise AdapterError(
            f"no TransformerLens hook for {component!r} at {site!r}: 'residual' has 'output' "
            "and 'input', 'attention' and 'mlp' have 'output'"
        )

    def lens_visual_hooks(self, model: nn.Module) -> list[str]:
        """The bridge's hooks on the modules of `visual_feature_paths`, in the same order."""
        return ["vision_projector.hook_out"]

    def image_token_id(self, model: nn.Module) -> int:
        """The placeholder token id that visual tokens occupy in `input_ids`."""
        config = model.config
        token = getattr(config, "image_token_id", None)
        token = getattr(config, "image_token_index", None) if token is None else token
        if token is None:
            raise AdapterError(f"{self.family}: the model config names no image token id")
        return int(token)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))

    def hidden_size(self, model: nn.Module) -> int:
        return int(self.embed_tokens(model).weight.shape[1])

    def deepstack_layers(self, model: nn.Module) -> range:
        """Decoder layers after which visual features are added to the residual stream.

        Empty for families without DeepStack. For Qwen3-VL, features are added to the output
        of layers 0..k-1, outside the layer modules: `layers[i].output` lacks them while
        `layers[i + 1].input` has them.
        """
        return range(0)

    # --- prompts --------------------------------------------------------------------------
    def user_message(self, question: str, has_image: bool) -> list[dict]:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": question}]
        return [{"role": "user", "content": content}]

    def logits_from_hidden(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logit lens: final norm then lm head applied to a residual-stream tensor."""
        return self.lm_head(model)(self.final_norm(model)(hidden))
