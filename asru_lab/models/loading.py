"""`load_model`: the embedded default, a local directory or an HF id, with its adapter."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from asru_lab.artifacts import atomic_dir
from asru_lab.errors import AsruLabError
from asru_lab.models.adapters import ArchitectureAdapter, adapter_for
from asru_lab.models.embedded import EMBEDDED_NAME, embedded_dir
from asru_lab.models.processor import register_image_only_processor


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

    def clone(self) -> LoadedModel:
        """A deep copy of the weights (the processor and adapter are shared)."""
        return LoadedModel(
            copy.deepcopy(self.model),
            self.processor,
            self.adapter,
            self.name,
            self.revision,
            self.source,
            dict(self.info),
        )

    def save(
        self,
        out_dir: str | Path,
        *,
        records: dict[str, object] | None = None,
        keep: tuple[str, ...] = (),
    ) -> Path:
        """Write a `save_pretrained` directory that `load_model(out_dir)` reads back.

        `records`: file name -> JSON-ready object, written inside the same atomic directory
        (a stage's record lands together with its model or not at all). `keep`: entries of an
        existing `out_dir` (e.g. a training log folder) carried over into the new one.
        """
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            meta = {"name": self.name, "revision": self.revision, **self.info}
            (tmp / "asru_lab_model.json").write_text(json.dumps(meta, indent=2))
            for name, record in (records or {}).items():
                (tmp / name).write_text(json.dumps(record, indent=2) + "\n")
            for name in keep:
                if (Path(out_dir) / name).exists():
                    (Path(out_dir) / name).rename(tmp / name)
        return Path(out_dir)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a vision-language model and its processor.

    `None` loads the embedded tiny Qwen3-VL shipped with the package; a directory loads a
    `save_pretrained` checkpoint; any other string is treated as a model-hub id.
    Returns a `LoadedModel` in eval mode.
    """
    register_image_only_processor()
    if name_or_path is None:
        path = embedded_dir()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded model is not built ({path} has no config.json); "
                "run `asru-lab build-embedded` to create it"
            )
        source, name = str(path), EMBEDDED_NAME
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
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype or torch.float32)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {source!r}: {exc}") from exc
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
