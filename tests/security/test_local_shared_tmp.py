"""A local sandbox without a jail must not hand its files to a later sandbox through the host's
shared world-writable directories (``/tmp``, ``/var/tmp``, ``/dev/shm``).

Run by root, each sandbox gets an unprivileged uid of its own, and uids go back to the pool when
sandboxes end. With ``isolation="none"`` a command can leave files in the host's ``/tmp``; if a
later sandbox were given the same uid it could read them. With bubblewrap ``/tmp`` is the
sandbox's private directory, ``/dev`` is the jail's own and the rest of the system is read-only,
so only ``none`` is attacked here.
"""

# ruff: noqa: ASYNC240
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions, _user

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a client running as root"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def token() -> Iterator[str]:
    """A name part of this test's own; whatever carries it in the shared directories is
    removed after the test, whether the provider removed it or not."""
    tag = f"asb-shared-{secrets.token_hex(6)}"
    yield tag
    for base in _user.SHARED_DIRS:
        for path in Path(base).glob(f"{tag}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


async def test_a_later_sandbox_with_the_same_uid_cannot_read_what_an_earlier_one_left(
    tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    # A world-writable directory of someone else's inside /tmp (as /tmp/.X11-unix is), where
    # the sandbox can move files out of sight of a look at /tmp's top level.
    shared = Path("/tmp", f"{token}-shared")
    shared.mkdir()
    shared.chmod(0o1777)
    # What the host keeps beside it: links the sandbox leaves must never lead a clean-up here.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("the host's")
    victim.chmod(0o755)
    left = [
        f"/tmp/{token}-file",
        f"/var/tmp/{token}-file",
        f"/dev/shm/{token}-file",
        f"/tmp/{token}-dir/deep/file",
        f"{shared}/moved",
    ]
    first = await asb.Sandbox.create(backend=backend)
    uid = int(first.info.metadata["uid"])
    try:
        script = (
            f"mkdir -p /tmp/{token}-dir/deep && "
            + " && ".join(f"echo secret > {path} && chmod 644 {path}" for path in left)
            + f" && ln -s {victim} /tmp/{token}-link && ln -s {victim} /tmp/{token}-dir/link"
            + f" && ln -s {victim}/keep.txt /dev/shm/{token}-link"
        )
        made = await first.exec(script)
        assert made.exit_code == 0, made.stderr
        assert all(os.stat(path).st_uid == uid for path in left)
    finally:
        await first.destroy()
    # The next sandbox is given the same uid (the pool reduced to that one uid).
    monkeypatch.setattr(_user, "candidates", lambda: range(uid, uid + 1))
    async with await asb.Sandbox.create(backend=backend) as second:
        assert int(second.info.metadata["uid"]) == uid
        read = await second.exec(" ; ".join(f"cat {path}" for path in left))
        assert "secret" not in read.stdout
    assert not [path for path in left if os.path.lexists(path)]
    assert not list(Path("/tmp").glob(f"{token}-link")) + list(Path("/dev/shm").glob(f"{token}*"))
    assert (victim / "keep.txt").read_text() == "the host's"  # no link was followed
    assert shared.is_dir()  # someone else's directory stays


async def test_a_uid_owning_files_in_tmp_is_never_given_to_a_sandbox(
    tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever left them (a client killed before it could clean up), files in ``/tmp`` keep
    their uid out of the pool."""
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    uid = _user.probe_uid()
    stale = Path("/tmp", f"{token}-stale")
    stale.write_text("secret")
    os.chown(stale, uid, uid)
    monkeypatch.setattr(_user, "candidates", lambda: range(uid, uid + 1))
    with pytest.raises(asb.ConfigError, match="no free uid"):
        await asb.Sandbox.create(backend=backend)
    assert stale.read_text() == "secret"  # refused, not deleted: nothing claimed that uid
