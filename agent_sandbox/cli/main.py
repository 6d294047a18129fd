"""The entry point: parse, dispatch, and turn every failure into one line and an exit status."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, SandboxError
from .external import EXTERNAL
from .output import error_line
from .parser import build_parser
from .status import FAILURE, INTERRUPTED, USAGE, report, status_of

if TYPE_CHECKING:
    from pydantic import ValidationError

# sub-command -> "module:function" in this package, imported once the command line parsed (so
# --help and --version never load the sandbox machinery).
HANDLERS: dict[str, str] = {
    "create": "commands:cmd_create",
    "run": "commands:cmd_run",
    "exec": "commands:cmd_exec",
    "cp": "copy:cmd_cp",
    "ls": "commands:cmd_ls",
    "rm": "commands:cmd_rm",
    "sweep": "commands:cmd_sweep",
    "providers": "commands:cmd_providers",
    "doctor": "commands:cmd_doctor",
}

DEBUG_ENV = "AGENT_SANDBOX_DEBUG"
"""Set to show the traceback of an unexpected error instead of one line."""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    # Everything after the first `--` is the command's argv, never our options.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.argv = argv[split + 1 :]
    if args.argv and args.command not in ("run", "exec"):
        parser.error(f"'--' and a command go only with run and exec, not {args.command}")
    return args


def _validation_message(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid input: " + "; ".join(problems)


def _run(argv: list[str]) -> int:
    if argv[:1] and argv[0] in EXTERNAL:
        return EXTERNAL[argv[0]].load(argv[0])(argv[1:])
    args = _parse(argv)
    module, _, name = HANDLERS[args.command].partition(":")
    handler: Callable[[argparse.Namespace], Awaitable[int]] = getattr(
        importlib.import_module(f".{module}", __package__), name
    )
    import anyio

    return anyio.run(handler, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agent-sandbox`` with ``argv`` (default: the process's); returns the exit status.

    Usage errors exit 2, a command's timeout 124, any other failure 125, each reported as one
    line on stderr (a JSON object with ``--json``); run and exec otherwise exit with the
    command's own status.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list[: args_list.index("--") if "--" in args_list else None]
    try:
        return _run(args_list)
    except SandboxError as exc:
        report(exc, as_json=as_json)
        return status_of(exc)
    except KeyboardInterrupt:
        return INTERRUPTED
    except OSError as exc:
        error_line(f"{type(exc).__name__}: {exc}")
        return FAILURE
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            report(ConfigError(_validation_message(exc)), as_json=as_json)
            return USAGE
        if os.environ.get(DEBUG_ENV):
            raise
        error_line(
            f"unexpected error: {type(exc).__name__}: {exc} "
            f"(a bug: set {DEBUG_ENV}=1 for the traceback and report it)"
        )
        return FAILURE
