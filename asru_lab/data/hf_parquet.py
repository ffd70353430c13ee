"""Hugging Face dataset repositories stored as parquet (MLLMU-Bench, CLEAR).

A local copy has one folder per config holding `*.parquet` files (at any depth: `forget_10/`
or `forget_10/data/`). Images are embedded in the rows as {bytes, path} structs; the loaders
keep them encoded in memory (`blobs`: benchmark path -> bytes), check every header at load and
decode one when it is first opened, so loading a benchmark never decodes thousands of images.
The parquet files are not required to lie inside the directory: the Hugging Face cache links
them to its blobs folder, and they are read as parquet only, never as paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from asru_lab.data.files import check_image, open_image
from asru_lab.data.schema import BenchmarkError, ImageLoader


def config_files(folder: Path) -> list[Path]:
    """The parquet files of one config folder (`**/*.parquet`, sorted); BenchmarkError if none."""
    files = sorted(folder.glob("**/*.parquet"))
    if not files:
        raise BenchmarkError(f"no parquet files under {folder}; is the download complete?")
    for file in files:
        if not file.is_file():  # a FIFO would block the read forever
            raise BenchmarkError(f"{file} is not a regular file; re-download the dataset")
    return files


def column_names(file: Path) -> list[str]:
    """The columns of a parquet file, read from its footer only."""
    try:
        return list(pq.read_schema(file).names)
    except (pa.ArrowException, OSError) as exc:
        raise BenchmarkError(f"{file} is not a readable parquet file ({exc})") from exc


def read_table(file: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """`file` (only `columns`, all when None) as a table whose every column holds valid data;
    else a BenchmarkError naming the file and, for bad data, the column."""
    try:
        table = pq.read_table(file, columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise BenchmarkError(f"{file} is not a readable parquet file ({exc})") from exc
    for name in table.column_names:
        try:
            table.column(name).validate(full=True)
        except pa.ArrowInvalid as exc:
            raise BenchmarkError(
                f"{file}: column {name!r} holds invalid data ({exc}); re-download the file"
            ) from exc
    return table


def image_bytes(cell: Any) -> Any:
    """The encoded image inside a cell: a {bytes, path} struct's `bytes`, or the cell itself
    (raw bytes, or whatever else it holds: the caller checks the type)."""
    return cell.get("bytes") if isinstance(cell, dict) else cell


def bytes_loader(blobs: dict[str, bytes], source: str) -> ImageLoader:
    """An image loader decoding the in-memory bytes behind a path into an RGB image, once every
    image's header has been checked here against the pixel budget (`data.files`); errors name
    `source` (the benchmark, e.g. "MLLMU-Bench") and the path."""
    for path, data in blobs.items():
        check_image(data, f"{source} image {path!r}")

    def load(path: str) -> Image.Image:
        if path not in blobs:
            raise BenchmarkError(f"no {source} image at {path!r}")
        return open_image(blobs[path], f"{source} image {path!r}")

    return load
