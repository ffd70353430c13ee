"""Applying a `SteeringProbe` to a model: steering the activations at its site, and reading
them along its direction.

The probe (`asru_lab.probe`) is the artifact: what to apply, checked and saved. This module is
how it is applied. Its functions take settings the probe has already checked against the model
(`SteeringProbe.apply`, `.edit_trace` and `.project` do that, then call them):

- `steer`: the arithmetic on `[B, T, D]` hidden states (`add` or `ablate`, at some positions,
  on the rows the gate picked);
- `steered`: that edit as a forward hook on the probe's layer while a block runs, the gate read
  in each prompt pass (`read_gate`) and its decision kept for the decoding steps that follow;
- `edit_trace`: the same edit inside an open nnsight trace;
- `project`: unsteered activations at the probe's site projected on its direction.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from asru_lab.capture import capture, module_envoy
from asru_lab.hooks import editing, envoy_site, set_envoy_site
from asru_lab.models.loading import LoadedModel

if TYPE_CHECKING:  # the probe module imports this one; at run time only its objects come here
    from asru_lab.probe import MemorisationGate, SteeringProbe


def read_gate(gate: MemorisationGate, hidden: torch.Tensor) -> torch.Tensor:
    """`[B]` bool: the gate's decision from a prompt pass's `[B, T, hidden]` hidden states, read
    at its last `gate.tokens` tokens (False for prompts shorter than that window)."""
    if hidden.shape[1] < gate.tokens:
        return torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    return gate.fires(hidden[:, -gate.tokens :, :])


def steer(
    probe: SteeringProbe,
    hidden: torch.Tensor,
    *,
    alpha: float,
    positions: str,
    rows: torch.Tensor | None,
    prompt_pass: bool,
) -> torch.Tensor:
    """`hidden` `[B, T, D]` with the probe applied at `positions` of `rows` (bool `[B]`; None:
    every row); a new tensor unless nothing is steered in this pass."""
    if prompt_pass:
        if positions == "generated":
            return hidden
        tokens = slice(-1, None) if positions == "last" else slice(None)
    else:
        if positions in ("prompt", "last"):
            return hidden
        tokens = slice(None)
    v = probe.direction.to(device=hidden.device, dtype=hidden.dtype)
    part = hidden[:, tokens, :]
    if probe.operation == "add":
        delta = alpha * v.expand_as(part)
    else:
        u = v / v.norm().clamp_min(1e-12)
        delta = -alpha * (part @ u).unsqueeze(-1) * u
    if rows is not None:
        delta = delta * rows.to(hidden.dtype).view(-1, 1, 1)
    out = hidden.clone()
    out[:, tokens, :] = part + delta
    return out


# model -> how many probes steer it now (weak keys: a model that is dropped leaves no entry)
_STEERING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_steered(model: torch.nn.Module) -> bool:
    """True while a steering probe is applied to `model` (`steered`, `SteeringProbe.apply`)."""
    return _STEERING.get(model, 0) > 0


@contextmanager
def steered(
    probe: SteeringProbe, lm: LoadedModel, *, alpha: float, positions: str, gated: bool
) -> Iterator[SteeringProbe]:
    """`lm` steered by `probe` (a hook on its layer) while the block runs; removed on exit.

    A forward pass over more than one token is a prompt pass: with `gated`, the gate reads it
    (`read_gate`) and its decision holds for the single-token decoding steps that follow.
    """
    state: dict = {"rows": None}

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        prompt_pass = hidden.shape[1] > 1
        rows = None
        if gated:
            if prompt_pass or state["rows"] is None or len(state["rows"]) != len(hidden):
                state["rows"] = read_gate(probe.gate, hidden)
            rows = state["rows"]
        return steer(
            probe, hidden, alpha=alpha, positions=positions, rows=rows, prompt_pass=prompt_pass
        )

    model = lm.model
    _STEERING[model] = _STEERING.get(model, 0) + 1
    try:
        with editing(lm.adapter.layer(model, probe.layer), probe.site, edit):
            yield probe
    finally:
        _STEERING[model] -= 1


def edit_trace(
    probe: SteeringProbe, lm: LoadedModel, wrapped, *, alpha: float, positions: str, gated: bool
) -> None:
    """Steer the probe's site inside an open nnsight trace of `wrapped` (a prompt pass)."""
    envoy = module_envoy(wrapped, lm.adapter.layer_path(probe.layer))
    hidden = envoy_site(envoy, probe.site)
    rows = read_gate(probe.gate, hidden) if gated else None
    steered_hidden = steer(
        probe, hidden, alpha=alpha, positions=positions, rows=rows, prompt_pass=True
    )
    set_envoy_site(envoy, probe.site, steered_hidden)


def project(
    probe: SteeringProbe,
    lm: LoadedModel,
    bench,
    items,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """float64 `[n]`: each item's activation at the probe's site, last prompt token,
    projected on the unit direction (h . v / |v|), unsteered."""
    unit = probe.direction.double() / probe.direction.norm().clamp_min(1e-12).double()
    cap = capture(
        lm,
        bench,
        items,
        layers=[probe.layer],
        site=probe.site,
        position="last",
        directions={probe.layer: unit},
        batch_size=batch_size,
        progress=progress,
        desc="project on v",
    )
    return cap.projections[probe.layer][:, 0]
