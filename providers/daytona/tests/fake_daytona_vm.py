"""How the fake Daytona runs a sandbox: a container of its own whose PID 1 reaps orphans.

Daytona runs each sandbox as a container whose entrypoint, PID 1, is the daemon (it reaps
orphaned processes: ``apps/daemon/pkg/childreap``); the daemon and every session shell it starts
run as the image's user (the runner sets no ``User``: ``apps/runner/pkg/docker/container_configs.go``),
``daytona`` in Daytona's images. A :class:`fake_vm.VM` gives a fake sandbox the same shape:
private pid and mount namespaces (and a loopback-only network with ``networkBlockAll``) whose init
forks the processes the fake daemon asks for and reaps every orphan, over a directory holding the
sandbox's own files (``/home/daytona``, ``/tmp``, any new top-level directory) with the host's
system directories bound read-only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

import fake_vm
from fake_vm import User

UID = GID = 1000
HOME = "/home/daytona"
USER = User("daytona", UID, GID, HOME)
"""The image's user: the daemon's, and every command's."""
USERS = (User("root", 0, 0, "/root"), USER)


def prepare_root(root: Path) -> None:
    """Lay out a fresh sandbox root with the image user's home."""
    fake_vm.prepare_root(root, [(HOME, USER)])
