"""Sub-commands that bring their own argument parser, often from an optional extra.

Each is one line of :data:`EXTERNAL`: the name typed after ``agent-sandbox``, the
``module:function`` that runs it (called with the arguments after the name, returning the exit
status), a line of help, and the extra that installs what it imports. The module is imported only
when the sub-command runs, so ``agent-sandbox --help`` stays fast and works without the extras.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ProviderNotInstalled


@dataclass(frozen=True)
class External:
    """A sub-command implemented elsewhere."""

    target: str
    """``module:function``; the function takes the remaining argv and returns the exit status."""
    help: str
    extra: str | None = None
    """The ``agent-sandbox[extra]`` its imports need, if any."""

    def load(self, name: str) -> Callable[[Sequence[str]], int]:
        """Import the function. Raises ``ProviderNotInstalled`` naming the extra to install."""
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f'pip install "agent-sandbox[{self.extra}]"' if self.extra else "reinstall"
            raise ProviderNotInstalled(
                f"agent-sandbox {name} needs a package that is missing ({exc}); run: {hint}"
            ) from exc
        function: Callable[[Sequence[str]], int] = getattr(module, attr)
        return function


EXTERNAL: dict[str, External] = {
    "mcp": External(
        "agent_sandbox.mcp.server:main", "serve a sandbox's agent tools over MCP", "mcp"
    ),
    "audit": External("agent_sandbox.cli.audit:main", "check an audit log: audit verify FILE"),
    "tunnel": External(
        "agent_sandbox.tunnel.cli:main",
        "the MCP tunnel: run a connector or an edge, make their credentials",
        "tunnel",
    ),
    "worker": External(
        "agent_sandbox.worker.cli:main", "claim sessions from a work queue and serve their tools"
    ),
}
