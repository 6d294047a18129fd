"""How the fake E2B runs a sandbox: a small machine of its own, as E2B's Firecracker VM is.

Each fake sandbox is a :class:`fake_vm.VM` over a directory used as the root of its filesystem:
the host's system directories (``/usr``, ``/etc``, ...) are bound read-only into it, everything
else (``/tmp``, ``/home/user``, ``/root``, any new top-level directory) is the sandbox's own. Its
pid 1 reaps orphans, as a VM's init does, and forks the commands envd asks for. So the sandbox's
processes see only each other (``/proc`` is the sandbox's), a process that leaves its parent is
reparented inside the sandbox, pids are the sandbox's own as envd reports them, and killing the
VM ends every process in it.

The file server resolves paths with the same view (:func:`fake_vm.resolve`), following symlinks
inside the sandbox rather than on the host.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

import fake_vm
from fake_vm import User

USERS = {"root": User("root", 0, 0, "/root"), "user": User("user", 1000, 1000, "/home/user")}
DEFAULT_USER = "user"


def prepare_root(root: Path) -> None:
    """Lay out a fresh sandbox root, with a home for each of E2B's users."""
    fake_vm.prepare_root(root, [(user.home, user) for user in USERS.values()])
