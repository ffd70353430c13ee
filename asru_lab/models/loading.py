"""`load_model`: the embedded default, a local directory or an HF id, with its adapter."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
)

from asru_lab.artifacts import atomic_dir, check_complete
from asru_lab.models.adapters import ArchitectureAdapter, adapter_for
from asru_lab.models.folder import ModelLoadError, check_chat_templates, open_model_folder
from asru_lab.models.processor import register_image_only_processor
from asru_lab.quiet import quiet_in_notebooks


def drop_forward_patches(model: torch.nn.Module) -> list[str]:
    """Remove every instance-level `forward` a trainer left on `model`'s modules (TRL's fused
    log-prob head sets `model.forward` to a closure over the *original* model's bound forward;
    accelerate wraps it for mixed precision), so that each module runs its class's forward on
    its own weights; accelerate's device-map hooks stay. Without this, a deep copy of a model
    trained with TRL computes with the original's weights: its training moves nothing and its
    answers are the original's. Returns the names of the modules that had one."""
    from nnsight.intervention.source import STATE, Controller

    found = []
    for name, module in model.named_modules():
        forward = module.__dict__.get("forward")
        # accelerate's device-map hooks (`_hf_hook`) are bound to each copy by deepcopy, and
        # nnsight's controller holds its module by weak reference, which deepcopy rebinds:
        # both compute with the copy's weights and are kept
        if forward is None or isinstance(forward, Controller) or hasattr(module, "_hf_hook"):
            continue
        del module.__dict__["forward"]
        module.__dict__.pop("_original_forward", None)
        # the patch had displaced nnsight's controller: forget its state too, so that the next
        # trace instruments the module afresh instead of finding its slot taken
        module.__dict__.pop(STATE, None)
        found.append(name or "<root>")
    return found


@dataclass
class LoadedModel:
    """An HF vision-language model with its processor, adapter and provenance."""

    model: PreTrainedModel
    processor: object
    adapter: ArchitectureAdapter
    name: str
    revision: str | None = None
    source: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.model)

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size(self.model)

    @property
    def token_rows(self) -> int:
        """How many LM-head rows are tokens the tokenizer knows. A real Qwen3-VL pads its
        vocabulary to 151 936 rows for a tokenizer of ~151 669 tokens: rankings over the
        vocabulary (logit lens, top-k) must leave the padded rows out."""
        return len(self.tokenizer)

    def fingerprint(self) -> dict:
        """What a probe records to recognise this model: name, sizes and a config hash."""
        cfg = self.model.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            cfg.pop(key, None)
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
        return {
            "name": self.name,
            "revision": self.revision,
            "family": self.adapter.family,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "config_sha256": digest.hexdigest()[:16],
        }

    def mismatch(self, other: LoadedModel) -> str:
        """What keeps `other` from being compared with this model token by token and layer by
        layer ("family X vs Y, hidden_size ..."; `other`'s value first), or "" when nothing."""

        def shape(lm: LoadedModel) -> dict:
            fp = lm.fingerprint()
            keys = ("family", "hidden_size", "num_layers")
            return {**{k: fp[k] for k in keys}, "vocab": len(lm.tokenizer)}

        mine, theirs = shape(self), shape(other)
        return ", ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in mine if mine[k] != theirs[k])

    def clone(self, copy_only: Sequence[str] | None = None) -> LoadedModel:
        """A copy whose weights can change without changing this model's (the processor and
        adapter are shared).

        `copy_only`: full module names (`model.named_modules()`) of the only modules that will
        change. Their parameters and buffers are copied; every other weight shares this
        model's memory (a new `Parameter` over the same storage, so `requires_grad` is the
        copy's own) and must be treated as read-only. Stage 1.2 changes one `down_proj`: at 8B
        that is 0.1 GB copied instead of 17.5 GB in bf16. None copies everything.
        """
        if copy_only is None:
            model = copy.deepcopy(self.model)
        else:
            named = dict(self.model.named_modules())
            missing = [m for m in copy_only if m not in named]
            if missing:
                raise ModelLoadError(f"cannot copy {missing}: no such module in {self.name}")
            copied = {
                id(t) for m in copy_only for t in (*named[m].parameters(), *named[m].buffers())
            }
            memo: dict = {}
            for p in self.model.parameters():
                if id(p) not in copied and id(p) not in memo:
                    memo[id(p)] = torch.nn.Parameter(p.data, requires_grad=p.requires_grad)
            for b in self.model.buffers():
                if id(b) not in copied:
                    memo[id(b)] = b
            model = copy.deepcopy(self.model, memo)
        drop_forward_patches(model)
        return LoadedModel(
            model,
            self.processor,
            self.adapter,
            self.name,
            self.revision,
            self.source,
            dict(self.info),
        )

    @quiet_in_notebooks()
    def save(
        self,
        out_dir: str | Path,
        *,
        records: dict[str, object] | None = None,
        keep: tuple[str, ...] = (),
        overwrite: bool = False,
    ) -> Path:
        """Write a `save_pretrained` directory that `load_model(out_dir)` reads back.

        `records`: file name -> JSON-ready object, written inside the same atomic directory
        (a stage's record lands together with its model or not at all). `keep`: asru_lab's
        entries of an existing `out_dir` (e.g. a training log folder) that stay. An existing
        folder that is not asru_lab's output needs `overwrite` (`artifacts.atomic_dir`).
        """
        with atomic_dir(out_dir, overwrite=overwrite, keep=keep) as tmp:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            meta = {"name": self.name, "revision": self.revision, **self.info}
            (tmp / "asru_lab_model.json").write_text(json.dumps(meta, indent=2))
            for name, record in (records or {}).items():
                (tmp / name).write_text(json.dumps(record, indent=2) + "\n")
        return Path(out_dir)


