"""Serve a sandbox's agent tools over MCP (extra ``agent-sandbox[mcp]``).

:func:`create_server` turns a :class:`~agent_sandbox.tools.ToolKit` into an ``mcp`` SDK server
you can run yourself; :class:`SandboxMCPServer` owns the sandbox's lifetime and serves stdio or
streamable HTTP; ``agent-sandbox mcp`` is the command line (:func:`agent_sandbox.mcp.server.main`).
"""

from __future__ import annotations

from .server import SandboxMCPServer, create_server, main

__all__ = ["SandboxMCPServer", "create_server", "main"]
