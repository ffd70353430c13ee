"""`asru-lab`: the command line. Every command is a thin call into the library.

The parser is in `options.py` (generated from the config dataclasses), the subcommands in
`commands.py`; `python -m asru_lab.cli` and the `asru-lab` script run `main`.
"""

from __future__ import annotations

import errno
import os
import sys

from asru_lab.cli.commands import COMMANDS, UsageError, check_out, command_paths
from asru_lab.cli.options import OUTPUT_FILE_COMMANDS, build_parser
from asru_lab.errors import AsruLabError

__all__ = ["COMMANDS", "OUTPUT_FILE_COMMANDS", "UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a person can fix (a full disk and running out of memory
    included) print one line and exit 2; tracebacks only with --debug. Any other exception is
    a bug: one line naming it, exit 1. The command's outputs are locked (`writing_lock`) from
    their check to the last write."""
    from asru_lab.artifacts import writing_lock

    args = build_parser().parse_args(argv)
    try:
        # the processes of one `accelerate launch` are one job: its main process holds the lock
        outputs = command_paths(args)[1].values() if _main_process() else ()
        with writing_lock(outputs):
            check_out(args)
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"asru-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        problem = _out_of_resources(exc, args)
        if problem is None and isinstance(exc, AsruLabError | OSError):
            problem = _one_line(exc)
        if problem is not None:
            print(f"asru-lab {args.command}: error: {problem}", file=sys.stderr)
            return 2
        print(
            f"asru-lab {args.command}: internal error ({type(exc).__name__}: {_one_line(exc)}); "
            "this is a bug in asru_lab: rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1


def _main_process() -> bool:
    """False in the other processes of a distributed launch (torchrun / accelerate set RANK)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


_DISK_FULL = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded")
_NO_MEMORY = (
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory",
    "MPS backend out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
)


def _out_of_resources(exc: BaseException, args) -> str | None:
    """What to do when `exc` (or an error it came from) is a full disk or exhausted memory,
    however the library that hit it wrapped it (safetensors, torch.save, json); else None."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    for cause in seen:
        text = str(cause)
        if (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            s in text for s in _DISK_FULL
        ):
            where = getattr(cause, "filename", None) or getattr(args, "out", None) or "the output"
            return (
                f"the disk is full (or your quota is used up) while writing {where}: free space "
                "there, or write --out to another disk, and rerun"
            )
        if (
            isinstance(cause, MemoryError)
            or type(cause).__name__ == "OutOfMemoryError"  # torch's, without importing torch
            or any(s in text for s in _NO_MEMORY)
        ):
            return (
                f"out of memory ({_one_line(cause)[:160]}): use a smaller batch "
                "(--batch-size where the command has it), fewer items (--max-items) or a "
                "smaller model or dtype; on a GPU, free what other processes hold"
            )
    return None
