"""Quiet notebooks: the library's notebook-facing calls silence third-party noise a learner
cannot act on — deprecation warnings, warnings raised inside transformers / TRL / peft /
torch, and transformers' weight-loading and shard-writing progress bars — while they run, and
only in a Jupyter kernel. In a terminal (the CLI, scripts, tests) nothing changes, since there
the same messages may matter; `ASRU_LAB_VERBOSE=1` keeps them in notebooks too. The library's
own warnings and progress bars are always shown.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_VARIABLE = "ASRU_LAB_VERBOSE"
# Packages whose warnings say nothing a learner can act on (their own code, their own wording).
THIRD_PARTY = (
    "accelerate",
    "datasets",
    "huggingface_hub",
    "nnsight",
    "peft",
    "safetensors",
    "torch",
    "transformers",
    "trl",
)
THIRD_PARTY_MODULES = rf"({'|'.join(THIRD_PARTY)})(\.|$)"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient, nbmake), False in a terminal."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


@contextmanager
def quiet_in_notebooks(active: bool | None = None) -> Iterator[None]:
    """Run the block without third-party warnings, transformers' info logs and its progress
    bars (`active`: None decides by `in_notebook()` and `ASRU_LAB_VERBOSE`). Everything is
    restored on exit; usable as a decorator."""
    if active is None:
        active = in_notebook() and os.environ.get(VERBOSE_VARIABLE, "") in ("", "0")
    if not active:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars, hub_bars = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    verbosity = hf_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=THIRD_PARTY_MODULES)
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
            if hub_bars:  # enable_progress_bar switched the hub's on too
                hub_utils.disable_progress_bars()
