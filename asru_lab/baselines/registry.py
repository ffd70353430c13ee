"""The unlearning-method registry: every method is registered by name with its default config.

A method is `run(lm, bench, config, probe) -> Unlearned`; `probe` is the stage 1.1 steering
probe for the methods that need one (`needs_probe`), None otherwise. Registering a new method
is one small module that calls `register(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from asru_lab.errors import AsruLabError
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe


class UnlearnError(AsruLabError, ValueError):
    """A method name, config or input an unlearning method cannot use."""


@dataclass
class Unlearned:
    """What a method returns: the model after unlearning, its training record, for
    inference-time methods the probe to apply while the model answers, and any tensors the
    method wants kept with the model (MMUnlearner's weight masks), saved beside it."""

    method: str
    model: LoadedModel
    record: dict = field(default_factory=dict)
    probe: SteeringProbe | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def applied(self) -> AbstractContextManager:
        """A context in which `self.model` answers as the method intends (the probe's hooks
        for `steer_only`; nothing to do for methods that changed the weights)."""
        return self.probe.apply(self.model) if self.probe is not None else nullcontext()


@dataclass(frozen=True)
class Knob:
    """A method's strength knob, what `reproduce`'s tuning sweeps: a field of its config
    (dotted for a nested config, e.g. "redirect.lam") and the values tried, weakest first."""

    field: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Method:
    """A registered unlearning method."""

    name: str
    summary: str  # one line for `asru-lab unlearn --help` and the README
    default_config: Callable[[], object]  # a fresh dataclass config with the method's defaults
    run: Callable[[LoadedModel, object, object, SteeringProbe | None], Unlearned]
    needs_probe: bool = False  # runs on a stage 1.1 probe (located first when none is given)
    paper_config: Callable[[], object] | None = None  # the public code's settings, if they differ
    knob: Knob | None = None  # its strength knob, swept by reproduce's tuning


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise UnlearnError(f"an unlearning method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method `name`; a clear error listing the registered ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnlearnError(
            f"unknown unlearning method {name!r}; registered: {', '.join(METHODS)}"
        ) from None
