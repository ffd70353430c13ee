"""Qwen3-VL: decoder under `model.language_model`, DeepStack after the first layers."""

from __future__ import annotations

from torch import nn

from asru_lab.models.adapters.base import ArchitectureAdapter


class Qwen3VLAdapter(ArchitectureAdapter):
    def deepstack_layers(self, model: nn.Module) -> range:
        vision = getattr(model.config, "vision_config", None)
        return range(len(getattr(vision, "deepstack_visual_indexes", ()) or ()))

    def visual_feature_paths(self, model: nn.Module) -> list[str]:
        # the DeepStack mergers run inside the vision tower's block loop, before its final merger
        deepstack = [
            f"model.visual.deepstack_merger_list.{k}" for k in self.deepstack_layers(model)
        ]
        return [*deepstack, self.visual_projector_path]

    def lens_visual_hooks(self, model: nn.Module) -> list[str]:
        deepstack = [
            f"vision_encoder.deepstack_mergers.{k}.hook_out" for k in self.deepstack_layers(model)
        ]
        return [*deepstack, *super().lens_visual_hooks(model)]


QWEN3_VL = Qwen3VLAdapter(family="qwen3_vl", model_types=("qwen3_vl",))
