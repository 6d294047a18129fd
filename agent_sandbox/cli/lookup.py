"""Which provider holds a sandbox, and every sandbox of every provider this machine can reach.

Ids are the providers' own (the same ``Sandbox.id`` the Python API gives). Without ``--provider``
an id is looked up on the configured provider first, then on every other installed provider; one
that cannot be reached (not installed, no credentials, engine down) is skipped and named in the
error when the id is found nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from .. import registry
from ..backend import BaseBackend
from ..config import resolve
from ..errors import (
    AuthenticationError,
    ConfigError,
    OperationTimeout,
    ProviderNotInstalled,
    ProviderUnavailable,
    SandboxError,
    SandboxNotFound,
)
from ..models import SandboxInfo

PROVIDER_TIMEOUT_S = 20.0
"""How long one provider may take to answer a lookup or a listing before it counts as unreachable."""

_UNREACHABLE = (
    AuthenticationError,
    ConfigError,
    OperationTimeout,
    ProviderNotInstalled,
    ProviderUnavailable,
)


def candidates(provider: str | None) -> list[str | None]:
    """Providers to ask, in order: the named one alone, else the configured one (``None``) and
    every other installed provider."""
    if provider is not None:
        return [provider]
    try:
        configured: str | None = resolve().provider
    except SandboxError:
        configured = None
    return [None, *(name for name in registry.available() if name != configured)]


def _backend(provider: str | None, options: Mapping[str, Any], first: bool) -> BaseBackend:
    # Options given on the command line are for the provider chosen by flag or config only.
    return resolve(provider, options if first else None).make_backend()


@dataclass
class Search:
    """Providers a lookup or listing could not reach, with the reason."""

    unreachable: dict[str, str] = field(default_factory=dict)

    def note(self, name: str | None, exc: SandboxError) -> None:
        self.unreachable[name or "configured provider"] = exc.code

    def summary(self) -> str:
        return "; ".join(f"{name} ({why})" for name, why in self.unreachable.items())


async def find(
    sandbox_id: str, provider: str | None, options: Mapping[str, Any]
) -> tuple[BaseBackend, SandboxInfo]:
    """The backend holding ``sandbox_id`` (the caller closes it) and the sandbox's info.

    Raises:
        SandboxNotFound: no reachable provider has it (the message names those searched and
            those that could not be reached).
        ConfigError: the provider named or configured is unknown or misconfigured.
    """
    search = Search()
    searched: list[str] = []
    for index, name in enumerate(candidates(provider)):
        try:
            backend = _backend(name, options, index == 0)
        except _UNREACHABLE as exc:
            if index == 0 and isinstance(exc, ConfigError):
                raise
            search.note(name, exc)
            continue
        try:
            with anyio.fail_after(PROVIDER_TIMEOUT_S):
                info = await backend.connect(sandbox_id)
        except SandboxNotFound:
            searched.append(backend.name)
            await backend.aclose()
            if provider is not None:
                raise
            continue
        except (*_UNREACHABLE, TimeoutError) as exc:
            await backend.aclose()
            if provider is not None:
                raise
            search.note(backend.name, _as_error(exc, backend.name))
            continue
        except BaseException:
            await backend.aclose()
            raise
        return backend, info
    message = f"no sandbox {sandbox_id!r} on {', '.join(searched) or 'any provider'}"
    if search.unreachable:
        message += f"; not reachable: {search.summary()}"
    raise SandboxNotFound(message, sandbox_id=sandbox_id, op="lookup")


def _as_error(exc: BaseException, provider: str) -> SandboxError:
    if isinstance(exc, SandboxError):
        return exc
    return OperationTimeout(f"no answer in {PROVIDER_TIMEOUT_S:.0f} s", provider=provider)


async def list_all(
    provider: str | None, options: Mapping[str, Any], labels: Mapping[str, str]
) -> tuple[list[SandboxInfo], Search]:
    """Sandboxes carrying ``labels`` on the named provider, or on every reachable one at once.

    Raises the named (or the configured provider's configuration) error; any other provider that
    cannot be reached is noted in the returned :class:`Search`.
    """
    search = Search()
    found: list[SandboxInfo] = []
    fatal: list[SandboxError] = []

    async def one(index: int, name: str | None) -> None:
        try:
            backend = _backend(name, options, index == 0)
        except _UNREACHABLE as exc:
            if provider is not None or (index == 0 and isinstance(exc, ConfigError)):
                fatal.append(exc)
            else:
                search.note(name, exc)
            return
        try:
            with anyio.fail_after(PROVIDER_TIMEOUT_S):
                found.extend(await backend.list(labels))
        except (*_UNREACHABLE, TimeoutError) as exc:
            error = _as_error(exc, backend.name)
            if provider is not None:
                fatal.append(error)
            else:
                search.note(backend.name, error)
        except SandboxError as exc:
            fatal.append(exc)
        finally:
            await backend.aclose()

    async with anyio.create_task_group() as tg:
        for index, name in enumerate(candidates(provider)):
            tg.start_soon(one, index, name)
    if fatal:
        raise fatal[0]
    found.sort(key=lambda info: (info.provider, info.id))
    return found, search
