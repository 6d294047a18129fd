"""Provider name -> backend class, imported only when asked for.

Providers are found through the ``agent_sandbox.backends`` entry-point group (the same door a
third-party provider uses). The table below adds what we know of the providers this project
ships: where each lives and which ``pip install`` brings it, so a missing one fails with the
exact command to run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from .backend import BaseBackend
from .errors import ConfigError, ProviderNotInstalled

ENTRY_POINT_GROUP = "agent_sandbox.backends"


@dataclass(frozen=True)
class KnownProvider:
    """Where a provider we ship lives and how to install it."""

    target: str
    """``module:Class``."""
    extra: str | None
    """The ``agent-sandbox[extra]`` that installs it; ``None`` when built in."""

    @property
    def install_hint(self) -> str:
        """The command that installs this provider."""
        return (
            f'pip install "agent-sandbox[{self.extra}]"'
            if self.extra
            else "pip install agent-sandbox"
        )


KNOWN_PROVIDERS: dict[str, KnownProvider] = {
    "local": KnownProvider("agent_sandbox.local:LocalBackend", None),
    "docker": KnownProvider("agent_sandbox_docker:DockerBackend", "docker"),
    "e2b": KnownProvider("agent_sandbox_e2b:E2BBackend", "e2b"),
    "daytona": KnownProvider("agent_sandbox_daytona:DaytonaBackend", "daytona"),
    "cloudflare": KnownProvider("agent_sandbox_cloudflare:CloudflareBackend", "cloudflare"),
    "modal": KnownProvider("agent_sandbox_modal:ModalBackend", "modal"),
}


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every provider name this installation can load, mapped to its ``module:Class``."""
    names = {name: known.target for name, known in KNOWN_PROVIDERS.items() if known.extra is None}
    names.update(_entry_point_targets())
    return dict(sorted(names.items()))


def known_names() -> list[str]:
    """Every provider name we know of, installed or not."""
    return sorted(set(KNOWN_PROVIDERS) | set(_entry_point_targets()))


def load(name: str) -> type[BaseBackend]:
    """Import and return the backend class registered as ``name``.

    Raises:
        ProviderNotInstalled: a provider we know of whose package is missing (an ``ImportError``
            whose message says what to install).
        ConfigError: no provider of that name is known.
    """
    known = KNOWN_PROVIDERS.get(name)
    target = _entry_point_targets().get(name) or (known.target if known else None)
    if target is None:
        raise ConfigError(
            f"unknown provider {name!r}; known providers: {', '.join(known_names())}",
            op="load_provider",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = known.install_hint if known else f"install the package that provides {module_name}"
        raise ProviderNotInstalled(
            f"provider {name!r} is not installed ({exc}); run: {hint}", provider=name
        ) from exc
    backend = getattr(module, attr, None)
    if not (isinstance(backend, type) and issubclass(backend, BaseBackend)):
        raise ConfigError(f"{target} is not a BaseBackend subclass", provider=name)
    return backend
