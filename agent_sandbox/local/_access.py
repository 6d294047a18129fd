"""Whether the sandbox's user may read, write or search a file: the kernel's rule, emulated.

Local file operations run in this process, which may hold rights the sandbox's user lacks (root,
or the jail's user mapped onto this process's uid but stripped of every capability). Each
operation opens the file or directory first and decides here, from the opened inode's own
``fstat``, whether the sandbox's user could do the same, so a path swapped meanwhile cannot change
the answer. The user is the sandbox's own unprivileged uid when this process is root (see
``_user``), else the jail's user with bubblewrap (:func:`_jail.host_user`), and this process
itself without it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from . import _jail

READ, WRITE, SEARCH = 4, 2, 1


@dataclass(frozen=True)
class User:
    """The host identity a sandbox's commands run with."""

    uid: int
    gid: int
    groups: frozenset[int]
    privileged: bool
    """Root with its capabilities: permission bits bind it not (execute bits aside)."""

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether this user may ``want`` (``READ | WRITE | SEARCH`` bits) the inode ``st``."""
        mode = st.st_mode
        if self.privileged:
            return not (want & SEARCH) or stat.S_ISDIR(mode) or bool(mode & 0o111)
        if st.st_uid == self.uid:
            granted = (mode >> 6) & 7
        elif st.st_gid in self.groups:
            granted = (mode >> 3) & 7
        else:
            granted = mode & 7
        return granted & want == want

    def may_replace(self, directory: os.stat_result, entry: os.stat_result) -> bool:
        """Whether this user may unlink or rename over ``entry`` in ``directory`` (sticky bit)."""
        if not self.may(directory, WRITE | SEARCH):
            return False
        sticky = bool(directory.st_mode & stat.S_ISVTX)
        return self.privileged or not sticky or self.uid in (entry.st_uid, directory.st_uid)

    def owns_new_files(self) -> tuple[int, int] | None:
        """``(uid, gid)`` to give files this process creates for the user, when it differs from
        this process's own (only root can then give them)."""
        if (self.uid, self.gid) == (os.geteuid(), os.getegid()) or os.geteuid() != 0:
            return None
        return self.uid, self.gid


def sandbox_user(isolation: Literal["bwrap", "none"], dedicated: int | None) -> User:
    """The user a sandbox of this isolation runs its commands as; ``dedicated``: the uid (and
    gid) of its own that it runs as when we are root."""
    if dedicated is not None:
        return User(dedicated, dedicated, frozenset({dedicated}), privileged=False)
    if isolation == "bwrap":
        uid, gid, groups = _jail.host_user()
        return User(uid, gid, groups, privileged=False)
    euid = os.geteuid()
    groups = frozenset({os.getegid(), *os.getgroups()})
    return User(euid, os.getegid(), groups, privileged=euid == 0)
