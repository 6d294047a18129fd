"""What the benchmarks against a provider's local fake share (not a benchmark itself): the
provider's test folder, where its fake lives, on the import path, and the command ours runs.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import agent_sandbox as asb

REPO = Path(__file__).resolve().parent.parent


def use_tests_of(provider: str) -> None:
    """Make ``providers/<provider>/tests`` importable (its fake and its fixtures' helpers)."""
    sys.path.insert(0, str(REPO / "providers" / provider / "tests"))


def exec_true(sb: asb.Sandbox) -> Callable[[], Awaitable[None]]:
    """Ours: ``sb.exec(["true"], timeout=30)``, checked to succeed."""

    async def ours() -> None:
        result = await sb.exec(["true"], timeout=30)
        assert result.exit_code == 0

    return ours
