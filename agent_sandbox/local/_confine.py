"""What every command of a local sandbox starts through: its cgroups, rlimits and host user.

Outside the jail, in this order: an ``sh`` that joins the sandbox's cgroups and sets its
address-space limit (joining needs our privileges, so it comes first), ``prlimit`` for its
process count when that count is bound to the sandbox's own uid, and ``setpriv`` dropping to
that uid (a root client only, see ``_user``). Inside the jail: ``prlimit`` for the process count
when nothing outside can bound it (a client that is not root, without a pids cgroup).

Process counts (threads included) are limited, best first, by the cgroup ``pids`` controller
(the whole sandbox, v1 or v2), by ``RLIMIT_NPROC`` on the sandbox's dedicated uid (the whole
sandbox: the kernel counts per uid), or by ``RLIMIT_NPROC`` set inside a jail (Linux 5.14+
counts it per user namespace, so it bounds each command's jail, not the client's other
processes). A client that is not root, without bubblewrap and without a writable pids cgroup,
has no limit: ``RLIMIT_NPROC`` would count all of its own processes.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Literal

from . import _cgroup, _user

PidsBy = Literal["cgroup", "uid", "jail"]


@dataclass(frozen=True)
class Confinement:
    """The limits and host user of one sandbox, as stored in its state."""

    uid: int | None = None
    """Host uid (and gid) of the sandbox's commands; ``None``: the client's own."""
    cgroups: list[str] = field(default_factory=list)
    rlimit_as: int | None = None
    """Address-space limit in bytes, where no memory cgroup is available."""
    nproc: int | None = None
    """``RLIMIT_NPROC`` of the dedicated uid (set before dropping to it)."""
    nproc_jail: int | None = None
    """``RLIMIT_NPROC`` set inside each jail."""

    def outer(self) -> list[str]:
        """argv prefix before the jail (or the command, without one)."""
        argv: list[str] = []
        lines = []
        if self.cgroups:
            lines.append(_cgroup.join_script(self.cgroups))
        if self.rlimit_as is not None:
            lines.append(f"ulimit -v {self.rlimit_as // 1024}")
        if lines:
            argv += ["/bin/sh", "-c", " && ".join([*lines, 'exec "$@"']), "sh", *self.cgroups]
        if self.nproc is not None:
            argv += _prlimit(self.nproc)
        if self.uid is not None:
            argv += _user.drop_argv(self.uid, self.uid)
        return argv

    def inner(self) -> list[str]:
        """argv prefix of the command inside the jail."""
        return _prlimit(self.nproc_jail) if self.nproc_jail is not None else []


def _prlimit(count: int) -> list[str]:
    prlimit = find_prlimit()
    assert prlimit is not None  # checked by pids_by() when the sandbox was made
    return [prlimit, f"--nproc={count}:{count}", "--"]


@functools.lru_cache(maxsize=1)
def find_prlimit() -> str | None:
    """``prlimit`` (util-linux) where a jail finds it too (under ``/usr``), if installed."""
    found = shutil.which("prlimit")
    if found is None:
        return None
    real = os.path.realpath(found)
    return real if real.startswith("/usr/") else None


def _nproc_per_userns() -> bool:
    """Linux 5.14+ counts ``RLIMIT_NPROC`` per user namespace (ucounts)."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= (5, 14)


def pids_by(
    hierarchy: _cgroup.Hierarchy | None, isolation: Literal["bwrap", "none"]
) -> tuple[PidsBy | None, str]:
    """How a process-count limit is enforced here, and a sentence saying so (or why not)."""
    if hierarchy is not None and hierarchy.pids:
        return "cgroup", f"cgroup v{hierarchy.version} pids controller, for the whole sandbox"
    if find_prlimit() is None:
        return None, "no writable pids cgroup, and prlimit (util-linux) is not installed"
    if _user.dedicated():
        return "uid", "RLIMIT_NPROC of the sandbox's own uid, for the whole sandbox"
    if isolation == "bwrap" and _nproc_per_userns():
        return "jail", "RLIMIT_NPROC inside each command's jail (per command, not per sandbox)"
    return None, (
        "no writable pids cgroup, and RLIMIT_NPROC would count all of your own processes"
        + ("" if isolation == "none" else " on this kernel (before Linux 5.14)")
    )
