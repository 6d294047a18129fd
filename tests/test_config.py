"""Provider choice and options: arguments beat AGENT_SANDBOX_* variables, which beat TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sandbox import ConfigError, ProviderNotInstalled, registry
from agent_sandbox.config import find_config_file, resolve
from agent_sandbox.labels import default_owner
from agent_sandbox.local import LocalBackend
from agent_sandbox.registry import KnownProvider
from agent_sandbox.testing import FakeBackend, FakeOptions


@pytest.fixture(autouse=True)
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``fake`` a known built-in provider name for these tests."""
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS, "fake", KnownProvider("agent_sandbox.testing:FakeBackend", None)
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project directory (no config file in it or, as checked, above it)."""
    root = tmp_path / "project"
    root.mkdir()
    assert find_config_file(root, {}) is None, "a config file above the temp dir spoils the test"
    return root


def test_defaults_to_local(project: Path) -> None:
    resolved = resolve(environ={}, cwd=project)
    assert resolved.provider == "local"
    assert resolved.backend_class is LocalBackend
    assert resolved.source is None
    assert resolved.owner == default_owner()
    assert isinstance(resolved.make_backend(), LocalBackend)


def test_provider_precedence_arguments_env_toml(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text('provider = "fake"\n')
    assert resolve(environ={}, cwd=project).provider == "fake"
    env = {"AGENT_SANDBOX_PROVIDER": "local"}
    assert resolve(environ=env, cwd=project).provider == "local"
    assert resolve("fake", environ=env, cwd=project).provider == "fake"


def test_option_precedence_arguments_env_toml(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text(
        'provider = "fake"\n[fake]\nworkdir = "/from-toml"\nworld = "toml-world"\n'
    )
    from_file = resolve(environ={}, cwd=project)
    assert isinstance(from_file.options, FakeOptions)
    assert (from_file.options.workdir, from_file.options.world) == ("/from-toml", "toml-world")
    env = {"AGENT_SANDBOX_FAKE_WORKDIR": "/from-env"}
    from_env = resolve(environ=env, cwd=project)
    assert isinstance(from_env.options, FakeOptions)
    assert (from_env.options.workdir, from_env.options.world) == ("/from-env", "toml-world")
    from_args = resolve(options={"workdir": "/from-args"}, environ=env, cwd=project)
    assert isinstance(from_args.options, FakeOptions)
    assert (from_args.options.workdir, from_args.options.world) == ("/from-args", "toml-world")
    backend = from_args.make_backend()
    assert isinstance(backend, FakeBackend)
    assert backend.fake_options.workdir == "/from-args"


def test_owner_precedence(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text('owner = "toml-owner"\n')
    assert resolve(environ={}, cwd=project).owner == "toml-owner"
    env = {"AGENT_SANDBOX_OWNER": "env-owner"}
    assert resolve(environ=env, cwd=project).owner == "env-owner"
    assert resolve(owner="arg-owner", environ=env, cwd=project).owner == "arg-owner"


def test_pyproject_tool_table_is_found_from_a_subdirectory(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.agent-sandbox]\nprovider = "fake"\n'
        '[tool.agent-sandbox.fake]\nworkdir = "/py"\n'
    )
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    resolved = resolve(environ={}, cwd=deep)
    assert resolved.provider == "fake"
    assert isinstance(resolved.options, FakeOptions)
    assert resolved.options.workdir == "/py"
    assert resolved.source == str(project / "pyproject.toml")


def test_pyproject_without_the_table_is_passed_over(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text('provider = "fake"\n')
    inner = project / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    assert resolve(environ={}, cwd=inner).source == str(project / "agent-sandbox.toml")


def test_agent_sandbox_toml_wins_over_pyproject_in_the_same_directory(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.agent-sandbox]\nprovider = "local"\n')
    (project / "agent-sandbox.toml").write_text('provider = "fake"\n')
    assert resolve(environ={}, cwd=project).provider == "fake"


def test_explicit_config_file(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('provider = "fake"\n')
    (project / "agent-sandbox.toml").write_text('provider = "local"\n')
    env = {"AGENT_SANDBOX_CONFIG": str(elsewhere)}
    resolved = resolve(environ=env, cwd=project)
    assert (resolved.provider, resolved.source) == ("fake", str(elsewhere))
    with pytest.raises(ConfigError, match="missing file"):
        resolve(environ={"AGENT_SANDBOX_CONFIG": str(tmp_path / "nope.toml")}, cwd=project)


def test_unknown_option_is_named(project: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'wrold'") as caught:
        resolve("fake", {"wrold": "x"}, environ={}, cwd=project)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        resolve("fake", environ={"AGENT_SANDBOX_FAKE_BOGUS": "1"}, cwd=project)
    (project / "agent-sandbox.toml").write_text("[fake]\nimage_size = 3\n")
    with pytest.raises(ConfigError, match="unknown option 'image_size'"):
        resolve("fake", environ={}, cwd=project)


def test_bad_option_value_is_reported(project: Path) -> None:
    with pytest.raises(ConfigError, match="option 'isolation'"):
        resolve("local", {"isolation": "chroot"}, environ={}, cwd=project)


def test_unknown_top_level_key_is_named(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text('provder = "fake"\n')
    with pytest.raises(ConfigError, match="unknown key 'provder'"):
        resolve(environ={}, cwd=project)


def test_invalid_toml_is_a_config_error(project: Path) -> None:
    (project / "agent-sandbox.toml").write_text("provider = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve(environ={}, cwd=project)


def test_unknown_provider(project: Path) -> None:
    with pytest.raises(ConfigError, match="unknown provider 'nosuch'") as caught:
        resolve("nosuch", environ={}, cwd=project)
    assert "local" in str(caught.value)
    with pytest.raises(ConfigError, match="unknown provider"):
        resolve(environ={"AGENT_SANDBOX_PROVIDER": "nosuch"}, cwd=project)


def test_missing_extra_names_the_pip_command(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS,
        "ghost",
        KnownProvider("agent_sandbox_ghost_not_installed:GhostBackend", "ghost"),
    )
    with pytest.raises(ProviderNotInstalled) as caught:
        resolve("ghost", environ={}, cwd=project)
    assert isinstance(caught.value, ImportError)
    assert 'pip install "agent-sandbox[ghost]"' in str(caught.value)
    assert caught.value.provider == "ghost"
    assert isinstance(caught.value.__cause__, ImportError)
