"""Adapters that put any agent-sandbox provider under an agent framework's own sandbox interface.

- :mod:`agent_sandbox.integrations.inspect`: an inspect_ai ``SandboxEnvironment``
  (``pip install "agent-sandbox[inspect]"``).
- :mod:`agent_sandbox.integrations.openai_agents`: a sandbox client for the OpenAI Agents SDK
  (``pip install "agent-sandbox[openai-agents]"``).
- :mod:`agent_sandbox.integrations.deepagents`: a LangChain deepagents sandbox backend
  (``pip install "agent-sandbox[deepagents]"``).

Each module imports its framework when it is imported itself, never before: importing
``agent_sandbox`` pulls in no framework. A module whose framework is missing raises
``ProviderNotInstalled`` (an ``ImportError``) naming the ``pip install`` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .. import ProviderNotInstalled


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ProviderNotInstalled`` naming ``agent-sandbox[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProviderNotInstalled(
            f'this integration needs {module!r}: pip install "agent-sandbox[{extra}]" ({exc})'
        ) from exc
