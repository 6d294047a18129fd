"""The connector's routes: a name, the private MCP server it reaches, and what may be asked of it."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..policy import Action, Policy
from .exchange import ExchangeInfo, Refusal
from .tokens import valid_route_name

__all__ = ["Route"]


@dataclass(frozen=True)
class Route:
    """One private MCP server the connector serves, at ``https://EDGE/<name>/mcp``.

    Args:
        name: the route's name (lower-case letters, digits, ``-``, ``_``).
        url: the MCP endpoint (``http://`` or ``https://``), e.g. ``http://10.1.2.3:8000/mcp``.
        allow_methods: when given, only these JSON-RPC methods (``fnmatch`` patterns) pass;
            list the plumbing too (``initialize``, ``notifications/*``, ``ping``).
        deny_methods: methods (patterns) that never pass.
        allow_tools: when given, only these tools (patterns) may be called.
        deny_tools: tools (patterns) that may never be called.

    Denials win over allowances. Tool rules are the project's :class:`~agent_sandbox.Policy`.

    Raises:
        ConfigError: invalid name or URL.
    """

    name: str
    url: str
    allow_methods: tuple[str, ...] | None = None
    deny_methods: tuple[str, ...] = ()
    allow_tools: tuple[str, ...] | None = None
    deny_tools: tuple[str, ...] = ()
    _tools: Policy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not valid_route_name(self.name):
            raise ConfigError(
                f"invalid route name {self.name!r}: use lower-case letters, digits, '-' and '_'"
            )
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"route {self.name}: the URL must be http:// or https://HOST/...")
        if parts.username or parts.password or parts.fragment:
            raise ConfigError(f"route {self.name}: no credentials or fragment in the URL")
        object.__setattr__(
            self, "_tools", Policy(allow_tools=self.allow_tools, deny_tools=self.deny_tools)
        )

    @property
    def has_tool_rules(self) -> bool:
        """Whether tool calls are restricted at all."""
        return self.allow_tools is not None or bool(self.deny_tools)

    def check(self, info: ExchangeInfo) -> None:
        """Refuse (403) an exchange these rules deny; every message of a batch is checked."""
        for method, name in info.calls:
            if _matches(method, self.deny_methods):
                raise Refusal(403, "method_denied", f"method {method!r} is denied on {self.name}")
            if self.allow_methods is not None and not _matches(method, self.allow_methods):
                raise Refusal(
                    403, "method_denied", f"method {method!r} is not allowed on {self.name}"
                )
            if method != "tools/call" or not self.has_tool_rules:
                continue
            if name is None:
                raise Refusal(400, "bad_request", "a tools/call without a tool name")
            decision = self._tools.decide(Action(op="tool_call", tool=name))
            if not decision.allowed:
                raise Refusal(403, "tool_denied", f"{decision.reason} on route {self.name}")


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)
