"""Writing outputs: atomic, never destroying what asru_lab did not write.

Every folder asru_lab writes holds a marker file (`MARKER`) that lists the entries asru_lab put
there. That list is what makes a folder "asru_lab's own earlier output":

- a new or empty folder, or one of asru_lab's own (marked, or holding only marked sub-folders),
  is written without asking; asru_lab's earlier entries in it are replaced;
- any other non-empty folder is refused unless `overwrite=True` (`--overwrite`); even then only
  asru_lab's entries are written beside what is there, and an unrelated file that has the name of
  one of them is never replaced (the new output is kept beside it and the error names both);
- an existing *file* where a folder should go is always refused.

Replacing the entries of an existing folder is not one rename: the marker says "incomplete"
while they are swapped, and `check_complete` (called by every loader of asru_lab's folders)
refuses a folder whose writer was killed half-way. `writing_lock` keeps two processes from
writing the same output at once. What is written follows the user's umask (temporary files are
private while they are written).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from asru_lab.errors import AsruLabError
from asru_lab.version import __version__

MARKER = ".asru_lab_output.json"
_SHOWN = 5  # unrelated entries named in an error


class OutputError(AsruLabError, ValueError):
    """An output location cannot be written without destroying something, or at all."""


class IncompleteOutputError(AsruLabError, ValueError):
    """An asru_lab folder whose writer stopped while it replaced the folder's entries."""


_SAME = object()  # `_write_marker`: keep the marker's record of an unfinished replacement


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, *, directory: bool) -> None:
    """Give `path` the mode plain `mkdir`/`open` give (mkdtemp and mkstemp make it private)."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object
    (for recognising asru_lab's own earlier outputs)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_marker(folder: Path) -> dict | None:
    data = read_json_object(folder / MARKER)
    return data if data is not None and isinstance(data.get("entries"), list) else None


def _listed(folder: Path) -> set[str]:
    """The entries that the marker of `folder` lists (none without a marker)."""
    marker = _read_marker(folder)
    return {str(n) for n in marker["entries"]} if marker else set()


def is_marked(folder: str | os.PathLike) -> bool:
    """True when `folder` carries asru_lab's output marker."""
    return _read_marker(Path(folder)) is not None


def own_entries(folder: str | os.PathLike) -> set[str]:
    """The names in `folder` that asru_lab wrote: those its marker lists and marked sub-folders."""
    folder = Path(folder)
    names = _listed(folder)
    marker = _read_marker(folder)
    if marker is not None and marker.get("whole_folder") is True and folder.is_dir():
        names |= {p.name for p in folder.iterdir()}
    if folder.is_dir():
        names |= {p.name for p in folder.iterdir() if p.is_dir() and is_marked(p)}
    return names | {MARKER}


def _unrelated(folder: Path) -> list[str]:
    own = own_entries(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in own)


def _write_marker(
    folder: Path,
    entries: Iterable[str],
    *,
    whole: bool | None = None,
    replacing: dict | None | object = _SAME,
) -> None:
    """Write the marker of `folder`; `whole`: everything in it is asru_lab's (a training run's
    working folder), None keeps what the marker said; `replacing`: the temporary folders of a
    replacement that has begun (the folder is incomplete until it is rewritten with None)."""
    old = _read_marker(folder) or {}
    if whole is None:
        whole = bool(old.get("whole_folder"))
    if replacing is _SAME:
        replacing = old.get("replacing")
    data = {
        "written_by": "asru_lab",
        "asru_lab_version": __version__,
        "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "entries": sorted(set(entries) - {MARKER}),
        "whole_folder": whole,
        "complete": replacing is None,
    }
    if replacing is not None:
        data["replacing"] = replacing
    _write_text(folder / MARKER, json.dumps(data, indent=2) + "\n")


def check_complete(folder: str | os.PathLike | None) -> None:
    """Raise `IncompleteOutputError` when `folder` is an asru_lab output whose entries were being
    replaced when its writer stopped (killed, power cut): it may mix old and new files. Any
    other path (a missing one, a hub id, None) passes."""
    if folder is None:
        return
    marker = _read_marker(Path(folder))
    if marker is not None and marker.get("complete") is False:
        raise IncompleteOutputError(
            f"{folder} was being written when the process stopped (asru_lab was replacing its "
            f"files, {marker.get('updated', 'at an unknown time')}): it may mix old and new "
            "files, so it is not read. Rerun the command that wrote it (it writes the folder "
            "anew) or delete the folder"
        )


