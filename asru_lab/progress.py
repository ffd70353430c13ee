"""asru_lab's progress bars: `tqdm.auto`'s, except in a notebook, where a finished bar leaves its
last line behind as text.

A notebook bar is a widget; a notebook saved and opened again (or read on the web) has no
widget state, and shows the text the bar had when it was *displayed* — "0%" for ever. Here
every notebook bar is displayed with a display id and, when it closes, that output is replaced
by its final line ("distill: 100%|██████████| 500/500 [00:51<00:00, 9.7it/s]"); a bar closed
early keeps its line too, and a bar with `leave=False` leaves nothing. Outside a notebook this
is `tqdm.auto.tqdm` itself.
"""

from __future__ import annotations

from tqdm.auto import tqdm as _auto

try:
    from tqdm.notebook import tqdm_notebook as _notebook
except ImportError:  # pragma: no cover - tqdm always ships it; ipywidgets may be missing
    _notebook = None


class FinalLine:
    """A bar's last line as a plain-text output (what replaces a closed notebook bar)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": self.text}


if _notebook is not None and issubclass(_auto, _notebook):
    from IPython.display import display

    class tqdm(_auto):  # noqa: N801 - a drop-in for tqdm's own name
        """`tqdm.notebook.tqdm` whose output becomes its final line of text when it closes."""

        def __init__(self, *args, **kwargs) -> None:
            shown = kwargs.pop("display", True)
            super().__init__(*args, display=False, **kwargs)
            self._handle = None
            if shown and not self.disable and self.delay <= 0:
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self) -> None:
            was_open = not self.disable
            super().close()
            if not was_open or self._handle is None:
                return
            unfinished = bool(self.total) and self.n < self.total
            text = self.format_meter(**self.format_dict) if self.leave or unfinished else ""
            self._handle.update(FinalLine(text))
            self._handle = None

else:
    tqdm = _auto

__all__ = ["FinalLine", "tqdm"]
