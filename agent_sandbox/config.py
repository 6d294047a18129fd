"""Which provider to use, and its options.

Each setting comes from the first of: the arguments of the call, ``AGENT_SANDBOX_*`` environment
variables, then ``agent-sandbox.toml`` (or ``[tool.agent-sandbox]`` in ``pyproject.toml``) found
in the current directory or the nearest parent. With nothing configured the provider is ``local``.

TOML shape::

    provider = "docker"          # top level: provider, owner
    [docker]                     # one table per provider: that provider's options
    runtime = "runsc"

Environment: ``AGENT_SANDBOX_PROVIDER``, ``AGENT_SANDBOX_OWNER``, ``AGENT_SANDBOX_CONFIG`` (path of a
TOML file to use instead of searching), and ``AGENT_SANDBOX_<PROVIDER>_<OPTION>`` for options,
e.g. ``AGENT_SANDBOX_LOCAL_ISOLATION=none``. Unknown keys are rejected by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import registry
from .backend import BaseBackend, ProviderOptions
from .errors import ConfigError
from .labels import default_owner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_PROVIDER = "local"
ENV_PREFIX = "AGENT_SANDBOX_"
_TOP_LEVEL = {"provider", "owner"}


@dataclass(frozen=True)
class ResolvedConfig:
    """The outcome of :func:`resolve`: a provider, its validated options, and the owner label."""

    provider: str
    options: ProviderOptions
    owner: str
    backend_class: type[BaseBackend]
    source: str | None
    """The TOML file that contributed, if any."""

    def make_backend(self) -> BaseBackend:
        """A new backend instance with these options."""
        return self.backend_class(self.options)


def find_config_file(
    start: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The TOML file in use: ``$AGENT_SANDBOX_CONFIG``, else the nearest ``agent-sandbox.toml`` or
    ``pyproject.toml`` holding ``[tool.agent-sandbox]``, searching upwards from ``start``."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{ENV_PREFIX}CONFIG names a missing file: {path}")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "agent-sandbox.toml"
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "agent-sandbox" in _read_toml(pyproject).get("tool", {}):
            return pyproject
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _file_settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("agent-sandbox", {})
    known = set(registry.known_names())
    for key, value in data.items():
        if key in _TOP_LEVEL:
            continue
        if key in known and isinstance(value, dict):
            continue
        raise ConfigError(
            f"unknown key {key!r} in {path}; expected 'provider', 'owner' "
            f"or a table named after a provider ({', '.join(sorted(known))})"
        )
    return data


def _env_options(provider: str, environ: Mapping[str, str]) -> dict[str, str]:
    prefix = f"{ENV_PREFIX}{provider.upper()}_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in environ.items()
        if key.startswith(prefix)
    }


def resolve(
    provider: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    owner: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ResolvedConfig:
    """Settle provider, options and owner from arguments, then environment, then TOML.

    Raises:
        ConfigError: an unknown provider, an unknown option key (named), or an invalid value.
        ProviderNotInstalled: the chosen provider's package is missing.
    """
    env = os.environ if environ is None else environ
    path = find_config_file(cwd, env)
    file = _file_settings(path)
    name = provider or env.get(ENV_PREFIX + "PROVIDER") or file.get("provider") or DEFAULT_PROVIDER
    if not isinstance(name, str):
        raise ConfigError(f"provider must be a string, got {name!r}")
    backend_class = registry.load(name)
    merged: dict[str, Any] = {}
    merged.update(file.get(name, {}))
    merged.update(_env_options(name, env))
    merged.update(options or {})
    merged.pop("provider", None)
    try:
        validated = backend_class.Options.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(name, exc), provider=name) from exc
    who = owner or env.get(ENV_PREFIX + "OWNER") or file.get("owner") or default_owner()
    return ResolvedConfig(
        provider=name,
        options=validated,
        owner=str(who),
        backend_class=backend_class,
        source=str(path) if path else None,
    )


def _describe(provider: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<options>"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown option {key!r}")
        else:
            problems.append(f"option {key!r}: {error['msg']}")
    return f"invalid options for provider {provider!r}: " + "; ".join(problems)