def is_complete(folder: str | os.PathLike) -> bool:
    """False for a folder that `check_complete` refuses (for caches: recompute instead)."""
    try:
        check_complete(folder)
    except IncompleteOutputError:
        return False
    return True


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_output(target: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Raise `OutputError` unless asru_lab may write a folder at `target`; writes nothing.

    Checks that `target` is not a file, that it (or the closest folder above it that exists) can
    be written, and that an existing non-empty folder is asru_lab's own or `overwrite` is set.
    Missing folders above `target` are created when the output is written. Returns the path.
    """
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputError(
            f"{target} is a file: asru_lab writes a folder there and never replaces a file; "
            "choose another output path"
        )
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {target}: the folder is not writable")
        unrelated = _unrelated(target)
        if unrelated and not overwrite:
            raise OutputError(
                f"{target} already holds {len(unrelated)} item(s) that asru_lab did not write "
                f"({_listing(unrelated)}); choose a new or empty "
                "folder, or pass --overwrite (overwrite=True) to write beside them (they are kept)"
            )
        return target
    _check_parent(target)
    return target


def check_apart(
    inputs: Mapping[str, str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    writes: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Raise `OutputError` when an output (name -> path, e.g. "--out") is one of the inputs,
    lies inside one or holds one (writing it would change or replace what is read), or when two
    outputs are the same path. Symlinks and relative spellings are resolved first.

    `writes`: for an output folder filled entry by entry (`claim_output`), the names of the
    only entries the command writes there; an input inside that folder but in none of them is
    never touched, so it is allowed (`trace-causal --probe OUT/probe --out OUT`). An output
    not named there may be replaced whole, so no input may lie inside it."""
    ins = {name: Path(p).expanduser().resolve() for name, p in inputs.items()}
    outs = {name: Path(p).expanduser().resolve() for name, p in outputs.items()}
    writes = {name: set(entries) for name, entries in (writes or {}).items()}
    for out_name, out in outs.items():
        for in_name, read in ins.items():
            if out == read:
                why = f"{out_name} {outputs[out_name]} is also {in_name}"
            elif read in out.parents:
                why = f"{out_name} {outputs[out_name]} lies inside {in_name} {inputs[in_name]}"
            elif out in read.parents:
                entry = read.relative_to(out).parts[0]
                if out_name in writes and entry not in writes[out_name]:
                    continue
                why = f"{in_name} {inputs[in_name]} lies inside {out_name} {outputs[out_name]}"
            else:
                continue
            raise OutputError(
                f"{why}: asru_lab never writes where it reads (the output would change or "
                f"replace its own input); choose another {out_name}"
            )
    names = list(outs)
    for k, first in enumerate(names):
        for second in names[k + 1 :]:
            if outs[first] == outs[second]:
                raise OutputError(
                    f"{first} and {second} both name {outputs[first]}: one output would "
                    "replace the other; give them different paths"
                )


def _check_parent(target: Path) -> None:
    above = target.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise OutputError(f"cannot write {target}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: {above} is not writable")


def check_output_file(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    own: Callable[[Path], bool] | None = None,
) -> Path:
    """Raise `OutputError` unless asru_lab may write the file `path`; writes nothing.

    An existing file is replaced only when `own(path)` recognises it as asru_lab's earlier
    output of the same kind, or with `overwrite`. A folder at `path` is always refused.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file path for this output")
    if path.exists():
        if not (overwrite or (own is not None and own(path))):
            raise OutputError(
                f"{path} exists and is not an earlier asru_lab output of this kind; choose "
                "another path or pass --overwrite (overwrite=True) to replace it"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {path}: {path.parent} is not writable")
        return path
    _check_parent(path)
    return path


def claim_output(
    target: str | os.PathLike, *, overwrite: bool = False, whole: bool = False
) -> Path:
    """Check `target` (see `check_output`), create it and mark it as asru_lab's output folder.

    For folders that a run fills piece by piece (tables, results); the files written into it
    with `write_text_atomic` are recorded as asru_lab's. `whole`: every entry that later
    appears in it is asru_lab's (a training run's checkpoints and logs, written by TRL).
    Returns the path.
    """
    target = check_output(target, overwrite=overwrite)
    _make_folder(target)
    marker = _read_marker(target)
    if marker is None or (whole and not marker.get("whole_folder")):  # a rerun changes nothing
        _write_marker(target, _listed(target), whole=whole or None)
    _record(target.absolute().parent, [target.name])
    return target


def _make_folder(folder: Path) -> None:
    """`mkdir -p folder`; folders it creates inside an asru_lab output folder are marked as
    asru_lab's too (so a rerun recognises a cache or results sub-folder as its own)."""
    missing, above = [], folder.absolute()
    while not above.exists():
        missing.append(above)
        above = above.parent
    folder.mkdir(parents=True, exist_ok=True)
    if missing and is_marked(above):
        for created in reversed(missing):
            _write_marker(created, [])
            _record(created.parent, [created.name])


def _record(folder: Path, names: Iterable[str]) -> None:
    """Add `names` to the marker of `folder` if it is an asru_lab output folder."""
    if is_marked(folder) and not set(names) <= _listed(folder):
        _write_marker(folder, _listed(folder) | set(names))


