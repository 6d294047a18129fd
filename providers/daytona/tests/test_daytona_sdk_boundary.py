"""Where the adapter meets the ``daytona`` SDK: only its public names, imported off the event
loop."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_daytona import FakeDaytona


def test_the_sdk_surface_the_adapter_relies_on() -> None:
    """Every name the adapter takes from the SDK, public ones all: an SDK release that renames or
    drops one fails here, loudly, rather than at a user's first command."""
    import daytona as d

    for name in ("create", "get", "list", "close"):
        assert callable(getattr(d.AsyncDaytona, name)), name
    for name in ("delete", "get_preview_link", "create_signed_preview_url", "create_snapshot",
                 "pause", "start"):  # fmt: skip
        assert callable(getattr(d.AsyncSandbox, name)), name
    # The sandbox's ``process`` and ``fs`` (classes the SDK does not export by name).
    from daytona._async.filesystem import AsyncFileSystem
    from daytona._async.process import AsyncProcess

    for name in ("create_session", "execute_session_command", "get_session_command_logs_async",
                 "get_session_command", "send_session_command_input", "delete_session",
                 "get_session", "list_sessions", "exec"):  # fmt: skip
        assert callable(getattr(AsyncProcess, name)), name
    for name in ("create_folder", "download_file_stream", "upload_file_stream",
                 "set_file_permissions", "get_file_info", "list_files", "delete_file"):  # fmt: skip
        assert callable(getattr(AsyncFileSystem, name)), name
    fields = set(d.SessionExecuteRequest.model_fields)
    assert {"command", "run_async", "suppress_input_echo"} <= fields
    assert "timeout" in inspect.signature(d.AsyncDaytona.create).parameters
    for error in ("DaytonaFileAccessDeniedError", "DaytonaFileNotFoundError",
                  "DaytonaInvalidFilePathError", "DaytonaTimeoutError", "DaytonaConnectionError"):  # fmt: skip
        assert issubclass(getattr(d, error), d.DaytonaError), error
    for params in ("CreateSandboxFromSnapshotParams", "CreateSandboxFromImageParams"):
        fields = set(getattr(d, params).model_fields)
        assert {"name", "labels", "env_vars", "public", "auto_stop_interval",
                "auto_delete_interval", "network_block_all", "network_allow_list"} <= fields  # fmt: skip
    assert {"cpu", "memory", "disk"} <= set(d.Resources.__init__.__code__.co_varnames)
    assert d.ListSandboxesQuery(labels={"a": "b"}).labels == {"a": "b"}


_SPY = r"""
import asyncio, importlib.abc, sys, threading

first_import = {}

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "daytona" and name not in first_import:
            first_import[name] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Spy())
from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
assert "daytona" not in sys.modules, "importing the provider imported the SDK"

async def main():
    backend = DaytonaBackend(DaytonaOptions(api_url=sys.argv[1]))
    await backend.list({"asb-boundary": "none"})
    await backend.aclose()

asyncio.run(main())
print(first_import["daytona"])
"""


def test_the_sdk_is_imported_off_the_event_loop(fake_daytona: FakeDaytona) -> None:
    """The first use imports the SDK (over a second of module loading) in a worker thread: the
    event loop keeps serving other tasks meanwhile."""
    done = subprocess.run(
        [sys.executable, "-c", _SPY, fake_daytona.api_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DAYTONA_API_KEY": fake_daytona.api_key},
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() not in ("", "MainThread"), done.stdout


@pytest.mark.parametrize("module", ["backend", "_process"])
def test_no_private_sdk_attribute_is_used(module: str) -> None:
    """The adapter reaches nothing private of the SDK (``_api_client``, a generated client's
    ``_get_session_command_logs_serialize``, the toolbox's internal HTTP session were): only its
    public surface, checked above."""
    import agent_sandbox_daytona
    from daytona import AsyncDaytona, AsyncSandbox
    from daytona._async.process import AsyncProcess

    source = (Path(agent_sandbox_daytona.__file__).parent / f"{module}.py").read_text()
    private = {
        n
        for cls in (AsyncDaytona, AsyncSandbox, AsyncProcess)
        for n in dir(cls)
        if n.startswith("_") and not n.startswith("__")
    } | {"_api_client", "_get_session_command_logs_serialize", "http_session", "_toolbox_api"}
    assert [name for name in sorted(private) if f".{name}" in source] == []
