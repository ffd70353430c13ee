"""`SteeringProbe`: a steering direction as a reloadable, validated artifact.

On disk (a directory, written atomically): `probe.safetensors` (float32 tensors: `direction`
`[hidden]` and, when gated, `gate.weight` `[gate tokens, hidden]`) and `probe.json` (every
field below; loading never unpickles). `sweep.json` beside them holds what `locate` measured.

Steering at decoder layer L, site `output` (residual stream after layer L's module) or
`input` (the stream layer L receives), with operation

- `add`:    h <- h + alpha * v                      (v unnormalised, as in the paper)
- `ablate`: h <- h - alpha * (h . u) u,  u = v/|v|  (alpha = 1 removes the component)

at positions `all` (prompt and generated tokens), `prompt`, `last` (last prompt token) or
`generated`. With the memorisation gate on, only the rows whose gate fires are steered: the
gate is a logistic probe on the same site, read at the last prompt token of the unsteered
activations of the last few prompt tokens, `sigmoid(w . h + b) >= threshold`; its decision in
the prompt pass holds for the generated tokens.

This module is the artifact (its fields, file format and checks); `asru_lab.steering` applies
it (`probe.apply`, `probe.edit_trace` and `probe.project` check their arguments here, then
hand over).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from asru_lab import steering
from asru_lab.artifacts import atomic_dir, check_complete, write_json_atomic
from asru_lab.capture import check_site
from asru_lab.errors import AsruLabError
from asru_lab.models.loading import LoadedModel
from asru_lab.validation import check_fields, check_value

FORMAT = "asru_lab.steering_probe"
FORMAT_VERSION = 1
OPERATIONS = ("add", "ablate")
STEER_POSITIONS = ("all", "prompt", "last", "generated")
LAYER_CONVENTION = "0-based index into the decoder layer list (adapter.decoder_layers)"
REQUIRED_FIELDS = (
    "format",
    "format_version",
    "operation",
    "site",
    "layer",
    "layer_index_convention",
    "positions",
    "alpha",
    "normalisation",
    "model",
    "extraction",
    "dataset_fingerprint",
    "created",
    "asru_lab_version",
    "gate",
    "tensors",
)
MODEL_FIELDS = ("name", "revision", "family", "hidden_size", "num_layers", "config_sha256")


class ProbeError(AsruLabError, ValueError):
    """A probe file is damaged, incomplete, or does not fit the model it is used with."""


@dataclass
class MemorisationGate:
    """Logistic probe on the steering site: fires for people the model should forget.

    It reads the last `tokens` prompt tokens (`weight` is `[tokens, hidden]`, oldest first):
    the question's end and the chat template's assistant opening, where the model has
    gathered who the question is about.
    """

    weight: torch.Tensor  # float32 [tokens, hidden]
    bias: float
    threshold: float  # on the probability
    method: str = "logistic regression, forget (1) vs retain (0), last prompt tokens"

    def __post_init__(self) -> None:
        check_fields(self, ProbeError, threshold="[0, 1]")
        if self.weight.ndim == 1:
            self.weight = self.weight.unsqueeze(0)
        self.weight = self.weight.detach().to(torch.float32).cpu().contiguous()

    @property
    def tokens(self) -> int:
        return self.weight.shape[0]

    def probability(self, tail: torch.Tensor) -> torch.Tensor:
        """`[B]` probability that each row belongs to the forget set, from the `[B, tokens,
        hidden]` activations of its last `tokens` prompt tokens."""
        w = self.weight.to(device=tail.device, dtype=torch.float32)
        return torch.sigmoid((tail.float() * w).sum((-2, -1)) + self.bias)

    def fires(self, tail: torch.Tensor) -> torch.Tensor:
        """`[B]` bool: the gate's decision for each row of `[B, tokens, hidden]` activations."""
        return self.probability(tail) >= self.threshold

    def read(self, hidden: torch.Tensor) -> torch.Tensor:
        """The gate's decision from a prompt pass's `[B, T, hidden]` hidden states (False for
        prompts shorter than the gate's token window): `steering.read_gate`."""
        return steering.read_gate(self, hidden)


