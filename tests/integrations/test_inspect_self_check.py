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

from frameworks_testkit import LOCAL_ROOT, config
from inspect_ai.util import SandboxEnvironment
from inspect_ai.util._sandbox.self_check import *  # noqa: F403

from agent_sandbox.integrations.inspect import (
    AgentSandboxConfig,
    AgentSandboxEnvironment,
)
from agent_sandbox.local import LocalBackend, LocalOptions

pytestmark = pytest.mark.anyio

_PERMISSION_CHECKS = (
    "test_read_file_not_allowed",
    "test_write_text_file_without_permissions",
    "test_write_binary_file_without_permissions",
)
# File operations act as the sandbox's user: unjailed, that is the caller, and root ignores
# permission bits; in the bubblewrap jail it is an unprivileged user.
_LOCAL_USER_IS_ROOT = (
    os.geteuid() == 0 and LocalBackend(LocalOptions(root=LOCAL_ROOT)).isolation == "none"
)
_LOCAL_ROOT = (
    "without bubblewrap, local commands and file operations run as the caller, here root, "
    "whom a file's permission bits do not stop"
)
_DOCKER_ROOT = "the image's default user is root, whom a file's permission bits do not stop"

KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "local": {
        "test_exec_as_user": "local commands all run as one unprivileged uid; `user` is Unsupported",
        **dict.fromkeys(_PERMISSION_CHECKS if _LOCAL_USER_IS_ROOT else (), _LOCAL_ROOT),
    },
    "docker": dict.fromkeys(_PERMISSION_CHECKS, _DOCKER_ROOT),
    # the same image with a non-root default user: every check passes
    "docker-as-nobody": {},
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["local", "docker", "docker-as-nobody"])
async def shared_env(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, SandboxEnvironment]]:
    provider: str = request.param
    if provider == "docker-as-nobody":
        spec = config("docker", user="nobody", workdir="/tmp")
    else:
        spec = config(provider)
    settings = AgentSandboxConfig.model_validate(spec)
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
