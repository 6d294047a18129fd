"""Where the adapter meets the ``e2b`` SDK: only its public names, imported off the event loop."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_e2b import FakeE2B


def test_the_sdk_surface_the_adapter_relies_on() -> None:
    """Every name the adapter takes from the SDK, public ones all: an SDK release that renames or
    drops one fails here, loudly, rather than at a user's first command."""
    from e2b import AsyncSandbox, SandboxQuery
    from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
    from e2b.envd.client_async import create_rpc_client
    from e2b.envd.process import process_pb
    from e2b.envd.process.process_connect import ProcessClient
    from e2b.envd.rpc import handle_rpc_exception
    from protobuf import Oneof

    for method in ("create", "connect", "get_info", "list", "kill", "pause", "create_snapshot"):
        assert callable(getattr(AsyncSandbox, method)), method
    for method in ("start", "connect", "list", "send_input", "close_stdin"):
        assert callable(getattr(ProcessClient, method)), method
    assert "idempotency_key" in inspect.signature(AsyncSandbox.create).parameters
    assert {"envd_api_url", "connection_config", "files", "get_host"} <= set(dir(AsyncSandbox))
    assert isinstance(KEEPALIVE_PING_HEADER, str)
    assert KEEPALIVE_PING_INTERVAL_SEC > 0
    assert callable(create_rpc_client)
    assert callable(handle_rpc_exception)
    assert SandboxQuery(metadata={"a": "b"}).metadata == {"a": "b"}
    request = process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-c", "true"], envs={}),
        stdin=False,
        tag="asb-0000000000000000",
    )
    assert request.tag == "asb-0000000000000000"
    selector = process_pb.ProcessSelector(selector=Oneof("tag", "asb-0000000000000000"))
    assert process_pb.ConnectRequest(process=selector).process == selector


_SPY = r"""
import asyncio, importlib.abc, sys, threading

first_import = {}

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "e2b" and name not in first_import:
            first_import[name] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Spy())
from agent_sandbox_e2b import E2BBackend, E2BOptions
assert "e2b" not in sys.modules, "importing the provider imported the SDK"

async def main():
    backend = E2BBackend(E2BOptions())
    await backend.list({"asb-boundary": "none"})

asyncio.run(main())
print(first_import["e2b"])
"""


def test_the_sdk_is_imported_off_the_event_loop(fake_e2b: FakeE2B) -> None:
    """The first use imports the SDK (a third of a second of module loading) in a worker
    thread: the event loop keeps serving other tasks meanwhile."""
    done = subprocess.run(
        [sys.executable, "-c", _SPY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **fake_e2b.env()},
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() not in ("", "MainThread"), done.stdout


@pytest.mark.parametrize("module", ["backend", "_process"])
def test_no_private_sdk_attribute_is_used(module: str) -> None:
    """The adapter reads no underscore attribute of the SDK's sandbox (``_envd_version`` was
    one): only its public surface, checked above."""
    import agent_sandbox_e2b
    from e2b import AsyncSandbox

    source = (Path(agent_sandbox_e2b.__file__).parent / f"{module}.py").read_text()
    private = [n for n in dir(AsyncSandbox) if n.startswith("_") and not n.startswith("__")]
    assert "_envd_version" in private  # what the check is about is still there to check
    assert [name for name in private if f".{name}" in source] == []
