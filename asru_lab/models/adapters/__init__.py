"""Architecture adapters, one small module per model family, looked up by `model_type`."""

from __future__ import annotations

from asru_lab.models.adapters.base import AdapterError, ArchitectureAdapter
from asru_lab.models.adapters.llava import LLAVA
from asru_lab.models.adapters.qwen2_5_vl import QWEN2_5_VL
from asru_lab.models.adapters.qwen3_vl import QWEN3_VL

ADAPTERS: list[ArchitectureAdapter] = [QWEN3_VL, QWEN2_5_VL, LLAVA]


def adapter_for(config) -> ArchitectureAdapter:
    """The adapter for a model config; a clear error for an unsupported family."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for a in ADAPTERS for t in a.model_types)
    raise AdapterError(f"unsupported model type {model_type!r}; supported: {supported}")


__all__ = ["ADAPTERS", "AdapterError", "ArchitectureAdapter", "adapter_for"]
