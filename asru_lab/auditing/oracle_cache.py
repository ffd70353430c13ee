"""The oracle's side of an audit, kept on disk between processes.

Every audit with a retrain oracle attacks the oracle too: the generating attacks under the
identical settings (`run._oracle_audit`) and its relearning curves (`relearn`). Within one
process both are kept in memory (`reproduce --audit` pays for them once); this module keeps them
on disk as well, so that auditing five methods with five `asru-lab audit` calls, or auditing
again tomorrow, attacks the oracle once (about a third of a default audit on 2 cores).

What is kept is exactly what would be computed again: an entry is found only under a key made
of everything the oracle's side depends on —

- the oracle's weights (a SHA-256 of every parameter and buffer: names, dtypes, shapes, bytes),
  the reference model's weights (direction ablation's reference) when there is one;
- the benchmark's items and people (`Benchmark.fingerprint`) and, for a dataset on disk, the
  size and modification time of every image file it names;
- every setting of the audit (its seeded samples come from them);
- the source of the installed asru_lab package (every `.py` file) and the versions of torch,
  transformers and peft: a change to any attack's code is a new key, never a stale result.

Entries live in `$ASRU_LAB_CACHE/oracle-audits` (default `$XDG_CACHE_HOME/asru_lab`, else
`~/.cache/asru_lab`), one JSON file per key, written atomically. An unreadable entry is ignored
with a warning (and replaced by the recomputed one). `audit(..., oracle_cache=False)` (CLI:
`asru-lab audit --no-oracle-cache`) neither reads nor writes; removing the folder empties it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from asru_lab.artifacts import write_text_atomic
from asru_lab.data.schema import Benchmark
from asru_lab.errors import AsruLabError
from asru_lab.models.loading import LoadedModel

CACHE_ENV = "ASRU_LAB_CACHE"
FORMAT = "asru_lab.oracle_side"
FORMAT_VERSION = 1
# weights digests of models seen in this process, by the id of their module (kept with it, so
# the id is not reused); a model whose weights change in place is not a model to cache for: the
# oracle and the reference are never trained by an audit
_DIGESTS: dict[int, tuple[torch.nn.Module, str]] = {}


def folder() -> Path:
    """Where entries are kept (module docstring)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asru_lab"
    return Path(root) / "oracle-audits"


@functools.cache
def source_digest() -> str:
    """A SHA-256 of the installed asru_lab's source and of the libraries that compute with it."""
    import peft
    import transformers

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for module in (torch, transformers, peft):
        digest.update(f"{module.__name__}={module.__version__}\0".encode())
    return digest.hexdigest()


def weights_digest(lm: LoadedModel) -> str:
    """A SHA-256 of every parameter and buffer of `lm` (names, dtypes, shapes and bytes)."""
    found = _DIGESTS.get(id(lm.model))
    if found is not None and found[0] is lm.model:
        return found[1]
    digest = hashlib.sha256()
    state = lm.model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)  # 0-d too
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    _DIGESTS[id(lm.model)] = (lm.model, digest.hexdigest())
    return _DIGESTS[id(lm.model)][1]


def _images(bench: Benchmark) -> list:
    """Size and modification time of each image file a dataset on disk names (images drawn by
    code are the code's: `source_digest`)."""
    if getattr(bench, "_image_loader", None) is not None:
        return []
    out = []
    for path in sorted({i.image for i in bench.items if i.image}):
        where = Path(bench.root) / path if bench.root is not None else Path(path)
        try:
            info = where.stat()
            out.append([path, info.st_size, info.st_mtime_ns])
        except OSError:
            out.append([path, None, None])
    return out


def key(kind: str, oracle: LoadedModel, bench: Benchmark, settings: dict, **more) -> str:
    """The entry's name: a SHA-256 of everything the oracle's side of `kind` depends on."""
    parts = {
        "kind": kind,
        "format": [FORMAT, FORMAT_VERSION],
        "source": source_digest(),
        "oracle": weights_digest(oracle),
        "benchmark": [bench.name, bench.fingerprint(), _images(bench)],
        "settings": settings,
        **{k: weights_digest(v) if isinstance(v, LoadedModel) else v for k, v in more.items()},
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def normalised(payload: dict) -> dict:
    """`payload` as it reads back from disk (tuples as lists): what is computed and what is
    found are the same values of the same types."""
    return json.loads(json.dumps(payload, default=str))


def load(name: str) -> dict | None:
    """The entry `name`, or None when there is none or it cannot be read (with a warning)."""
    path = folder() / f"{name}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ValueError("not an oracle-side entry of this asru_lab")
        return data["payload"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(
            f"ignoring the damaged oracle cache entry {path} ({exc}); the oracle is attacked "
            "again and the entry replaced",
            stacklevel=2,
        )
        return None


def store(name: str, payload: dict) -> None:
    """Keep `payload` (JSON-ready) as the entry `name`; a cache that cannot be written is
    skipped with a warning (the audit's result does not depend on it)."""
    path = folder() / f"{name}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": FORMAT, "format_version": FORMAT_VERSION, "payload": payload}
        write_text_atomic(path, json.dumps(entry, default=str) + "\n")
    except (OSError, AsruLabError) as exc:
        warnings.warn(f"could not keep the oracle's side in {path} ({exc})", stacklevel=2)
