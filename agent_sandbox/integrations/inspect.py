"""An inspect_ai sandbox environment backed by any agent-sandbox provider.

Registered through inspect's ``inspect_ai`` entry point under the name ``agent_sandbox``, so a
task only names it::

    Task(..., sandbox=("agent_sandbox", {"provider": "docker", "image": "python:3.12-slim"}))

The config is an :class:`AgentSandboxConfig` (or a dict of its fields, or the path of a JSON,
YAML or TOML file holding them); with none, the provider comes from agent-sandbox's own config
(``AGENT_SANDBOX_*`` variables, ``agent-sandbox.toml``, else ``local``). Each sample gets one
sandbox, labelled with the task's name and destroyed when the sample ends; whatever a crashed
sample left behind is destroyed at task cleanup, and the TTL ends anything else.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path
from typing import Any, Literal, overload

from . import require

require("inspect_ai", "inspect")

from inspect_ai.util import (  # noqa: E402 - after the install check
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    SandboxUnavailableError,
    SandboxUserUnsupportedError,
    sandboxenv,
)
from pydantic import BaseModel  # noqa: E402

from .. import (  # noqa: E402
    ConfigError,
    FileTooLarge,
    ProviderUnavailable,
    Sandbox,
    SandboxNotFound,
    Unsupported,
)
from ._config import INTEGRATION_LABEL, SandboxConfig  # noqa: E402

__all__ = ["AgentSandboxConfig", "AgentSandboxEnvironment"]

TASK_LABEL = "agent-sandbox.inspect.task"
RUN_LABEL = "agent-sandbox.inspect.run"
_RUN_ID = uuid.uuid4().hex
"""Labels this process's sandboxes, so task cleanup touches only what this eval created."""


class AgentSandboxConfig(SandboxConfig):
    """Config of the ``agent_sandbox`` sandbox: ``provider``, its ``options``, and any
    ``SandboxSpec`` field (``image``, ``env``, ``cpus``, ``memory_mib``, ``network``, ...)."""


def _load_config(config: SandboxEnvironmentConfigType | None) -> AgentSandboxConfig:
    if config is None:
        return AgentSandboxConfig()
    if isinstance(config, AgentSandboxConfig):
        return config
    try:
        if isinstance(config, BaseModel):
            return AgentSandboxConfig.model_validate(config.model_dump())
        return AgentSandboxConfig.model_validate(_read_config_file(Path(config)))
    except ValueError as exc:
        raise ConfigError(f"invalid agent_sandbox sandbox config: {exc}") from exc


def _read_config_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read sandbox config {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped,unused-ignore]  # inspect_ai depends on PyYAML

        return yaml.safe_load(text)
    raise ConfigError(f"sandbox config {path}: expected a .json, .toml, .yaml or .yml file")


@sandboxenv(name="agent_sandbox")
class AgentSandboxEnvironment(SandboxEnvironment):
    """One agent-sandbox sandbox as an inspect ``SandboxEnvironment``.

    ``exec`` runs the argv as is (no shell), with ``input`` as stdin; a timeout kills the whole
    process tree and raises ``TimeoutError``; output beyond inspect's exec limit raises
    ``OutputLimitExceededError``. ``read_file``/``write_file`` raise the stdlib errors inspect
    documents (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``), which are
    also agent-sandbox's typed errors. A gone sandbox raises ``SandboxUnavailableError``.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__()
        self.sandbox = sandbox
        """The agent-sandbox handle: its full API (``exec_stream``, ``expose_port``, ...)."""

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        """An :class:`AgentSandboxConfig` from a dict. Raises ``ConfigError`` naming a bad key."""
        try:
            return AgentSandboxConfig.model_validate(config)
        except ValueError as exc:
            raise ConfigError(f"invalid agent_sandbox sandbox config: {exc}") from exc

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        # A bad config file fails the task before any sample runs.
        _load_config(config)

    @classmethod
    async def sample_init(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        metadata: dict[str, str],
    ) -> dict[str, SandboxEnvironment]:
        labels = {INTEGRATION_LABEL: "inspect", TASK_LABEL: _label_value(task_name)}
        labels[RUN_LABEL] = _RUN_ID
        sandbox = await _load_config(config).create(labels)
        return {"default": cls(sandbox)}

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        for environment in environments.values():
            await environment.as_type(AgentSandboxEnvironment).sandbox.destroy()

    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        # Samples destroy their own sandboxes; this catches those a crash or cancellation left.
        if not cleanup:
            return
        settings = _load_config(config)
        labels = {RUN_LABEL: _RUN_ID, TASK_LABEL: _label_value(task_name)}
        options = settings.options or None
        for info in await Sandbox.list(labels, provider=settings.provider, options=options):
            sandbox = await settings.connect(info.id)
            await sandbox.destroy()

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup agent_sandbox [ID]``: destroy one sandbox of the configured
        provider, or every managed one whose TTL has passed."""
        if id is None:
            await Sandbox.sweep()
            return
        try:
            sandbox = await Sandbox.connect(id)
        except SandboxNotFound:
            return
        await sandbox.destroy()

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        """How to run commands in this sandbox from a terminal (``agent-sandbox exec``)."""
        if user is not None:
            raise NotImplementedError("agent-sandbox exec runs as the sandbox's default user")
        return SandboxConnection(
            type="agent_sandbox",
            command=f"agent-sandbox exec --provider {self.sandbox.provider} {self.sandbox.id} -- sh",
        )

    # -- commands ---------------------------------------------------------------------------

    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        # timeout_retry is not honoured: a timed-out command was killed with its whole process
        # tree, and running it again could repeat its side effects.
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        try:
            result = await self.sandbox.exec(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=input,
                timeout=timeout,
                user=user,
                output_limit=limit,
            )
        except Unsupported as exc:
            if user is not None:
                raise SandboxUserUnsupportedError(str(exc)) from exc
            raise
        except (SandboxNotFound, ProviderUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        if result.stdout_truncated or result.stderr_truncated:
            raise OutputLimitExceededError(
                SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR, truncated_output=result.stdout
            )
        if result.exit_code == 126 and "permission denied" in result.stderr.lower():
            # The shell's "found but cannot execute" status, as inspect's docker provider maps it.
            raise PermissionError(f"cannot execute {cmd[0]!r}: {result.stderr.strip()}")
        return ExecResult(
            success=result.exit_code == 0,
            returncode=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
        )

    # -- files ------------------------------------------------------------------------------

    async def write_file(self, file: str, contents: str | bytes) -> None:
        try:
            await self.sandbox.write_file(file, contents)
        except (SandboxNotFound, ProviderUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        try:
            data = await self.sandbox.read_file(
                file, max_bytes=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
            )
        except FileTooLarge as exc:
            raise OutputLimitExceededError(
                SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None
            ) from exc
        except (SandboxNotFound, ProviderUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        # newline="" semantics: bytes decode as they are, \r\n stays \r\n.
        return data.decode("utf-8") if text else data


def _label_value(text: str) -> str:
    """``text`` as a label value every provider accepts (task names may hold any character)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return cleaned[:63] or "task"
