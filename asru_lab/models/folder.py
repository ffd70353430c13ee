"""The one place that opens a model folder, which is data from someone else and trusted in
nothing: `open_model_folder` checks it before transformers reads a byte of it, and
`check_chat_templates` renders its chat templates once, under a time limit.

asru_lab never runs a model folder's code (an `auto_map` is refused, and every transformers
call passes `trust_remote_code=False`), reads only files inside the folder (shards named by the
index, symlinks), checks the types of its metadata (`asru_lab_model.json`) and every safetensors
header against its file, and never unpickles a weight file.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from huggingface_hub import snapshot_download

from asru_lab.errors import AsruLabError
from asru_lab.models.adapters import ArchitectureAdapter
from asru_lab.models.embedded import EMBEDDED_NAME, embedded_dir


class ModelLoadError(AsruLabError, RuntimeError):
    """A model could not be loaded; the message says from where and why."""


META_FILE = "asru_lab_model.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# JSON files that hold data, not settings: transformers takes no class name from them
DATA_JSON = ("tokenizer.json", "vocab.json", "added_tokens.json", SAFETENSORS_INDEX)
TEMPLATE_DIR = "additional_chat_templates"
# what a hub id is fetched as (then checked like any local folder): no pickles, no code
HUB_FILES = ["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
# safetensors' own cap on a header; a larger length means the first bytes are damaged
MAX_HEADER_BYTES = 100_000_000
# bytes per element of each safetensors dtype, to check a header's offsets against its shapes
ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_NAME_CHARS = 200
# a real chat template renders a short conversation in milliseconds
TEMPLATE_SECONDS = 5.0


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder: where it is, what it is called, and what it holds."""

    path: Path
    name: str
    revision: str | None = None
    # asru_lab_model.json's other entries (provenance records), without name and revision
    meta: dict = field(default_factory=dict)
    # each tensor name -> the safetensors file holding it
    weight_files: dict[str, Path] = field(default_factory=dict)


def open_model_folder(name_or_path: str | os.PathLike | None) -> ModelFolder:
    """The checked folder of the embedded model (None), a local directory or a hub id.

    A hub id is fetched (or found in the HF cache) as its safetensors, JSON and template files
    only, then checked like a local folder. Refuses, naming the file: a missing folder or
    config.json, an `auto_map` (code the folder would run), a file that lies outside the folder
    (a symlink, a shard named by an absolute or `..` path), metadata of the wrong type, and
    missing, damaged or pickle-only weights.
    """
    if name_or_path is None:
        path, name = embedded_dir(), EMBEDDED_NAME
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded model is not built ({path} has no config.json); "
                "run `asru-lab build-embedded` to create it"
            )
    else:
        raw = str(name_or_path)
        path = Path(raw).expanduser()
        if path.exists() or raw.startswith((".", "/", "~")) or raw.count("/") != 1:
            if not path.is_dir():
                raise ModelLoadError(f"model directory not found: {path}")
            if not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{path} is not a model directory: it has no config.json "
                    "(expected the output of save_pretrained)"
                )
            name = str(path)
        else:
            path, name = _hub_snapshot(raw), raw
    roots = _allowed_roots(path.resolve())
    _check_inside(path, roots)
    _refuse_code(path)
    meta = _checked_meta(path)
    name = meta.pop("name", name)
    revision = meta.pop("revision", None)
    weight_files = _checked_weight_files(path, roots)
    return ModelFolder(path, name, revision, meta, weight_files)


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a hub model (downloaded unless HF_HUB_OFFLINE is set)."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not fetch the model {repo_id!r} from the hub or the local cache: {exc}"
        ) from exc


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where the files of `folder` (resolved) may lie: inside it, and for a snapshot of the HF
    cache (`models--org--name/snapshots/REV`), in that model's `blobs` its symlinks point at."""
    repo = folder.parent.parent
    if folder.parent.name == "snapshots" and repo.name.startswith("models--"):
        return folder, repo / "blobs"
    return (folder,)


def _outside(file: Path, roots: tuple[Path, ...]) -> bool:
    resolved = file.resolve()
    return not any(resolved.is_relative_to(root) for root in roots)


def _check_inside(folder: Path, roots: tuple[Path, ...]) -> None:
    """Refuse a symlink among the files transformers reads (the folder's entries and its
    additional chat templates) that points outside the folder."""
    templates = folder / TEMPLATE_DIR
    entries = [*folder.iterdir(), *(templates.iterdir() if templates.is_dir() else ())]
    for entry in entries:
        if entry.is_symlink() and _outside(entry, roots):
            raise ModelLoadError(
                f"{entry} is a link to {entry.resolve()}, outside the model folder; asru_lab "
                "reads only files inside a model folder: copy the file in (cp -L) if you "
                "trust it"
            )


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"{file}: not readable JSON ({exc}); the model folder is damaged: re-save or "
            "download it again"
        ) from exc


