"""How the distributions are put together: one version, pinned providers, licences, type marks,
and the static binaries some providers ship, rebuilt byte for byte from their C source.

Building the distributions and checking them (``twine check --strict``, a fresh install that
runs the quickstart) is CI's job: see ``.ci/dist``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from importlib import resources
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

import agent_sandbox

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = sorted(p for p in (ROOT / "providers").iterdir() if (p / "pyproject.toml").is_file())


def _project(folder: Path) -> dict[str, object]:
    data = tomllib.loads((folder / "pyproject.toml").read_text())
    project: dict[str, object] = data["project"]
    return project


def _wheel(folder: Path) -> dict[str, Any]:
    """The provider's ``[tool.hatch.build.targets.wheel]`` table."""
    wheel: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["hatch"]
    return wheel["build"]["targets"]["wheel"]


STATIC = [p for p in PROVIDERS if "source" in _wheel(p).get("hooks", {}).get("custom", {})]
"""The providers whose wheel build compiles a C program (``hatch_build.py``'s ``BuildStatic``)."""


def test_the_version_is_written_once() -> None:
    for folder in [ROOT, *PROVIDERS]:
        project = _project(folder)
        assert "version" not in project, folder
        assert "version" in project["dynamic"], folder  # type: ignore[operator]
    assert distribution("agent-sandbox").version == agent_sandbox.__version__


def test_providers_pin_the_core_to_their_own_version() -> None:
    for folder in PROVIDERS:
        name = str(_project(folder)["name"])
        assert name == f"agent-sandbox-provider-{folder.name}"
        dist = distribution(name)
        assert dist.version == agent_sandbox.__version__
        assert f"agent-sandbox=={agent_sandbox.__version__}" in (dist.requires or [])


def test_every_provider_builds_with_the_same_hook_and_licence() -> None:
    hooks = {(folder / "hatch_build.py").read_bytes() for folder in PROVIDERS}
    assert len(hooks) == 1
    licence = (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in licence
    for folder in PROVIDERS:
        assert (folder / "LICENSE").read_bytes() == licence, folder
        assert (folder / "README.md").is_file(), folder
        assert (folder / f"agent_sandbox_{folder.name}" / "py.typed").is_file(), folder


def test_every_c_program_builds_with_the_same_script() -> None:
    assert [p.name for p in STATIC] == ["docker", "vercel"]
    assert [p for p in PROVIDERS if (p / "build_static.py").exists()] == STATIC
    assert len({(folder / "build_static.py").read_bytes() for folder in STATIC}) == 1


@pytest.mark.parametrize("folder", STATIC, ids=lambda folder: folder.name)
def test_the_shipped_binaries_are_rebuilt_byte_for_byte(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("ziglang", reason="the ziglang compiler is a dev dependency")
    spec = importlib.util.spec_from_file_location("build_static", folder / "build_static.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    wheel = _wheel(folder)
    (package,) = wheel["packages"]
    hook = wheel["hooks"]["custom"]
    built = build.build(folder / hook["source"], hook["targets"], tmp_path)
    assert len(built) == len(hook["targets"])
    for binary in built:
        shipped = resources.files(package) / "_bin" / binary.name
        assert shipped.is_file(), f"no {binary.name} in the package"
        assert binary.read_bytes() == shipped.read_bytes(), f"{binary.name} differs when rebuilt"
        assert binary.read_bytes()[:4] == b"\x7fELF"


def test_the_pytest_plugin_is_opt_in() -> None:
    assert not [ep for ep in entry_points(group="pytest11") if ep.value.startswith("agent_sandbox")]


def test_fake_backend_works_without_pytest() -> None:
    code = """
import sys
sys.modules["pytest"] = None  # importing pytest now fails
import anyio
from agent_sandbox import Sandbox
from agent_sandbox.testing import FakeBackend

async def main():
    async with await Sandbox.create(backend=FakeBackend()) as sb:
        await sb.write_file("a.txt", b"hi")
        print((await sb.read_file("a.txt")).decode())

anyio.run(main)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
