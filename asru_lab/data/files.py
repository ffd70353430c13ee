"""The one place a dataset's files are reached.

A dataset comes from someone else, so every path it names is resolved here: relative, no `..`,
and, symbolic links followed, a regular file inside the dataset directory. Every image, from a
file or from parquet bytes, is opened here: its declared size is read from the header and
checked against a pixel budget before anything is decoded.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from PIL import Image

from asru_lab.errors import AsruLabError

# 8192 x 8192: every camera photo (a 50 MP sensor gives 8160 x 6120) fits, four times what
# Qwen3-VL ever keeps (its processor resizes to at most 16.8 M pixels), under PIL's own bomb
# warning (89 M), and at most 1.5 GB to decode and encode (a 144 M-pixel PNG took 10 GB).
MAX_IMAGE_PIXELS = 8192 * 8192


class BenchmarkError(AsruLabError, ValueError):
    """A dataset is malformed or inconsistent; the message names the file, line or field."""


def dataset_file(root: Path, name: str, where: str, what: str = "image", hint: str = "") -> Path:
    """The real path of the regular file that `name` (relative, `/`-separated) names inside the
    dataset directory `root`; else a BenchmarkError starting with `where`, calling the file
    `what`, with `hint` (what else the person can do) after a missing file's message."""
    shown = f"{where}: {what} {name!r}"
    if "\0" in name:
        raise BenchmarkError(
            f"{shown} holds a NUL character; give a relative path like images/x.png"
        )
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        how = "is an absolute path" if pure.is_absolute() else "goes up with '..'"
        raise BenchmarkError(
            f"{shown} {how}: a dataset may only name files inside its directory ({root}); copy "
            "the file into it and give its path relative to it, like images/x.png"
        )
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root / pure))
    if not real.is_relative_to(real_root):
        raise BenchmarkError(
            f"{shown} leads outside the dataset directory {root} through a symbolic link (to "
            f"{real}); a dataset may only name files inside it: copy the file in (cp -rL copies "
            "a dataset with its links resolved)"
        )
    if not real.exists():
        raise BenchmarkError(f"{shown} not found (looked for {root / pure}){hint}")
    if not real.is_file():
        raise BenchmarkError(f"{shown} is not a regular file ({root / pure}); replace it by one")
    return real


@contextmanager
def _opened(source: Path | bytes, name: str) -> Iterator[Image.Image]:
    """`source` opened lazily once its header's size is within MAX_IMAGE_PIXELS; any failure
    there or in the `with` body (decoding, verifying) becomes a BenchmarkError naming `name`."""
    side = math.isqrt(MAX_IMAGE_PIXELS)
    budget = f"the budget of {MAX_IMAGE_PIXELS / 1e6:.0f} M pixels ({side} x {side}) per image"
    try:
        with warnings.catch_warnings():
            # the budget is below PIL's warning threshold: what PIL warns about is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BenchmarkError(
                        f"{name} declares {width} x {height} pixels "
                        f"({width * height / 1e6:.0f} M), over {budget}; resize it (Qwen3-VL "
                        "never sees more than 16.8 M pixels of an image)"
                    )
                yield img
    except BenchmarkError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's refusal, raised before the size is read
        raise BenchmarkError(f"{name} is too large to decode ({exc}), over {budget}") from exc
    except Exception as exc:  # PIL raises several unrelated types for bad or truncated files
        raise BenchmarkError(
            f"{name} is not a readable image ({exc.__class__.__name__}: {exc}); replace it with "
            "a PNG or JPEG file"
        ) from exc


def open_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """The image in `source` (a file or encoded bytes) decoded as RGB, once its header declares
    at most MAX_IMAGE_PIXELS; else a BenchmarkError naming `name` (default: the path)."""
    name = str(source) if name is None else name
    if isinstance(source, Path) and not source.is_file():
        raise BenchmarkError(f"image not found: {source}")
    with _opened(source, name) as img:
        return img.convert("RGB")


def check_image(source: Path | bytes, name: str) -> None:
    """Raise a BenchmarkError naming `name` unless `source` is an image within the pixel budget
    whose file structure is intact (checked without decoding its pixels)."""
    with _opened(source, name) as img:
        img.verify()