def _auto_map_path(value: object, trail: str = "") -> str | None:
    """Where an `auto_map` key sits in a parsed JSON value ("image_processor.auto_map"), or
    None."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{trail}.{key}" if trail else str(key)
            if key == "auto_map":
                return here
            found = _auto_map_path(item, here)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _auto_map_path(item, trail)
            if found:
                return found
    return None


def _refuse_code(folder: Path) -> None:
    """Refuse a folder whose settings name classes in its own Python files (`auto_map`):
    loading it would import them, which asru_lab never does."""
    for file in sorted(folder.glob("*.json")):
        if file.name in DATA_JSON:
            continue
        key = _auto_map_path(_read_json(file))
        if key:
            raise ModelLoadError(
                f"{file}: '{key}' names custom model code (Python files shipped with the "
                "model); asru_lab never runs a model folder's code, so it cannot load this "
                "model: use a model whose classes transformers has built in (e.g. Qwen3-VL)"
            )


def _checked_meta(folder: Path) -> dict:
    """`asru_lab_model.json` as a dict whose name and revision are strings (empty when the
    folder has none)."""
    file = folder / META_FILE
    if not file.is_file():
        return {}
    meta = _read_json(file)
    if not isinstance(meta, dict):
        raise ModelLoadError(
            f"{file}: expected a JSON object, got {type(meta).__name__}; the model folder is "
            "damaged: delete this file or re-save the model"
        )
    name = meta.get("name")
    if "name" in meta and (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > MAX_NAME_CHARS
        or not name.isprintable()
    ):
        raise ModelLoadError(
            f"{file}: 'name' must be a printable string of 1 to {MAX_NAME_CHARS} characters, "
            f"got {str(name)[:60]!r} ({type(name).__name__}); fix or delete this entry"
        )
    revision = meta.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ModelLoadError(
            f"{file}: 'revision' must be a string or null, got {type(revision).__name__}; "
            "fix or delete this entry"
        )
    return dict(meta)


def _checked_weight_files(folder: Path, roots: tuple[Path, ...]) -> dict[str, Path]:
    """Each tensor name of the folder's checkpoint -> the safetensors file holding it.

    Checks every file the checkpoint names lies inside the folder, is present, and that its
    header fits its size; refuses a checkpoint that has only pickle files, which are never
    opened.
    """
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = dict(_read_json(index)["weight_map"])
            names = sorted(set(weight_map.values()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"{index}: not a readable safetensors index ({exc!r}); re-save the checkpoint"
            ) from exc
    elif (folder / "model.safetensors").is_file():
        weight_map, names = {}, ["model.safetensors"]
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelLoadError(
                f"{folder} has only pickle-format weights ({', '.join(pickles)}), which can "
                "run arbitrary code when opened, so asru_lab never loads them; convert the "
                "checkpoint to safetensors (save_pretrained writes model.safetensors) where you "
                "trust its source"
            )
        raise ModelLoadError(
            f"{folder} has no weights: expected model.safetensors or {SAFETENSORS_INDEX} "
            "(the output of save_pretrained)"
        )
    located: dict[str, Path] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if (
            not name
            or name.startswith(("/", "\\"))
            or ".." in parts
            or "\\" in name
            or ":" in name
            or _outside(folder / name, roots)
        ):
            raise ModelLoadError(
                f"{index} names the shard {name!r}, which is not a file inside the model "
                "folder; asru_lab reads only files inside a model folder: put the shard in "
                "the folder and name it by its file name"
            )
        file = folder / name
        if not file.is_file():
            raise ModelLoadError(
                f"{index} names the shard {name}, which is missing; "
                "the checkpoint is incomplete: copy or download that file again"
            )
        located.update(dict.fromkeys(_safetensors_tensor_names(file), file))
    for tensor, name in weight_map.items():
        if located.get(tensor) != folder / name:
            raise ModelLoadError(
                f"{index} puts tensor {tensor} in {name}, which does not hold it; "
                "the checkpoint is damaged: re-save or download it again"
            )
    return located


def _safetensors_tensor_names(file: Path) -> list[str]:
    """The tensor names in a safetensors file, after checking its header against its size."""
    size = file.stat().st_size

    def damaged(problem: str) -> ModelLoadError:
        return ModelLoadError(
            f"{file}: {problem}; the file ({size} bytes) is truncated or damaged: "
            "re-save or download it again"
        )

    with file.open("rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little")
        if len(head) < 8 or length > min(size - 8, MAX_HEADER_BYTES):
            raise damaged("its header does not fit in the file")
        try:
            header = json.loads(fh.read(length))
            header.pop("__metadata__", None)
            spans = []
            for name, info in header.items():
                begin, stop = info["data_offsets"]
                width = ITEM_BYTES.get(info["dtype"])
                nbytes = width * torch.Size(info["shape"]).numel() if width else None
                spans.append((int(begin), int(stop), name, nbytes))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise damaged(f"its header is unreadable ({exc!r})") from exc
    end = 0
    for begin, stop, name, nbytes in sorted(spans):
        if begin != end or stop < begin or (nbytes is not None and stop - begin != nbytes):
            raise damaged(f"its header gives tensor {name} an invalid place")
        end = stop
    data = size - 8 - length
    if end != data:
        raise damaged(f"its header describes {end} bytes of tensor data, the file holds {data}")
    return [span[2] for span in spans]


class _TemplateStopped(BaseException):
    """Raised inside a chat template's render thread to stop it after the time limit."""


