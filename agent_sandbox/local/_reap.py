"""One pass of a root's reaper (``python -m agent_sandbox.local._reap ROOT [ID...]``).

Sweeps ``ROOT`` of the sandboxes past their end by the reaper's grace period (and of destroys
cut short), then kills what still runs in the cgroups of the sandboxes ``ID...``, whose
directories went without a destroy, and removes those groups.
"""

from __future__ import annotations

import functools
import sys
from datetime import timedelta
from pathlib import Path

import anyio

from . import _cgroup
from ._reaper import GRACE
from ._store import ID_RE, Store, group_name, utcnow


def main(root: str, gone: list[str]) -> None:
    store = Store(Path(root), None)
    anyio.run(functools.partial(store.sweep, now=utcnow() - timedelta(seconds=GRACE)))
    for sandbox_id in gone:
        if ID_RE.match(sandbox_id):
            _cgroup.end(group_name(sandbox_id), wait=30.0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
