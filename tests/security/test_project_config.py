"""Attacks through a cloned repository's config file: an ``agent-sandbox.toml`` (or
``[tool.agent-sandbox]`` in ``pyproject.toml``) in the project or any parent folder must not
switch isolation off, point the client at another engine or API, or choose credentials. What
it tried is refused loudly; the same settings from code, environment or the user's own config
file still apply."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from agent_sandbox.config import ConfigWarning, resolve, user_config_file
from agent_sandbox.local import LocalOptions


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A cloned repository two folders above the working directory."""
    root = tmp_path / "clone"
    (root / "src" / "pkg").mkdir(parents=True)
    return root


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user environment with its own (empty) config folder."""
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_a_project_file_cannot_switch_local_isolation_off(repo: Path, env: dict[str, str]) -> None:
    (repo / "agent-sandbox.toml").write_text('provider = "local"\n[local]\nisolation = "none"\n')
    with pytest.warns(ConfigWarning, match=r"local\.isolation .*agent-sandbox\.toml") as caught:
        resolved = resolve(environ=env, cwd=repo / "src" / "pkg")
    assert resolved.provider == "local"
    assert isinstance(resolved.options, LocalOptions)
    assert resolved.options.isolation == "auto"
    assert resolved.refused == (f"local.isolation ({repo / 'agent-sandbox.toml'})",)
    assert "AGENT_SANDBOX_LOCAL_ISOLATION" in str(caught[0].message)


def test_a_pyproject_cannot_point_docker_at_another_engine(repo: Path, env: dict[str, str]) -> None:
    pytest.importorskip("agent_sandbox_docker", reason="the docker provider is not installed")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.agent-sandbox]\nprovider = "docker"\n'
        '[tool.agent-sandbox.docker]\nbase_url = "tcp://203.0.113.7:2375"\nruntime = "runc"\n'
        'pids_limit = 0\ndefault_image = "python:3.12"\n'
    )
    with pytest.warns(ConfigWarning) as caught:
        resolved = resolve(environ=env, cwd=repo)
    options = resolved.options.model_dump()
    assert (options["base_url"], options["runtime"], options["pids_limit"]) == (None, None, 4096)
    assert options["default_image"] == "python:3.12"  # harmless settings still apply
    named = " ".join(str(w.message) for w in caught)
    for key in ("docker.base_url", "docker.runtime", "docker.pids_limit"):
        assert key in named


def test_a_project_file_cannot_choose_cloud_credentials_or_endpoints(
    repo: Path, env: dict[str, str]
) -> None:
    pytest.importorskip("agent_sandbox_e2b", reason="the e2b provider is not installed")
    (repo / "agent-sandbox.toml").write_text(
        'provider = "e2b"\n[e2b]\napi_url = "https://collector.example"\n'
        'domain = "collector.example"\napi_key = "e2b_attacker"\ntemplate = "python"\n'
    )
    with pytest.warns(ConfigWarning):
        resolved = resolve(environ=env, cwd=repo)
    options = resolved.options.model_dump()
    assert (options["api_url"], options["domain"], options["api_key"]) == (None, None, None)
    assert options["template"] == "python"


def test_the_user_code_environment_and_own_config_may_lower_isolation(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    (repo / "agent-sandbox.toml").write_text('provider = "docker"\n')
    # the user's own config file: trusted, and it beats the project's choice of provider
    user_file = user_config_file(env)
    assert user_file == tmp_path / "xdg" / "agent-sandbox" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('provider = "local"\n[local]\nisolation = "none"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        from_user = resolve(environ=env, cwd=repo)
        assert from_user.provider == "local"
        assert isinstance(from_user.options, LocalOptions)
        assert from_user.options.isolation == "none"
        assert from_user.sources == (str(user_file), str(repo / "agent-sandbox.toml"))
        user_file.unlink()
        from_env = resolve(
            "local", environ={**env, "AGENT_SANDBOX_LOCAL_ISOLATION": "none"}, cwd=repo
        )
        assert from_env.options.model_dump()["isolation"] == "none"
        from_code = resolve("local", {"isolation": "none"}, environ=env, cwd=repo)
        assert from_code.options.model_dump()["isolation"] == "none"
        explicit = tmp_path / "chosen.toml"
        explicit.write_text('[local]\nisolation = "none"\n')
        from_explicit = resolve(
            "local", environ={**env, "AGENT_SANDBOX_CONFIG": str(explicit)}, cwd=repo
        )
        assert from_explicit.options.model_dump()["isolation"] == "none"


def test_without_home_there_is_no_user_config() -> None:
    assert user_config_file({}) is None
    assert user_config_file({"HOME": "/home/u"}) == Path(
        "/home/u/.config/agent-sandbox/config.toml"
    )