@contextmanager
def atomic_dir(
    target: str | os.PathLike, *, overwrite: bool = False, keep: Iterable[str] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success its entries land in `target`.

    A new `target` appears whole by one rename. Into an existing folder (see `check_output` for
    which ones) each entry is swapped in; asru_lab's earlier entries that the new output lacks
    are removed, except those named in `keep` (e.g. a training log folder). On an exception
    nothing changes.
    """
    target = check_output(target, overwrite=overwrite)
    _make_folder(target.absolute().parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.absolute().parent))
    try:
        yield tmp
        for path in [tmp, *tmp.rglob("*")]:  # some writers (safetensors) make private files
            if not path.is_symlink():
                _follow_umask(path, directory=path.is_dir())
        entries = [p.name for p in tmp.iterdir() if p.name != MARKER]
        if not target.exists():
            _write_marker(tmp, entries)
            tmp.rename(target)
            _record(target.absolute().parent, [target.name])
            return
        _install(tmp, target, entries, set(keep))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, target: Path, entries: list[str], keep: set[str]) -> None:
    own = own_entries(target)
    clashes = sorted(n for n in entries if (target / n).exists() and n not in own)
    if clashes:
        kept = target.with_name(
            f"{target.name}.new-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        _write_marker(tmp, entries)
        tmp.rename(kept)
        raise OutputError(
            f"{target} holds {_listing(clashes)}, which asru_lab did not write but would replace; "
            f"nothing there was changed. The new output was saved to {kept}: move it into place "
            "yourself, or write to another folder"
        )
    _remove_leftovers(target)
    listed = _listed(target)
    stale = sorted(n for n in listed - keep - set(entries) if (target / n).exists())
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    marker = target / MARKER
    before = marker.read_text(encoding="utf-8") if marker.is_file() else None
    # from here until the last marker write the folder is incomplete: a kill leaves it refused
    _write_marker(target, listed | set(entries), replacing={"new": tmp.name, "old": backup.name})
    moved: list[str] = []  # entries of target moved to backup
    placed: list[str] = []  # new entries now in target
    try:
        for name in entries:
            if (target / name).exists() or (target / name).is_symlink():
                (target / name).rename(backup / name)
                moved.append(name)
            (tmp / name).rename(target / name)
            placed.append(name)
        for name in stale:
            (target / name).rename(backup / name)
            moved.append(name)
        _write_marker(target, (listed - set(stale)) | set(entries), replacing=None)
    except BaseException:
        for name in placed:
            (target / name).rename(tmp / name)
        for name in moved:
            (backup / name).rename(target / name)
        if before is not None:  # the marker as it was, its time included: nothing changed
            _write_text(marker, before)
        else:
            _write_marker(target, listed, replacing=None)
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Delete the temporary folders of a replacement of `target` that was killed half-way (its
    marker names them; both are asru_lab's, beside `target`)."""
    replacing = (_read_marker(target) or {}).get("replacing")
    if not isinstance(replacing, dict):
        return
    for name in replacing.values():
        if isinstance(name, str) and name.startswith(f".{target.name}.") and "/" not in name:
            shutil.rmtree(target.parent / name, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _follow_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file and a rename (missing folders are created).

    In an asru_lab output folder the file is recorded as asru_lab's own.
    """
    path = Path(path)
    _make_folder(path.parent)
    _write_text(path, text)
    _record(path.parent, [path.name])
    return path


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def record_output(path: str | os.PathLike) -> Path:
    """Record a file or folder that another library wrote (e.g. a PNG) as asru_lab's own."""
    path = Path(path)
    _record(path.parent, [path.name])
    return path


def set_aside(damaged: Iterable[Path]) -> None:
    """Rename each damaged checkpoint folder to `damaged-<name>` beside it: kept for a look,
    never read again, and out of the way of the step that training writes anew."""
    for path in damaged:
        aside = path.with_name(f"damaged-{path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)


def _lock_folder() -> Path:
    """Where the write locks live: the user's cache (never the output's folder, which may not
    exist yet and belongs to the user), else a private folder in the temp dir."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for folder in (
        cache / "asru_lab" / "locks",
        Path(tempfile.gettempdir()) / f"asru_lab-locks-{os.getuid()}",
    ):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid():
            return folder
    raise OutputError(f"cannot create a lock folder in {cache} nor in {tempfile.gettempdir()}")


@contextmanager
def _locked(path: Path, folder: Path) -> Iterator[None]:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").split("\n")[0] or "unknown"
            raise OutputError(
                f"another asru-lab process (pid {holder}) is writing {path}; wait until it "
                "finishes, or write to another path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{path}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock, also when the process is killed


@contextmanager
def writing_lock(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Hold asru_lab's write lock on every output path in `paths` for the block (one process at
    a time per path, whatever the working folder or symlinks spell); `OutputError` naming the
    other process's pid when it holds one. Locks are advisory: they bind asru-lab processes."""
    targets = sorted({Path(p).expanduser().resolve() for p in paths})
    if not targets:
        yield
        return
    folder = _lock_folder()
    with ExitStack() as stack:
        for path in targets:
            stack.enter_context(_locked(path, folder))
        yield
