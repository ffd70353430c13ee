"""Evaluation protocols, one module each, registered by name: `asru_lab` (asru_lab's own, the
default), `mllmu` (MLLMU-Bench's own evaluation) and `asru_paper` (the ASRU authors' variant).
Each module's docstring is the protocol's definition."""

from __future__ import annotations

from asru_lab.evaluation.protocols.asru_lab import AsruLabProtocol
from asru_lab.evaluation.protocols.asru_paper import AsruPaperProtocol
from asru_lab.evaluation.protocols.base import Prompt, Protocol
from asru_lab.evaluation.protocols.mllmu import MllmuProtocol
from asru_lab.validation import ConfigError

PROTOCOLS: dict[str, type[Protocol]] = {
    p.name: p for p in (AsruLabProtocol, MllmuProtocol, AsruPaperProtocol)
}
DEFAULT_PROTOCOL = "asru_lab"

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Prompt", "Protocol", "get_protocol"]


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class registered as `name`; ConfigError naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ConfigError(
            f"unknown evaluation protocol {name!r}; expected one of {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]