@dataclass
class SteeringProbe:
    """A direction at one site of one model, with how and where to apply it."""

    direction: torch.Tensor  # float32 [hidden]
    layer: int
    model: dict  # LoadedModel.fingerprint() of the model it was extracted from
    site: str = "output"
    operation: str = "add"
    positions: str = "all"
    alpha: float = 1.0
    gate: MemorisationGate | None = None
    gated: bool = True  # apply the gate by default when there is one
    normalisation: str = "none"
    extraction: dict = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    module: str = ""  # dotted path of the layer module, from the adapter
    deepstack: str = "none"  # see `hooks.deepstack_relation`
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    version: str = ""
    evidence: dict | None = None  # what `locate` measured (saved as sweep.json)
    layer_directions: torch.Tensor | None = None  # float32 [num_layers, hidden], every layer's v

    def __post_init__(self) -> None:
        check_fields(self, ProbeError, layer=">= 0")
        if not self.version:
            from asru_lab.version import __version__

            self.version = __version__
        check_site(self.site)
        if self.operation not in OPERATIONS:
            raise ProbeError(f"unknown operation {self.operation!r}; expected one of {OPERATIONS}")
        check_steer_positions(self.positions)
        # an own copy: a view into layer_directions (as at_layer makes) cannot be saved
        self.direction = self.direction.detach().to(torch.float32).cpu().clone()
        if self.direction.ndim != 1:
            raise ProbeError(f"direction must be 1-D [hidden], got {tuple(self.direction.shape)}")
        if self.layer_directions is not None:
            self.layer_directions = self.layer_directions.detach().to(torch.float32).cpu()

    # --- metadata ---------------------------------------------------------------------------
    def metadata(self) -> dict:
        """The `probe.json` content."""
        gate = None
        if self.gate is not None:
            gate = {
                "enabled": self.gated,
                "method": self.gate.method,
                "bias": self.gate.bias,
                "threshold": self.gate.threshold,
            }
        tensors = {"direction": list(self.direction.shape)}
        if self.gate is not None:
            tensors["gate.weight"] = list(self.gate.weight.shape)
        if self.layer_directions is not None:
            tensors["layer_directions"] = list(self.layer_directions.shape)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "operation": self.operation,
            "site": {
                "module": self.module,
                "io": self.site,
                "deepstack": self.deepstack,
            },
            "layer": self.layer,
            "layer_index_convention": LAYER_CONVENTION,
            "positions": self.positions,
            "alpha": self.alpha,
            "normalisation": self.normalisation,
            "model": self.model,
            "extraction": self.extraction,
            "dataset_fingerprint": self.dataset_fingerprint,
            "created": self.created,
            "asru_lab_version": self.version,
            "gate": gate,
            "tensors": tensors,
        }

    # --- persistence --------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the probe directory atomically; returns its path. An earlier probe (or other
        asru_lab output) there is replaced; a folder holding other files needs `overwrite`,
        and even then only asru_lab's files are written (`artifacts.atomic_dir`)."""
        tensors = {"direction": self.direction}
        if self.gate is not None:
            tensors["gate.weight"] = self.gate.weight.detach().to(torch.float32).cpu().contiguous()
        if self.layer_directions is not None:
            tensors["layer_directions"] = self.layer_directions.contiguous()
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / "probe.safetensors"), metadata={"format": FORMAT})
            write_json_atomic(tmp / "probe.json", self.metadata())
            if self.evidence is not None:
                write_json_atomic(tmp / "sweep.json", self.evidence)
        return Path(out_dir)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringProbe:
        """Read a probe directory; a clear `ProbeError` names what is missing or wrong."""
        path = Path(path)
        check_complete(path)
        meta_path, tensor_path = path / "probe.json", path / "probe.safetensors"
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise ProbeError(f"{path} is not a probe directory: {p.name} is missing")
        meta = _read_probe_json(meta_path)
        tensors = _read_probe_tensors(tensor_path, meta)
        evidence = _read_evidence(path / "sweep.json")
        try:
            gate = None
            if meta["gate"] is not None:
                g = meta["gate"]
                weight = tensors["gate.weight"]
                gate = MemorisationGate(weight, g["bias"], g["threshold"], g["method"])
            return cls(
                direction=tensors["direction"],
                layer=meta["layer"],
                model=meta["model"],
                site=meta["site"]["io"],
                operation=meta["operation"],
                positions=meta["positions"],
                alpha=meta["alpha"],
                gate=gate,
                gated=bool(meta["gate"] and meta["gate"]["enabled"]),
                normalisation=meta["normalisation"],
                extraction=meta["extraction"],
                dataset_fingerprint=meta["dataset_fingerprint"],
                module=meta["site"].get("module") or "",
                deepstack=meta["site"].get("deepstack", "none"),
                created=meta["created"],
                version=meta["asru_lab_version"],
                evidence=evidence,
                layer_directions=tensors.get("layer_directions"),
            )
        except ValueError as exc:
            raise ProbeError(f"{meta_path}: {exc}") from None

    # --- compatibility ------------------------------------------------------------------------
    def validate(self, lm: LoadedModel) -> None:
        """Raise `ProbeError` naming the field if this probe does not fit `lm`."""
        theirs = lm.fingerprint()
        for key in ("family", "hidden_size", "num_layers"):
            if self.model.get(key) != theirs[key]:
                raise ProbeError(
                    f"probe does not fit model {lm.name!r}: model.{key} is "
                    f"{self.model.get(key)!r} in the probe but {theirs[key]!r} in the model "
                    f"(the probe was extracted from {self.model.get('name')!r})"
                )
        if not 0 <= self.layer < theirs["num_layers"]:
            raise ProbeError(
                f"probe field 'layer' is {self.layer}, but {lm.name!r} has layers "
                f"0..{theirs['num_layers'] - 1}"
            )
        if self.model.get("config_sha256") != theirs["config_sha256"]:
            warnings.warn(
                f"probe model.config_sha256 {self.model.get('config_sha256')} differs from "
                f"{lm.name!r} ({theirs['config_sha256']}): same sizes, other configuration",
                stacklevel=2,
            )

    def at_layer(self, lm: LoadedModel, layer: int) -> SteeringProbe:
        """This probe moved to another layer (that layer's direction, ungated unless it is
        the probe's own layer). Needs `layer_directions` (probes from `locate` have them)."""
        if self.layer_directions is None:
            raise ProbeError("this probe stores one layer's direction only (no layer_directions)")
        if not 0 <= layer < len(self.layer_directions):
            raise ProbeError(
                f"layer {layer} does not exist: the probe has directions for layers "
                f"0..{len(self.layer_directions) - 1}"
            )
        same = layer == self.layer
        return dataclasses.replace(
            self,
            direction=self.layer_directions[layer],
            layer=layer,
            gate=self.gate if same else None,
            gated=self.gated and same,
            module=lm.adapter.layer_path(layer),
        )

    # --- applying it (the mechanics live in asru_lab.steering) -------------------------------
    def _strength(self, alpha: float | None = None) -> float:
        """The steering strength to use: `alpha` (checked finite), or the probe's own."""
        if alpha is None:
            return self.alpha
        check_value(alpha, float, "alpha", ProbeError)
        return float(alpha)

    def _settings(
        self, alpha: float | None, positions: str | None, gated: bool | None
    ) -> tuple[float, str, bool]:
        """(alpha, positions, gated) to steer with: the given ones checked, else the probe's
        own; gated only when the probe has a gate (asking for the gate of a probe without one
        is a ProbeError)."""
        if gated and self.gate is None:
            raise ProbeError("gated=True but this probe has no memorisation gate")
        alpha = self._strength(alpha)
        positions = check_steer_positions(positions or self.positions)
        use_gate = (self.gated if gated is None else gated) and self.gate is not None
        return alpha, positions, use_gate

    def steer(
        self,
        hidden: torch.Tensor,
        *,
        alpha: float,
        positions: str,
        rows: torch.Tensor | None,
        prompt_pass: bool,
    ) -> torch.Tensor:
        """`hidden` `[B, T, D]` with the probe applied at `positions` of `rows` (bool `[B]`)."""
        return steering.steer(
            self, hidden, alpha=alpha, positions=positions, rows=rows, prompt_pass=prompt_pass
        )

    @contextmanager
    def apply(
        self,
        lm: LoadedModel,
        *,
        alpha: float | None = None,
        positions: str | None = None,
        gated: bool | None = None,
    ) -> Iterator[SteeringProbe]:
        """Steer `lm` with plain forward hooks while the block runs; removed on exit.

        Works inside `generate`, `evaluate` and any training loop that calls the HF model.
        A forward pass over more than one token is a *prompt pass*: the gate reads its last
        `gate.tokens` tokens there, and its decision holds for the single-token decoding steps
        that follow. (In a training pass over prompt + completion, "last" and the gate refer to
        the end of that whole sequence.)
        """
        self.validate(lm)
        alpha, positions, use_gate = self._settings(alpha, positions, gated)
        with steering.steered(self, lm, alpha=alpha, positions=positions, gated=use_gate):
            yield self

    def edit_trace(
        self,
        lm: LoadedModel,
        wrapped,
        *,
        alpha: float | None = None,
        positions: str | None = None,
        gated: bool | None = None,
    ) -> None:
        """Apply the probe inside an open nnsight trace of `wrapped` (`capture.nnsight_model(lm)`).

        The same arithmetic as `apply`, for interactive traces: call it first in the
        `with wrapped.trace(...)` block, then read any module after the probe's layer.
        """
        self.validate(lm)
        alpha, positions, use_gate = self._settings(alpha, positions, gated)
        steering.edit_trace(self, lm, wrapped, alpha=alpha, positions=positions, gated=use_gate)

    def project(
        self,
        lm: LoadedModel,
        bench,
        items,
        *,
        batch_size: int = 32,
        progress: bool = False,
    ) -> torch.Tensor:
        """float64 `[n]`: each item's activation at the probe's site, last prompt token,
        projected on the unit direction (h . v / |v|), unsteered."""
        self.validate(lm)
        return steering.project(self, lm, bench, items, batch_size=batch_size, progress=progress)

    # --- export -------------------------------------------------------------------------------
    def export_gguf(self, path: str | os.PathLike, *, alpha: float | None = None) -> Path:
        """Write `alpha * v` as a llama.cpp control vector (`direction.{n}` tensor, `n` >= 1).

        llama.cpp adds `direction.{n}` to the output of 0-based layer n at every position,
        ungated: the gate and the `ablate` operation cannot be expressed there. Needs `gguf`.
        """
        try:
            import gguf
        except ImportError:
            raise ProbeError(
                "exporting to GGUF needs the `gguf` package: pip install gguf"
            ) from None
        if self.operation != "add":
            raise ProbeError("only 'add' probes can be exported as a llama.cpp control vector")
        n = self.layer if self.site == "output" else self.layer - 1
        if n < 1:
            raise ProbeError(
                f"llama.cpp control vectors start after layer 0; this probe steers {self.site} of "
                f"layer {self.layer}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", self.model.get("family", ""))
        writer.add_uint32("controlvector.layer_count", 1)
        scale = self._strength(alpha)
        writer.add_tensor(f"direction.{n}", (scale * self.direction).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        gate = "gated" if self.gate is not None and self.gated else "ungated"
        return (
            f"SteeringProbe(layer={self.layer}, site={self.site!r}, op={self.operation!r}, "
            f"alpha={self.alpha:g}, positions={self.positions!r}, {gate}, "
            f"|v|={float(self.direction.norm()):.3g}, model={self.model.get('name')!r})"
        )


def _read_probe_json(meta_path: Path) -> dict:
    """probe.json, checked: a JSON object of this format and version with every field."""
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{meta_path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ProbeError(f"{meta_path} must hold a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ProbeError(f"{meta_path} is missing field(s): {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise ProbeError(f"{meta_path}: field 'format' is {meta['format']!r}, not {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ProbeError(
            f"{meta_path}: unknown format_version {meta['format_version']!r} "
            f"(this asru_lab reads version {FORMAT_VERSION})"
        )
    missing = [k for k in MODEL_FIELDS if k not in meta["model"]]
    if missing:
        raise ProbeError(f"{meta_path}: field 'model' lacks {', '.join(missing)}")
    return meta


def _read_probe_tensors(tensor_path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """probe.safetensors, checked against probe.json: every listed tensor present, of its
    shape and finite; the direction (and the per-layer directions) sized for the model."""
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ProbeError(f"{tensor_path} is damaged or truncated ({exc})") from None
    for name, shape in meta["tensors"].items():
        if name not in tensors:
            raise ProbeError(f"{tensor_path} lacks tensor {name!r} listed in probe.json")
        if list(tensors[name].shape) != shape:
            raise ProbeError(
                f"{tensor_path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"probe.json says {shape}"
            )
        if not torch.isfinite(tensors[name]).all():
            raise ProbeError(f"{tensor_path}: tensor {name!r} holds NaN or infinite values")
    hidden = meta["model"]["hidden_size"]
    if list(tensors["direction"].shape) != [hidden]:
        raise ProbeError(
            f"{tensor_path}: direction has shape {list(tensors['direction'].shape)} but the "
            f"probe's model.hidden_size is {hidden}"
        )
    n_layers = meta["model"]["num_layers"]
    if "layer_directions" in tensors and list(tensors["layer_directions"].shape) != [
        n_layers,
        hidden,
    ]:
        raise ProbeError(
            f"{tensor_path}: layer_directions has shape "
            f"{list(tensors['layer_directions'].shape)}, expected [{n_layers}, {hidden}]"
        )
    if meta["gate"] is not None and "gate.weight" not in tensors:
        raise ProbeError(f"{tensor_path} lacks tensor 'gate.weight' for the gate")
    return tensors


def _read_evidence(sweep_path: Path) -> dict | None:
    """locate's sweep.json beside a probe, if present and readable (a warning if damaged)."""
    if not sweep_path.is_file():
        return None
    try:  # the sweep is evidence to read, not needed to steer: a damaged one is skipped
        return json.loads(sweep_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        warnings.warn(
            f"{sweep_path} is damaged ({exc}); the probe loads without "
            "locate's sweep evidence (rerun `asru-lab locate` to get it back)",
            stacklevel=3,
        )
        return None


def check_steer_positions(positions: str) -> str:
    if positions not in STEER_POSITIONS:
        raise ProbeError(f"unknown positions {positions!r}; expected one of {STEER_POSITIONS}")
    return positions


def load_probe(path: str | os.PathLike) -> SteeringProbe:
    return SteeringProbe.load(path)
