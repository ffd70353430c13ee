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
    PreTrainedModel,
)

from asru_lab.artifacts import atomic_dir
from asru_lab.errors import AsruLabError
from asru_lab.models.adapters import ArchitectureAdapter, adapter_for
from asru_lab.models.embedded import EMBEDDED_NAME, embedded_dir
from asru_lab.models.processor import register_image_only_processor
from asru_lab.quiet import quiet_in_notebooks


class ModelLoadError(AsruLabError, RuntimeError):
    """A model could not be loaded; the message says from where and why."""


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
    `torch.dtype` or its name. Weights are read from safetensors only (a pickle checkpoint can
    run code when opened); a local checkpoint's files are checked before loading, and
    `check_finite` refuses weights holding NaN or Inf (one sum over each tensor).
    Returns a `LoadedModel` in eval mode.
    """
    torch_dtype = _checked_dtype(dtype)
    register_image_only_processor()
    if name_or_path is None:
        path = embedded_dir()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded model is not built ({path} has no config.json); "
                "run `asru-lab build-embedded` to create it"
            )
        source, name, looks_local = str(path), EMBEDDED_NAME, True
    else:
        raw = str(name_or_path)
        path = Path(raw).expanduser()
        looks_local = path.exists() or raw.startswith((".", "/", "~")) or raw.count("/") != 1
        if looks_local:
            if not path.is_dir():
                raise ModelLoadError(f"model directory not found: {path}")
            if not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{path} is not a model directory: it has no config.json "
                    "(expected the output of save_pretrained)"
                )
        source, name = (str(path), str(path)) if looks_local else (raw, raw)
    meta = {}
    meta_file = Path(source) / "asru_lab_model.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        name = meta.pop("name", name)
    revision = meta.pop("revision", None)
    _check_vision_language(source)
    weight_files = _checked_weight_files(Path(source)) if looks_local else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True
        )
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"could not load model {source!r}: {exc}") from exc
    if check_finite:
        _check_finite(model, weight_files, source)
    if not hasattr(processor, "tokenizer"):
        raise ModelLoadError(
            f"{source!r} loaded a bare tokenizer instead of a multimodal processor; "
            "its processor_config.json is missing or unsupported"
        )
    processor.tokenizer.padding_side = "left"
    adapter = adapter_for(model.config)
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(model, processor, adapter, name, revision, source, meta)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_INDEX = "model.safetensors.index.json"
# safetensors' own cap on a header; a larger length means the first bytes are damaged
MAX_HEADER_BYTES = 100_000_000
# bytes per element of each safetensors dtype, to check a header's offsets against its shapes
ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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


def _check_vision_language(source: str) -> None:
    """Refuse a config that AutoModelForImageTextToText cannot load, saying what it is."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the config of {source!r}: {exc}") from exc
    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return
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


def _checked_weight_files(directory: Path) -> dict[str, Path]:
    """Each tensor name of a local checkpoint -> the safetensors file holding it.

    Checks every file the checkpoint names is present and that its header fits its size, and
    refuses a checkpoint that has only pickle files, which are never opened.
    """
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(
                f"{index}: not a readable safetensors index ({exc!r}); re-save the checkpoint"
            ) from exc
    elif (directory / "model.safetensors").is_file():
        weight_map, names = {}, ["model.safetensors"]
    else:
        pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelLoadError(
                f"{directory} has only pickle-format weights ({', '.join(pickles)}), which can "
                "run arbitrary code when opened, so asru_lab never loads them; convert the "
                "checkpoint to safetensors (save_pretrained writes model.safetensors) where you "
                "trust its source"
            )
        raise ModelLoadError(
            f"{directory} has no weights: expected model.safetensors or {SAFETENSORS_INDEX} "
            "(the output of save_pretrained)"
        )
    located: dict[str, Path] = {}
    for name in names:
        file = directory / name
        if not file.is_file():
            raise ModelLoadError(
                f"{index} names the shard {name}, which is missing; "
                "the checkpoint is incomplete: copy or download that file again"
            )
        located.update(dict.fromkeys(_safetensors_tensor_names(file), file))
    for tensor, name in weight_map.items():
        if located.get(tensor) != directory / name:
            raise ModelLoadError(
                f"{index} puts tensor {tensor} in {name}, which does not hold it; "
                "the checkpoint is damaged: re-save or download it again"
            )
    return located


def _safetensors_tensor_names(file: Path) -> list[str]:
    """The tensor names in a safetensors file, after checking its header against its size."""
    size = file.stat().st_size

    def damaged(problem: str) -> ModelLoadError:
        return ModelLoadError(
            f"{file}: {problem}; the file ({size} bytes) is truncated or damaged: "
            "re-save or download it again"
        )

    with file.open("rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little")
        if len(head) < 8 or length > min(size - 8, MAX_HEADER_BYTES):
            raise damaged("its header does not fit in the file")
        try:
            header = json.loads(fh.read(length))
            header.pop("__metadata__", None)
            spans = []
            for name, info in header.items():
                begin, stop = info["data_offsets"]
                width = ITEM_BYTES.get(info["dtype"])
                nbytes = width * torch.Size(info["shape"]).numel() if width else None
                spans.append((int(begin), int(stop), name, nbytes))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise damaged(f"its header is unreadable ({exc!r})") from exc
    end = 0
    for begin, stop, name, nbytes in sorted(spans):
        if begin != end or stop < begin or (nbytes is not None and stop - begin != nbytes):
            raise damaged(f"its header gives tensor {name} an invalid place")
        end = stop
    data = size - 8 - length
    if end != data:
        raise damaged(f"its header describes {end} bytes of tensor data, the file holds {data}")
    return [span[2] for span in spans]


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
