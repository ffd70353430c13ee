"""Activation sites: reading and editing a decoder layer's output or input with PyTorch hooks
(or, inside an nnsight trace, through the layer's envoy).

A site is (module, "output" | "input"). "output" is the tensor the module returns (its first
element when it returns a tuple); "input" is its hidden-states argument (first positional, or
the `hidden_states` keyword). The residual stream *after* decoder layer L is layer L's output,
except where DeepStack (Qwen3-VL) adds visual features after the layer, outside its module:
there the stream with those features is first seen at layer L + 1's input (`residual_site`).

Every module that reads or edits activations (capture, steering, redirect, causal tracing)
uses these few functions; module paths come from the architecture adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from asru_lab.models.loading import LoadedModel

SITES = ("output", "input")


class EarlyExit(Exception):
    """Raised by a reading hook to end a forward pass once the needed tensor is read."""


def first_tensor(value) -> torch.Tensor:
    """A module output's hidden states: the tensor itself, or element 0 of a tuple."""
    return value if torch.is_tensor(value) else value[0]


@contextmanager
def editing(
    module: nn.Module, site: str, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """While the block runs, `module`'s `site` tensor is replaced by `edit(tensor)` on every
    forward pass (other outputs or arguments pass through); the hook is removed on exit."""
    if site == "output":

        def hook(_module, _args, output):
            if torch.is_tensor(output):
                return edit(output)
            return (edit(output[0]), *output[1:])

        handle = module.register_forward_hook(hook)
    else:

        def pre_hook(_module, args, kwargs):
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def reading(module: nn.Module, site: str, *, stop: bool = False) -> Iterator[dict]:
    """Record `module`'s `site` tensor in the yielded dict under "value" (the last forward
    pass's); with `stop`, raise `EarlyExit` there to end the pass (see `read_site`)."""
    box: dict = {}

    if site == "output":

        def hook(_module, _args, output):
            box["value"] = first_tensor(output)
            if stop:
                raise EarlyExit

        handle = module.register_forward_hook(hook)
    else:

        def pre_hook(_module, args, kwargs):
            box["value"] = args[0] if args else kwargs["hidden_states"]
            if stop:
                raise EarlyExit

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def read_site(
    model: nn.Module, inputs: dict, module: nn.Module, site: str, *, stop: bool = True
) -> torch.Tensor | None:
    """`module`'s `site` tensor for `model(**inputs)`; None if the pass never reached it. With
    `stop` the pass ends right there (nothing after the site runs, so it costs less and
    gradients reach only what is below it); without, the whole model runs."""
    with reading(module, site, stop=stop) as box:
        try:
            model(**inputs)
        except EarlyExit:
            pass
    return box.get("value")


def envoy_site(envoy, site: str):
    """Inside an open nnsight trace, the `site` of the module behind `envoy` (nnsight's
    `.output`, or `.input`: its first argument)."""
    return envoy.input if site == "input" else envoy.output


def set_envoy_site(envoy, site: str, value) -> None:
    """Inside an open nnsight trace, replace the `site` of the module behind `envoy`."""
    if site == "input":
        envoy.input = value
    else:
        envoy.output = value


def residual_site(lm: LoadedModel, layer: int) -> tuple[int, str]:
    """(layer, site) where the residual stream after decoder layer `layer` is read: the next
    layer's "input" when DeepStack adds visual features after `layer`, else its "output"."""
    if layer in lm.adapter.deepstack_layers(lm.model) and layer + 1 < lm.num_layers:
        return layer + 1, "input"
    return layer, "output"


def deepstack_relation(lm: LoadedModel, layer: int, site: str) -> str:
    """How a site relates to DeepStack's visual-feature injection (recorded in probes)."""
    injected = lm.adapter.deepstack_layers(lm.model)
    if site == "output" and layer in injected:
        return "before injection (this layer's output lacks the DeepStack features added to it)"
    if site == "input" and layer - 1 in injected:
        return "after injection (includes the DeepStack features added after the previous layer)"
    return "none (no DeepStack injection at this site)"
