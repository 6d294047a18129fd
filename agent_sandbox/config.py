"""Which provider to use, and its options.

Each setting comes from the first of: the arguments of the call, ``AGENT_SANDBOX_*`` environment
variables, the TOML file named by ``$AGENT_SANDBOX_CONFIG``, the user's own config file
(:func:`user_config_file`: ``$XDG_CONFIG_HOME/agent-sandbox/config.toml``, else
``~/.config/agent-sandbox/config.toml``), then the project's ``agent-sandbox.toml`` (or
``[tool.agent-sandbox]`` in ``pyproject.toml``) found in the current directory or the nearest
parent. With nothing configured the provider is ``local``.

A project file comes with whatever repository was cloned, so it is not trusted to weaken the
sandbox: it may choose the provider and set the options a provider declares harmless
(``ProviderOptions.project_settable``: an image, timeouts), never one that could lower
isolation or widen the network (``[local] isolation = "none"``, an engine or API address,
credentials). Such a setting is refused with a :class:`ConfigWarning` naming the key
and the file; put it in code, the environment or the user config file instead.

TOML shape::

    provider = "docker"          # top level: provider, owner
    [docker]                     # one table per provider: that provider's options
    runtime = "runsc"

Environment: ``AGENT_SANDBOX_PROVIDER``, ``AGENT_SANDBOX_OWNER``, ``AGENT_SANDBOX_CONFIG`` (path of a
TOML file to use instead of searching the project), and ``AGENT_SANDBOX_<PROVIDER>_<OPTION>`` for
options, e.g. ``AGENT_SANDBOX_LOCAL_ISOLATION=none``. Unknown keys are rejected by name.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import registry
from .backend import BaseBackend, ProviderOptions
from .errors import ConfigError
from .labels import default_owner

DEFAULT_PROVIDER = "local"
ENV_PREFIX = "AGENT_SANDBOX_"
_TOP_LEVEL = {"provider", "owner"}


class ConfigWarning(UserWarning):
    """A setting found in a project's config file was refused (it could weaken the sandbox)."""


@dataclass(frozen=True)
class ResolvedConfig:
    """The outcome of :func:`resolve`: a provider, its validated options, and the owner label."""

    provider: str
    options: ProviderOptions
    owner: str
    backend_class: type[BaseBackend]
    source: str | None
    """The TOML file that contributed most (the explicit, else user, else project file), if any."""
    sources: tuple[str, ...] = ()
    """Every TOML file read, most trusted first."""
    refused: tuple[str, ...] = field(default=())
    """Settings of a project file that were not applied, as ``key (file)``."""

    def make_backend(self) -> BaseBackend:
        """A new backend instance with these options."""
        return self.backend_class(self.options)


def user_config_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The user's own config file, trusted like the environment:
    ``$XDG_CONFIG_HOME/agent-sandbox/config.toml``, else ``~/.config/agent-sandbox/config.toml``
    (``None`` when neither variable nor a home folder is known)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME")
    if not base:
        home = env.get("HOME") or (os.path.expanduser("~") if environ is None else "")
        if not home or home == "~":
            return None
        base = os.path.join(home, ".config")
    return Path(base) / "agent-sandbox" / "config.toml"


def find_config_file(
    start: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The file in place of the project's: ``$AGENT_SANDBOX_CONFIG``, else the nearest
    ``agent-sandbox.toml`` or ``pyproject.toml`` holding ``[tool.agent-sandbox]``, searching
    upwards from ``start``."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{ENV_PREFIX}CONFIG names a missing file: {path}")
        return path
    return find_project_file(start)


def find_project_file(start: Path | None = None) -> Path | None:
    """The nearest ``agent-sandbox.toml``, or ``pyproject.toml`` holding
    ``[tool.agent-sandbox]``, in ``start`` (default: the current directory) or a parent."""
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


def _untrusted(
    path: Path, settings: dict[str, Any], options_class: type[ProviderOptions], provider: str
) -> tuple[dict[str, Any], list[str]]:
    """A project file's settings without those it may not make; returns them and the refused."""
    kept: dict[str, Any] = {k: v for k, v in settings.items() if k in _TOP_LEVEL}
    refused: list[str] = []
    for name, table in settings.items():
        if name in _TOP_LEVEL or not isinstance(table, dict):
            continue
        if name != provider:
            kept[name] = table
            continue
        # Unknown keys stay, so that validation names them as errors.
        barred = set(options_class.model_fields) - options_class.project_settable - {"provider"}
        refused += [f"{name}.{key}" for key in table if key in barred]
        kept[name] = {k: v for k, v in table.items() if k not in barred}
    for key in refused:
        warnings.warn(
            f"ignoring {key} from the project file {path}: a project's config may not set what "
            "could weaken the sandbox; set it in your code, the environment "
            f"({ENV_PREFIX}{key.upper().replace('.', '_')}) or {_user_file_hint()}",
            ConfigWarning,
            stacklevel=3,
        )
    return kept, [f"{key} ({path})" for key in refused]


def _user_file_hint() -> str:
    path = user_config_file()
    return str(path) if path is not None else "your user config file"


def resolve(
    provider: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    owner: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ResolvedConfig:
    """Settle provider, options and owner from arguments, then the environment, then the
    config files (``$AGENT_SANDBOX_CONFIG``, the user's, the project's — see the module).

    A project file's settings that could weaken the sandbox are refused with a
    :class:`ConfigWarning` and listed in ``ResolvedConfig.refused``.

    Raises:
        ConfigError: an unknown provider, an unknown option key (named), or an invalid value.
        ProviderNotInstalled: the chosen provider's package is missing.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_PREFIX + "CONFIG")
    trusted_paths = [find_config_file(cwd, env)] if explicit else []
    user = user_config_file(environ)
    if user is not None and user.is_file():
        trusted_paths.append(user)
    project = None if explicit else find_project_file(cwd)
    trusted = [(path, _file_settings(path)) for path in trusted_paths if path is not None]
    project_settings = _file_settings(project)

    def first(key: str) -> Any:
        for _, settings in trusted:
            if key in settings:
                return settings[key]
        return project_settings.get(key)

    name = provider or env.get(ENV_PREFIX + "PROVIDER") or first("provider") or DEFAULT_PROVIDER
    if not isinstance(name, str):
        raise ConfigError(f"provider must be a string, got {name!r}")
    backend_class = registry.load(name)
    refused: list[str] = []
    if project is not None:
        project_settings, refused = _untrusted(
            project, project_settings, backend_class.Options, name
        )
    merged: dict[str, Any] = {}
    merged.update(project_settings.get(name, {}))
    for _, settings in reversed(trusted):
        merged.update(settings.get(name, {}))
    merged.update(_env_options(name, env))
    merged.update(options or {})
    merged.pop("provider", None)
    try:
        validated = backend_class.Options.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(name, exc), provider=name) from exc
    who = owner or env.get(ENV_PREFIX + "OWNER") or first("owner") or default_owner()
    read = [str(path) for path, _ in trusted] + ([str(project)] if project else [])
    return ResolvedConfig(
        provider=name,
        options=validated,
        owner=str(who),
        backend_class=backend_class,
        source=read[0] if read else None,
        sources=tuple(read),
        refused=tuple(refused),
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
