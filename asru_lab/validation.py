"""Finite, well-typed, in-range numbers: the checks configs, files read back and trained weights
go through.

A config dataclass calls `check_fields(self, ItsError, field=limit, ...)` first in its
`__post_init__`. Every field is checked against its annotation: a bool is neither an int nor a
float, a str is no number, an int is a float, every float is finite, None only where the
annotation allows it, and tuples and dicts element by element. Limits are written as in maths,
`"> 0"`, `">= 1"`, `"[0, 1]"`, `"(0, 1)"`, and apply to every element of a tuple or dict field.
Annotations without a number in them (str, nested configs, ...) are left to the config's own
checks.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from functools import cache

import torch

from asru_lab.errors import AsruLabError

_NUMBER = r"-?(?:inf|\d+(?:\.\d*)?(?:e-?\d+)?)"
_COMPARISON = re.compile(rf"(>=|>|<=|<)\s*({_NUMBER})")
_INTERVAL = re.compile(rf"([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])")
_SCALARS = (int, float, bool)
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class ConfigError(AsruLabError, ValueError):
    """A config field holds a value of the wrong type or outside its range."""


def check_fields(config, error: type[Exception] = ConfigError, /, **limits: str) -> None:
    """Raise `error` naming the first field of the dataclass `config` (and its value) that does
    not fit its annotation or its limit in `limits` (field name -> limit, e.g. `lr="> 0"`)."""
    hints = _hints(type(config))
    unknown = sorted(set(limits) - set(hints))
    if unknown:
        raise TypeError(f"limits given for unknown fields {unknown} of {type(config).__name__}")
    for name, hint in hints.items():
        label = f"{type(config).__name__}.{name}"
        check_value(getattr(config, name), hint, label, error, limits.get(name))


def check_choices(config, name: str, allowed: tuple, error: type[Exception] = ConfigError) -> None:
    """Raise `error` unless the dataclass field `name` of `config` is a non-empty tuple of
    values from `allowed`, each at most once."""
    chosen = getattr(config, name)
    if not chosen or any(c not in allowed for c in chosen) or len(set(chosen)) < len(chosen):
        raise error(
            f"{type(config).__name__}.{name} must be some of {allowed}, each once, got {chosen}"
        )


def check_value(
    value, hint, label: str, error: type[Exception] = ConfigError, limit: str | None = None
) -> None:
    """Raise `error` unless `value` fits the type `hint` (as a field in `check_fields`) and
    `limit`; `label` names the value in the message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        if not any(_has_number(a) for a in options):
            return
        fitting = [a for a in options if _is_a(value, a)]
        if not fitting:
            raise error(f"{label} must be {_describe(hint)}, got {value!r}")
        check_value(value, fitting[0], label, error, limit)
        return
    if origin in (tuple, dict) and _has_number(hint):
        if not isinstance(value, dict if origin is dict else list | tuple):
            raise error(f"{label} must be {_describe(hint)}, got {value!r}")
        if origin is dict:
            for key, element in value.items():
                check_value(element, args[1], f"{label}[{key!r}]", error, limit)
            return
        element_hints = [args[0]] * len(value) if args[-1] is Ellipsis else args
        for k, (element, element_hint) in enumerate(zip(value, element_hints, strict=False)):
            check_value(element, element_hint, f"{label}[{k}]", error, limit)
        return
    if hint not in _SCALARS:
        return
    if not _is_a(value, hint):
        raise error(f"{label} must be {_describe(hint)}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise error(f"{label} must be a finite number, got {value!r}")
    if limit is not None and hint is not bool:
        within, phrase = _limit(limit)
        if not within(value):
            raise error(f"{label} must be {phrase}, got {value!r}")


def nonfinite_tensor(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The first of the named tensors that holds NaN or infinite values, described as
    "name (k of n values)"; None when every one is finite."""
    for name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            bad = ~torch.isfinite(tensor.detach())
            if bad.any():
                return f"{name} ({int(bad.sum())} of {tensor.numel()} values)"
    return None


def nonfinite_trained(model: torch.nn.Module) -> str | None:
    """`nonfinite_tensor` over the parameters of `model` that train (`requires_grad`)."""
    return nonfinite_tensor((n, p) for n, p in model.named_parameters() if p.requires_grad)


def nonfinite_entry(data, where: str = "") -> str | None:
    """Where the JSON-like `data` holds a NaN or infinite number (e.g. "losses.forget[3] = nan");
    None when it holds none."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'the value'} = {data!r}"
    if isinstance(data, dict):
        inner = [(f"{where}.{key}" if where else str(key), value) for key, value in data.items()]
    elif isinstance(data, list | tuple):
        inner = [(f"{where}[{k}]", value) for k, value in enumerate(data)]
    else:
        return None
    return next((found for at, value in inner if (found := nonfinite_entry(value, at))), None)


@cache
def _hints(cls: type) -> dict[str, object]:
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in fields(cls)}


def _has_number(hint) -> bool:
    """Whether the annotation is, or holds, an int, float or bool."""
    return hint in _SCALARS or any(_has_number(a) for a in typing.get_args(hint))


def _is_a(value, hint) -> bool:
    """Whether `value` has the outer type of `hint` (a bool is no number; an int is a float)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    if origin is tuple:
        return isinstance(value, list | tuple)
    return not isinstance(origin, type) or isinstance(value, origin)


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a tuple of {_plural(args[0])}" if args[-1] is Ellipsis else "a tuple"
    if origin is dict:
        return f"a dict of {_plural(args[1])}"
    names = {int: "an integer", float: "a number", bool: "True or False", type(None): "None"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _plural(hint) -> str:
    return {int: "integers", float: "numbers", bool: "booleans"}.get(hint, _describe(hint))


@cache
def _limit(limit: str) -> tuple[Callable[[float], bool], str]:
    """(test, phrase for the message) of a limit such as "> 0" or "[0, 1)"."""
    if match := _COMPARISON.fullmatch(limit.strip()):
        compare, bound = _COMPARE[match.group(1)], float(match.group(2))
        return (lambda x: compare(x, bound)), f"{match.group(1)} {match.group(2)}"
    if match := _INTERVAL.fullmatch(limit.strip()):
        left, low, high, right = match.groups()
        above = operator.ge if left == "[" else operator.gt
        below = operator.le if right == "]" else operator.lt
        lo, hi = float(low), float(high)
        return (lambda x: above(x, lo) and below(x, hi)), f"in {left}{low}, {high}{right}"
    raise ValueError(f"unreadable limit {limit!r}; write it like '> 0', '>= 1' or '[0, 1)'")
