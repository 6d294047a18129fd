"""The MCP tunnel: private MCP servers reachable over one outbound connection
(extra ``agent-sandbox[tunnel]``).

The :class:`Connector` runs inside the private network and dials out to the :class:`Edge`,
which runs where the agents are and serves each of the connector's :class:`Route` objects to
MCP clients at ``https://EDGE/<route>/mcp``. ``agent-sandbox tunnel`` is the command line.

Names are imported on first use, so ``import agent_sandbox.tunnel`` costs nothing and works
without the extra; using a name without it raises
:class:`~agent_sandbox.errors.ProviderNotInstalled` with the ``pip install`` to run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ProviderNotInstalled

if TYPE_CHECKING:
    from .connector import Connector
    from .edge import Edge
    from .network import DEFAULT_NETWORKS, AddressPolicy, UpstreamRefused
    from .routes import Route
    from .tokens import (
        Caller,
        CallerTokens,
        ConnectorClaims,
        ConnectorKeys,
        generate_signing_key,
        hash_token,
        mint_token,
        new_caller_token,
    )

__all__ = [
    "DEFAULT_NETWORKS",
    "AddressPolicy",
    "Caller",
    "CallerTokens",
    "Connector",
    "ConnectorClaims",
    "ConnectorKeys",
    "Edge",
    "Route",
    "UpstreamRefused",
    "generate_signing_key",
    "hash_token",
    "mint_token",
    "new_caller_token",
]

_HOMES = {
    "Connector": "connector",
    "Edge": "edge",
    "DEFAULT_NETWORKS": "network",
    "AddressPolicy": "network",
    "UpstreamRefused": "network",
    "Route": "routes",
    "Caller": "tokens",
    "CallerTokens": "tokens",
    "ConnectorClaims": "tokens",
    "ConnectorKeys": "tokens",
    "generate_signing_key": "tokens",
    "hash_token": "tokens",
    "mint_token": "tokens",
    "new_caller_token": "tokens",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{home}", __name__)
    except ImportError as exc:
        raise ProviderNotInstalled(
            f'the MCP tunnel needs the tunnel extra ({exc}): pip install "agent-sandbox[tunnel]"'
        ) from exc
    return getattr(module, name)
