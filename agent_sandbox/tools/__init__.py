"""Agent tools run in a sandbox: ``bash``, ``read``, ``write``, ``edit``, ``glob``, ``grep`` and
custom Python tools, with schemas for the Anthropic Messages API, OpenAI function calling and MCP.

    from agent_sandbox import Sandbox
    from agent_sandbox.tools import ToolKit

    async with await Sandbox.create() as sb:
        toolkit = ToolKit(sb)
        result = await toolkit.run("bash", {"command": "ls"})
"""

from ._schema import Tool, ToolResult, clean_schema
from .toolkit import DEFAULT_OUTPUT_BUDGET, ToolKit

__all__ = ["DEFAULT_OUTPUT_BUDGET", "Tool", "ToolKit", "ToolResult", "clean_schema"]
