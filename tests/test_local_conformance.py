"""The whole conformance suite against LocalBackend, jailed with bubblewrap and without it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_support import end_sandboxes

from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import probe
from agent_sandbox.testing import ConformanceSuite


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()
HAVE_BWRAP = BWRAP_PROBLEM is None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason=BWRAP_PROBLEM or "")


@pytest.fixture
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("local-root")
    root.chmod(0o711)  # as root, the sandboxes' own uids pass through it
    try:
        yield root
    finally:
        # Every test destroys what it made; end whatever an aborted test left behind.
        end_sandboxes(root)
        shutil.rmtree(root, ignore_errors=True)


@needs_bwrap
class TestLocalBwrapConformance(ConformanceSuite):
    @pytest.fixture
    def sandbox_backend(self, local_root: Path) -> LocalBackend:
        return LocalBackend(LocalOptions(root=local_root, isolation="bwrap"))


class TestLocalNoIsolationConformance(ConformanceSuite):
    @pytest.fixture
    def sandbox_backend(self, local_root: Path) -> LocalBackend:
        return LocalBackend(LocalOptions(root=local_root, isolation="none"))
