"""Quiet notebooks: inside the library's notebook-facing calls, third-party warnings and
transformers' progress bars are left out in a Jupyter kernel only; the library's own
warnings always reach the user, and everything is restored afterwards."""

from __future__ import annotations

import warnings

import pytest
from transformers.utils import logging as hf_logging

from asru_lab import quiet
from asru_lab.quiet import in_notebook, quiet_in_notebooks


def _third_party_warning() -> None:
    # attributed to a transformers module, as transformers' own deprecation warnings are
    exec(
        compile("import warnings\nwarnings.warn('deprecated', UserWarning)", "x.py", "exec"),
        {"__name__": "transformers.modeling_utils"},
    )


def _shown(block) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        block()
    return [str(w.message) for w in caught]


def test_a_terminal_is_not_a_notebook():
    assert not in_notebook()


def test_outside_a_notebook_nothing_is_silenced():
    def block():
        with quiet_in_notebooks():
            warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)
            _third_party_warning()
            assert hf_logging.is_progress_bar_enabled()

    assert _shown(block) == ["is_gradient_checkpointing is deprecated", "deprecated"]


def test_in_a_notebook_third_party_noise_is_silenced_and_restored(monkeypatch):
    monkeypatch.setattr(quiet, "in_notebook", lambda: True)
    monkeypatch.delenv(quiet.VERBOSE_VARIABLE, raising=False)
    verbosity = hf_logging.get_verbosity()

    @quiet_in_notebooks()
    def notebook_call():
        warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)
        _third_party_warning()
        warnings.warn("resume=True but no checkpoint: starting from the beginning", stacklevel=1)
        assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        return 7

    shown = _shown(lambda: notebook_call() == 7 or pytest.fail("the call's value was lost"))
    assert shown == ["resume=True but no checkpoint: starting from the beginning"]
    assert hf_logging.is_progress_bar_enabled()
    assert hf_logging.get_verbosity() == verbosity
    shown = _shown(lambda: warnings.warn("later", FutureWarning, stacklevel=1))
    assert shown == ["later"]  # filters restored after the call


def test_verbose_variable_keeps_the_noise_in_a_notebook(monkeypatch):
    monkeypatch.setattr(quiet, "in_notebook", lambda: True)
    monkeypatch.setenv(quiet.VERBOSE_VARIABLE, "1")

    def block():
        with quiet_in_notebooks():
            warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)

    assert _shown(block) == ["is_gradient_checkpointing is deprecated"]


def test_an_error_inside_still_restores_the_progress_bars():
    with pytest.raises(RuntimeError), quiet_in_notebooks(active=True):
        raise RuntimeError("boom")
    assert hf_logging.is_progress_bar_enabled()