def _within(seconds: float, render) -> str:
    """`render()`'s result, or TimeoutError after `seconds`.

    The render runs in a worker thread rather than under SIGALRM: that works in any thread
    (notebook kernels, worker threads, Windows) and leaves the caller's alarm alone, and the
    caller never waits past the limit even while the worker is inside one long C call. The
    worker is then stopped by an exception raised in it at its next Python step.
    """
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["text"] = render()
        except BaseException as exc:  # the template's own failure, or the stop below
            result["error"] = exc

    worker = threading.Thread(target=run, name="asru_lab chat template check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(worker.ident), ctypes.py_object(_TemplateStopped)
        )
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result["text"]


def _templates(holder: object) -> dict[str, str]:
    """A processor's or tokenizer's chat templates by name ("default" for a single one)."""
    templates = getattr(holder, "chat_template", None)
    if isinstance(templates, str):
        return {"default": templates}
    return dict(templates) if isinstance(templates, dict) else {}


def _holds(value: object, text: str) -> bool:
    """Whether a parsed JSON value holds the string `text` somewhere."""
    if isinstance(value, dict):
        return any(_holds(item, text) for item in value.values())
    if isinstance(value, list):
        return any(_holds(item, text) for item in value)
    return value == text


def _template_file(folder: Path, name: str, text: str) -> Path:
    """The file of `folder` that holds the template `text` (the folder itself when none
    does), for the error message."""
    for file in (folder / "chat_template.jinja", folder / TEMPLATE_DIR / f"{name}.jinja"):
        if file.is_file() and file.read_text(encoding="utf-8") == text:
            return file
    for base in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        file = folder / base
        if file.is_file() and _holds(_read_json(file), text):
            return file
    return folder


def check_chat_templates(processor: object, adapter: ArchitectureAdapter, folder: Path) -> None:
    """Render each chat template of `processor` and its tokenizer once, as asru_lab prompts
    (a user turn with an image and text, the assistant's reply, a text turn, the generation
    prompt), in transformers' Jinja sandbox within `TEMPLATE_SECONDS`.

    Refuses, naming the template's file: a template that does not finish in time (nested
    loops), tries to reach outside the sandbox (Python attributes, `include`/`import` of a
    file), or fails on that conversation; and a model with no chat template at all.
    """
    conversation = [
        *adapter.user_message("Who is the person in this picture?", True),
        {"role": "assistant", "content": [{"type": "text", "text": "I don't know."}]},
        *adapter.user_message("Where was Marie Curie born?", False),
    ]
    # the processor's templates and its tokenizer's, each distinct text once
    templates = {
        text: name
        for holder in (getattr(processor, "tokenizer", None), processor)
        for name, text in _templates(holder).items()
    }
    if not templates:
        raise ModelLoadError(
            f"{folder} has no chat template (chat_template.jinja), which asru_lab needs to "
            "write prompts; add the model family's template to the folder"
        )
    for text, name in templates.items():

        def render(text: str = text) -> str:
            return processor.apply_chat_template(
                conversation, chat_template=text, add_generation_prompt=True, tokenize=False
            )

        try:
            _within(TEMPLATE_SECONDS, render)
        except TimeoutError:
            why = (
                f"rendering a three-turn conversation took over {TEMPLATE_SECONDS:g} s "
                "(loops without end?)"
            )
        except Exception as exc:
            why = _template_failure(exc)
        else:
            continue
        which = "" if name == "default" else f" {name!r}"
        raise ModelLoadError(
            f"the model's chat template{which} ({_template_file(folder, name, text)}) was "
            f"refused: {why}; asru_lab renders a model's template in Jinja's sandbox and never "
            "lets it run code or read files: fix the template or use the model family's own"
        )


def _template_failure(exc: Exception) -> str:
    """What a template's exception means, for a person."""
    from jinja2.exceptions import SecurityError, TemplateSyntaxError

    if isinstance(exc, SecurityError):
        return f"it tried to reach outside the sandbox ({exc})"
    if isinstance(exc, TypeError) and "no loader" in str(exc):
        return "it tried to include or import another file"
    if isinstance(exc, TemplateSyntaxError):
        return f"it is not valid Jinja (line {exc.lineno}: {exc.message})"
    return f"it failed on a plain conversation ({type(exc).__name__}: {exc})"
