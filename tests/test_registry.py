"""The provider registry: the known table, entry points, install hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sandbox import ConfigError, ProviderNotInstalled, registry
from agent_sandbox.local import LocalBackend
from agent_sandbox.registry import ENTRY_POINT_GROUP, KnownProvider
from agent_sandbox.testing import FakeBackend


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real distribution on sys.path declaring a provider through the entry-point group."""
    name = "asbtestprov"
    dist = tmp_path / "site" / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n{name} = agent_sandbox.testing:FakeBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return name


def test_local_is_built_in() -> None:
    assert registry.load("local") is LocalBackend
    assert "local" in registry.available()
    assert registry.available()["local"] == "agent_sandbox.local:LocalBackend"


def test_known_names_include_uninstalled_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.KNOWN_PROVIDERS, "ghost", KnownProvider("ghost_mod:G", "ghost"))
    assert "ghost" in registry.known_names()
    assert "ghost" not in registry.available()


def test_entry_point_provider(installed_plugin: str) -> None:
    assert registry.available()[installed_plugin] == "agent_sandbox.testing:FakeBackend"
    assert installed_plugin in registry.known_names()
    assert registry.load(installed_plugin) is FakeBackend


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'zzz'") as caught:
        registry.load("zzz")
    assert "local" in str(caught.value)


def test_missing_package_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS, "ghost", KnownProvider("asb_ghost_missing:GhostBackend", "ghost")
    )
    with pytest.raises(ProviderNotInstalled, match=r'pip install "agent-sandbox\[ghost\]"'):
        registry.load("ghost")


def test_target_that_is_not_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS,
        "notabackend",
        KnownProvider("agent_sandbox.models:SandboxSpec", None),
    )
    with pytest.raises(ConfigError, match="not a BaseBackend subclass"):
        registry.load("notabackend")
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS, "noattr", KnownProvider("agent_sandbox.models:Nothing", None)
    )
    with pytest.raises(ConfigError, match="not a BaseBackend subclass"):
        registry.load("noattr")


def test_install_hints() -> None:
    assert KnownProvider("m:C", "docker").install_hint == 'pip install "agent-sandbox[docker]"'
    assert KnownProvider("m:C", None).install_hint == "pip install agent-sandbox"
    for name, known in registry.KNOWN_PROVIDERS.items():
        if known.extra is not None:
            assert known.extra == name


def test_shipped_providers_resolve_when_installed() -> None:
    """Each provider we ship either loads, or fails naming its pip extra."""
    for name, known in registry.KNOWN_PROVIDERS.items():
        problem: str | None = None
        try:
            cls = registry.load(name)
        except ProviderNotInstalled as exc:
            problem = str(exc)
        if problem is None:
            assert cls.name == name
        else:
            assert known.install_hint in problem
