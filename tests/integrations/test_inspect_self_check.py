"""inspect_ai's own sandbox battery (``self_check``) against the agent_sandbox environment.

One sandbox per provider serves every check (as inspect's own runner shares one per module).
Checks that are wrong by design for a provider are expected failures, with the reason; they are
listed in docs/integrations/inspect.md.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("inspect_ai", reason="the inspect extra needs Python 3.11+")

from frameworks_testkit import config
from inspect_ai.util import SandboxEnvironment
from inspect_ai.util._sandbox.self_check import *  # noqa: F403

from agent_sandbox.integrations.inspect import (
    AgentSandboxConfig,
    AgentSandboxEnvironment,
)

pytestmark = pytest.mark.anyio

_AS_ROOT = os.geteuid() == 0
_PERMISSION_CHECKS = (
    "test_read_file_not_allowed",
    "test_write_text_file_without_permissions",
    "test_write_binary_file_without_permissions",
)
_LOCAL_ROOT = (
    "local file operations run on the host with the caller's rights; as root "
    "(CAP_DAC_OVERRIDE) a file's permission bits do not stop them"
)
_DOCKER_ROOT = "the image's default user is root, whom a file's permission bits do not stop"
_DOCKER_DIRECTORY = (
    "provider bug: the docker provider's write_file (put_archive) replaces an existing "
    "directory with the file instead of raising IsADirectory"
)

KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "local": {
        "test_exec_as_user": "local commands all run as one unprivileged uid; `user` is Unsupported",
        **dict.fromkeys(_PERMISSION_CHECKS if _AS_ROOT else (), _LOCAL_ROOT),
    },
    "docker": {
        **dict.fromkeys(_PERMISSION_CHECKS, _DOCKER_ROOT),
        "test_write_text_file_is_directory": _DOCKER_DIRECTORY,
        "test_write_binary_file_is_directory": _DOCKER_DIRECTORY,
    },
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["local", "docker"])
async def shared_env(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, SandboxEnvironment]]:
    provider: str = request.param
    settings = AgentSandboxConfig.model_validate(config(provider))
    environments = await AgentSandboxEnvironment.sample_init("self_check", settings, {})
    try:
        yield provider, environments["default"]
    finally:
        await AgentSandboxEnvironment.sample_cleanup("self_check", settings, environments, False)


@pytest.fixture
def sandbox_env(
    shared_env: tuple[str, SandboxEnvironment], request: pytest.FixtureRequest
) -> SandboxEnvironment:
    provider, env = shared_env
    reason = KNOWN_FAILURES[provider].get(request.node.originalname)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    return env
