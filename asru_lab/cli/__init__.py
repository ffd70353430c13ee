"""`asru-lab`: the command line. Every command is a thin call into the library.

The parser is in `options.py` (generated from the config dataclasses), the subcommands in
`commands.py`; `python -m asru_lab.cli` and the `asru-lab` script run `main`.
"""

from __future__ import annotations

import sys

from asru_lab.cli.commands import COMMANDS, UsageError, check_out
from asru_lab.cli.options import OUTPUT_FILE_COMMANDS, build_parser
from asru_lab.errors import AsruLabError

__all__ = ["COMMANDS", "OUTPUT_FILE_COMMANDS", "UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a person can fix print one line and exit 2; tracebacks only
    with --debug. Any other exception is a bug: one line naming it, exit 1."""
    args = build_parser().parse_args(argv)
    try:
        check_out(args)
        return COMMANDS[args.command](args)
    except (AsruLabError, OSError) as exc:
        if args.debug:
            raise
        print(f"asru-lab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"asru-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"asru-lab {args.command}: internal error ({type(exc).__name__}: {_one_line(exc)}); "
            "this is a bug in asru_lab: rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
