"""Stage 1.2's SGD checkpoints: `step-<n>/` folders holding the trained parameters and the
optimiser state (`trainable.safetensors`) and the run's state (`state.json`); written atomically,
read back checked, and resumed from the newest readable one (damaged ones set aside)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from asru_lab.artifacts import (
    atomic_dir,
    claim_output,
    is_marked,
    set_aside,
    write_json_atomic,
)
from asru_lab.stages.redirect_config import RedirectError
from asru_lab.validation import check_value, nonfinite_entry, nonfinite_tensor

CHECKPOINT_PREFIX = "step-"


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoint folders (`step-<digits>`) in `directory`, oldest first."""
    found = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(
    directory: Path,
    step: int,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int,
) -> None:
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    names = list(params)
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    if not is_marked(directory):
        claim_output(directory, whole=True)
    with atomic_dir(directory / f"{CHECKPOINT_PREFIX}{step:07d}") as tmp:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        write_json_atomic(
            tmp / "state.json",
            {**state, "step": step, "params": names, "param_groups": opt["param_groups"]},
        )
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read back; the message says which part and why."""


def read_checkpoint(path: Path, params: dict[str, nn.Parameter]) -> tuple[dict, dict]:
    """(state.json, tensors) of checkpoint `path`, every tensor `params` needs present and of
    the right shape; else `DamagedCheckpoint`. Reads only: nothing is loaded into the run."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DamagedCheckpoint("state.json is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpoint(f"state.json does not parse ({exc})") from exc
    fields = ("step", "params", "param_groups", "signature", "losses")
    if not isinstance(state, dict) or not all(k in state for k in fields):
        raise DamagedCheckpoint(f"state.json lacks some of {', '.join(fields)}")
    check_value(state["step"], int, "state.json: step", DamagedCheckpoint, ">= 1")
    check_value(
        state["losses"], dict[str, tuple[float, ...]], "state.json: losses", DamagedCheckpoint
    )
    found = nonfinite_entry(state)
    if found:
        raise DamagedCheckpoint(f"state.json holds {found}")
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
    except FileNotFoundError as exc:
        raise DamagedCheckpoint("trainable.safetensors is missing") from exc
    except (OSError, SafetensorError) as exc:
        raise DamagedCheckpoint(f"trainable.safetensors does not load ({exc})") from exc
    for name, param in params.items():
        tensor = tensors.get(f"param.{name}")
        if tensor is None or tensor.shape != param.shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise DamagedCheckpoint(f"tensor param.{name} is {found}")
    bad = nonfinite_tensor(tensors.items())
    if bad:
        raise DamagedCheckpoint(f"tensor {bad} holds NaN or infinite values")
    return state, tensors


def load_checkpoint(
    path: Path,
    state: dict,
    tensors: dict[str, torch.Tensor],
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Copy a read checkpoint (`read_checkpoint`) into `params` and `optimizer`."""
    names = state["params"]
    if names != list(params):
        raise RedirectError(
            f"checkpoint {path} trains other parameters than this run "
            f"({len(names)} vs {len(params)}); it comes from a different configuration"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"])
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, slot = key[len("optimizer.") :].rsplit(".", 1)
            slots.setdefault(names.index(name), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})


def resume_from(
    found: list[Path],
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    signature: dict,
    *,
    stacklevel: int = 2,
) -> dict:
    """Load the newest readable checkpoint of `found` (oldest first) and return its state.

    Newer damaged ones are moved aside to `damaged-<name>` (training writes them again) and
    named in a warning (`stacklevel` as for `warnings.warn`); if none is readable,
    RedirectError."""
    damaged: list[str] = []
    for path in reversed(found):
        try:
            state, tensors = read_checkpoint(path, params)
        except DamagedCheckpoint as exc:
            damaged.append(f"{path.name}: {exc}")
            continue
        if state["signature"] != signature:
            changed = [k for k in signature if state["signature"].get(k) != signature[k]]
            raise RedirectError(
                f"checkpoint {path} was written by a different run ({', '.join(changed)} "
                "differ); resume with the same model, probe, data and settings, or delete it"
            )
        load_checkpoint(path, state, tensors, params, optimizer)
        if damaged:
            set_aside(found[found.index(path) + 1 :])
            warnings.warn(
                f"cannot read checkpoint {'; '.join(damaged)}. Resuming from {path} (step "
                f"{state['step']}) instead; the damaged checkpoint now lies in "
                f"{path.parent}/damaged-{CHECKPOINT_PREFIX}*",
                stacklevel=stacklevel,
            )
        return state
    raise RedirectError(
        f"no checkpoint in {found[0].parent} can be read: {'; '.join(damaged)}; delete the "
        "directory (or choose another) to start from the beginning"
    )