@quiet_in_notebooks()
def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    check_finite: bool = True,
) -> LoadedModel:
    """Load a vision-language model and its processor.

    `None` loads the embedded tiny Qwen3-VL shipped with the package; a directory loads a
    `save_pretrained` checkpoint; any other string is treated as a model-hub id.
    `dtype`: None (float32), "auto" (the checkpoint's own), or float32 / float16 / bfloat16 as a
    `torch.dtype` or its name. The folder is untrusted: it is checked before loading
    (`models.folder`: no code of its own, no file outside it, safetensors only, headers that fit
    their files) and its chat template is rendered once under a time limit; `check_finite`
    refuses weights holding NaN or Inf (one sum over each tensor).
    Returns a `LoadedModel` in eval mode.
    """
    torch_dtype = _checked_dtype(dtype)
    register_image_only_processor()
    check_complete(name_or_path)  # a folder whose writer was killed half-way is not read
    folder = open_model_folder(name_or_path)  # every check on the folder's files, first
    source = str(folder.path)
    adapter = adapter_for(_vision_language_config(source))
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the processor of {source!r}: {exc}") from exc
    if not hasattr(processor, "tokenizer"):
        raise ModelLoadError(
            f"{source!r} loaded a bare tokenizer instead of a multimodal processor; "
            "its processor_config.json is missing or unsupported"
        )
    check_chat_templates(processor, adapter, folder.path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"could not load model {source!r}: {exc}") from exc
    if check_finite:
        _check_finite(model, folder.weight_files, source)
    processor.tokenizer.padding_side = "left"
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(
        model, processor, adapter, folder.name, folder.revision, source, dict(folder.meta)
    )


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _checked_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """The dtype to pass to `from_pretrained`: float32 for None, "auto", or one of `DTYPES`."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and (dtype == "auto" or dtype in DTYPES):
        return DTYPES.get(dtype, dtype)
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ModelLoadError(
        f"unsupported dtype {dtype!r}: use None (float32), 'auto' (the checkpoint's own) or "
        f"one of {', '.join(DTYPES)} (a torch.dtype or its name)"
    )


def _vision_language_config(source: str) -> PretrainedConfig:
    """The config of `source`, refused when AutoModelForImageTextToText cannot load it."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the config of {source!r}: {exc}") from exc
    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return config
    arch = (config.architectures or [config.model_type])[0]
    kind = (
        "a text-only model"
        if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or arch.endswith("ForCausalLM")
        else "not a vision-language model"
    )
    raise ModelLoadError(
        f"{source}: this is {kind} ({arch}); asru_lab needs a vision-language model that "
        "AutoModelForImageTextToText loads (e.g. Qwen3-VL, Qwen2.5-VL, LLaVA)"
    )


def _check_finite(model: PreTrainedModel, weight_files: dict[str, Path], source: str) -> None:
    """Refuse a model whose weights hold NaN or Inf, naming the file and the tensor."""
    bad, seen = [], set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.numel())
        if not tensor.is_floating_point() or tensor.numel() == 0 or key in seen:
            continue
        seen.add(key)
        # a sum holds NaN/Inf when an element does (one pass, no copy); one that merely
        # overflows is recounted exactly
        if not tensor.sum().isfinite():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append((name, count))
    if not bad:
        return
    name, count = bad[0]
    files = set(weight_files.values())
    file = weight_files.get(name) or (files.pop() if len(files) == 1 else None)
    where = file or source
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    dtype = model.dtype
    cause = (
        "the file is damaged, or its values overflow float16: load it as bfloat16 or float32"
        if dtype == torch.float16
        else "the file is damaged: re-save or download it again"
    )
    raise ModelLoadError(f"{where}: tensor {name} holds {count} NaN/Inf values{more}; {cause}")
