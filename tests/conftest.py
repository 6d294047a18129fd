"""Shared set-up of the core tests.

Run as root, the local provider gives each sandbox an unprivileged uid of its own, which must be
able to reach the sandbox's directory (it refuses a root it cannot reach). pytest makes its
temporary directories 0700, and resets its per-user base directory to 0700 whenever a session
starts, which would break another session running at the same time. So as root this session
keeps its temporary directories under a base of its own (removed at the end), and each test's
temporary directories are made searchable, never listable, by other users.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_support import end_sandboxes

_TEMPROOT = "PYTEST_DEBUG_TEMPROOT"
_OURS = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0 or os.environ.get(_TEMPROOT) or config.option.basetemp:
        return
    base = tempfile.mkdtemp(prefix="asb-tests-")
    os.chmod(base, 0o711)
    os.environ[_TEMPROOT] = base
    config.stash[_OURS] = base


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_OURS, None)
    if base is not None:
        os.environ.pop(_TEMPROOT, None)
        shutil.rmtree(base, ignore_errors=True)


def searchable(path: Path, top: Path) -> None:
    """Let other users pass through ``path`` and its parents below ``top``."""
    for directory in (path, *path.parents):
        if directory == top or top not in directory.parents:
            return
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@pytest.fixture(autouse=True)
def _searchable_tmp_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = request.config.stash.get(_OURS, None)
    if base is not None:
        searchable(tmp_path_factory.getbasetemp(), Path(base))
        if "tmp_path" in request.fixturenames:
            searchable(request.getfixturevalue("tmp_path"), Path(base))


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Iterator[Path]:
    """The local provider's state directory for this test. After it, passed or failed, every
    sandbox left there is ended (see :func:`end_sandboxes`)."""
    root = tmp_path / "sandboxes"
    try:
        yield root
    finally:
        end_sandboxes(root)
