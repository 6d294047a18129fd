"""``agent-sandbox audit``: tools for audit logs (today one: ``verify``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Run ``agent-sandbox audit ACTION ...``; returns the exit status."""
    if argv[:1] == ["verify"]:
        from ..audit import verify_main

        return verify_main(argv[1:])
    parser = argparse.ArgumentParser(prog="agent-sandbox audit", description="Audit log tools.")
    parser.add_argument(
        "action",
        choices=["verify"],
        help="verify: check the hash chain of an audit log (agent-sandbox audit verify --help)",
    )
    parser.parse_args(list(argv[:1]))  # prints usage and exits 2, or help and exits 0
    return 2  # pragma: no cover - parse_args exits for every input that reaches here
