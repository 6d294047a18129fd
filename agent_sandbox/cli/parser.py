"""The argument parser of ``agent-sandbox`` and its built-in sub-commands."""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from .external import EXTERNAL

DESCRIPTION = """\
Create, run, copy, list and destroy sandboxes on any provider.

A sandbox id is the provider's own; without --provider it is looked up on the configured
provider, then on every other installed one. Paths inside a sandbox are written ID:PATH in cp.

Exit status: the command's own status for run and exec; 2 when the command line is wrong;
124 when a command timed out; 125 when agent-sandbox itself failed.
"""

EXEC_EPILOG = "The command's argv goes after --, e.g.: agent-sandbox exec ID -- ls -la"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        "-p",
        help="provider name (default: from AGENT_SANDBOX_PROVIDER or agent-sandbox.toml, "
        "else local)",
    )
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        metavar="KEY=VALUE",
        help="provider option, repeatable (e.g. -o runtime=runsc for docker)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="image or template to start from (provider default)")
    parser.add_argument("--cpus", type=float, help="CPU cores, e.g. 0.5")
    parser.add_argument("--memory-mib", type=int, dest="memory_mib", help="memory limit in MiB")
    parser.add_argument("--workdir", help="working directory inside the sandbox")
    parser.add_argument(
        "--ttl", type=float, metavar="SECONDS", help="seconds before the sandbox ends itself"
    )
    parser.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="label the sandbox, repeatable"
    )
    parser.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="environment variable of every command in the sandbox, repeatable",
    )
    parser.add_argument(
        "--network",
        choices=["none", "open"],
        default="open",
        help="none: no network at all; open: full egress (default)",
    )


def _exec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cwd", help="directory to run the command in (default: the workdir)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill the command's process tree after this long (exit status 124)",
    )
    parser.add_argument(
        "--exec-env",
        action="append",
        dest="env_exec",
        metavar="KEY=VALUE",
        help="environment variable of this command only, repeatable",
    )
    parser.add_argument(
        "--stdin", action="store_true", help="feed this process's stdin to the command"
    )
    parser.add_argument(
        "--shell", "-c", metavar="STRING", help="run STRING with sh -c instead of an argv"
    )
    parser.epilog = EXEC_EPILOG


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agent-sandbox``."""
    parser = argparse.ArgumentParser(
        prog="agent-sandbox",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"agent-sandbox {__version__} (Python {sys.version.split()[0]})",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", help="create a sandbox and print its id")
    _common(p)
    _spec_args(p)

    p = sub.add_parser("run", help="create a sandbox, run one command in it, destroy it")
    _common(p)
    _spec_args(p)
    _exec_args(p)

    p = sub.add_parser("exec", help="run a command in an existing sandbox")
    _common(p)
    p.add_argument("sandbox_id", metavar="ID", help="the sandbox to run in")
    _exec_args(p)

    p = sub.add_parser("cp", help="copy a file or tree in or out: cp SRC ID:DST, or cp ID:SRC DST")
    _common(p)
    p.add_argument("src", help="a local path, or ID:PATH inside a sandbox")
    p.add_argument("dst", help="a local path, or ID:PATH inside a sandbox")

    p = sub.add_parser("ls", help="list sandboxes on every provider this machine reaches")
    _common(p)
    p.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="only sandboxes with this label"
    )

    p = sub.add_parser("rm", help="destroy sandboxes (an unknown id is an error)")
    _common(p)
    p.add_argument("sandbox_ids", nargs="+", metavar="ID", help="sandboxes to destroy")

    p = sub.add_parser("sweep", help="destroy managed sandboxes whose TTL has passed")
    _common(p)

    p = sub.add_parser("providers", help="which providers are installed and configured")
    _common(p)

    p = sub.add_parser("doctor", help="check a provider's prerequisites")
    _common(p)
    p.add_argument("name", nargs="?", help="provider to check (default: the configured one)")

    for name, external in EXTERNAL.items():
        sub.add_parser(name, help=external.help, add_help=False)
    return parser
