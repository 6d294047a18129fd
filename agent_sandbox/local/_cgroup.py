"""CPU, memory and process-count limits through cgroups (v1 or v2), nested under our own cgroup.

Sandbox groups are created *below* the cgroup this process lives in, so whatever limits and
accounting already apply to the caller keep applying to its sandboxes. A command joins its
sandbox's groups before it executes, through a tiny ``sh`` wrapper (``echo 0 > tasks; exec ...``,
see :func:`join_script`): Python has no safe pre-exec hook, and joining after the spawn would
race with the command's first children. Each controller (``cpu``, ``memory``, ``pids``) is usable or not on its
own: :func:`detect` finds which, and says why the others are not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from dataclasses import dataclass, field

_ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000
CONTROLLERS = ("cpu", "memory", "pids")
# The file a usable controller shows in a child group, per cgroup version.
_V2_FILES = {"cpu": "cpu.max", "memory": "memory.max", "pids": "pids.max"}
_V1_FILES = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes", "pids": "pids.max"}
_V1_MOUNTS = {
    "cpu": ("cpu", "cpu,cpuacct", "cpuacct,cpu"),
    "memory": ("memory",),
    "pids": ("pids",),
}


@dataclass(frozen=True)
class Hierarchy:
    """Where sandbox groups are made: ``version`` 1 or 2, and per usable controller the
    directory under which a sandbox's group of that controller is created (on v2 they are all
    the same directory). ``missing`` says, per unusable controller, why."""

    version: int
    bases: dict[str, str]
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> bool:
        """Whether ``cpus`` and ``memory_mib`` can both be enforced."""
        return "cpu" in self.bases and "memory" in self.bases

    @property
    def pids(self) -> bool:
        """Whether a process-count limit (``pids.max``) can be enforced."""
        return "pids" in self.bases


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _nestable(base: str, files: list[str]) -> set[str]:
    """Which of ``files`` a child group created under ``base`` has (empty: cannot create one)."""
    probe = os.path.join(base, f"asb-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return set()
    try:
        return {name for name in files if os.path.exists(os.path.join(probe, name))}
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


@functools.lru_cache(maxsize=1)
def detect() -> Hierarchy | str:
    """The usable hierarchy (at least one controller), or why there is none (a sentence)."""
    try:
        own = _own_paths()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup: {exc}"
    if os.path.exists(os.path.join(_ROOT, "cgroup.controllers")):
        base = os.path.join(_ROOT, own.get("", "/").lstrip("/"))
        found = _nestable(base, list(_V2_FILES.values()))
        bases = {c: base for c, f in _V2_FILES.items() if f in found}
        why = (
            f"cgroup v2: cannot create child groups under {base} (not delegated to this user)"
            if not found
            else f"cgroup v2: the controller is not enabled for child groups of {base}"
        )
        missing = {c: why for c in CONTROLLERS if c not in bases}
        return Hierarchy(2, bases, missing) if bases else why
    bases = {}
    missing = {}
    for controller, names in _V1_MOUNTS.items():
        mount = next(
            (
                os.path.join(_ROOT, name)
                for name in names
                if os.path.exists(os.path.join(_ROOT, name, "cgroup.procs"))
            ),
            None,
        )
        if mount is None:
            missing[controller] = f"cgroup v1: no {controller} controller mounted"
            continue
        own_path = own.get(controller, own.get("cpuacct", "/") if controller == "cpu" else "/")
        base = os.path.join(mount, own_path.lstrip("/"))
        if _nestable(base, [_V1_FILES[controller]]):
            bases[controller] = base
        else:
            missing[controller] = f"cgroup v1: {base} is not writable"
    if not bases:
        return "; ".join(dict.fromkeys(missing.values()))
    return Hierarchy(1, bases, missing)


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def create(
    hierarchy: Hierarchy,
    name: str,
    *,
    cpus: float | None = None,
    memory_mib: int | None = None,
    pids: int | None = None,
) -> list[str]:
    """Make the groups of one sandbox and set its limits; the directories, to join and remove.

    A limit whose controller is not in ``hierarchy.bases`` is a programming error (``KeyError``):
    the caller checks what is usable first.
    """
    wanted = {
        c: v for c, v in (("cpu", cpus), ("memory", memory_mib), ("pids", pids)) if v is not None
    }
    made: list[str] = []
    try:
        for controller in wanted:
            group = os.path.join(hierarchy.bases[controller], name)
            if group not in made:
                os.mkdir(group)
                made.append(group)
            _set_limit(hierarchy.version, group, controller, wanted[controller])
        return made
    except OSError:
        remove(made)
        raise


def _set_limit(version: int, group: str, controller: str, value: float) -> None:
    if controller == "cpu":
        quota = max(1000, int(value * CPU_PERIOD_US))
        if version == 2:
            _write(os.path.join(group, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        else:
            _write(os.path.join(group, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(group, "cpu.cfs_quota_us"), str(quota))
    elif controller == "memory":
        limit = str(int(value) * 1024 * 1024)
        if version == 2:
            _write(os.path.join(group, "memory.max"), limit)
            with contextlib.suppress(OSError):
                _write(os.path.join(group, "memory.swap.max"), "0")
        else:
            _write(os.path.join(group, "memory.limit_in_bytes"), limit)
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(os.path.join(group, "memory.memsw.limit_in_bytes"), limit)
    else:
        _write(os.path.join(group, "pids.max"), str(int(value)))


def named(name: str) -> list[str]:
    """The groups called ``name`` that exist under this process's bases (a sandbox's groups,
    found by its name when its state is lost)."""
    found = detect()
    if isinstance(found, str):
        return []
    groups = dict.fromkeys(os.path.join(base, name) for base in found.bases.values())
    return [group for group in groups if os.path.isdir(group)]


def join_script(groups: list[str]) -> str:
    """``sh`` lines moving the shell into ``groups`` (passed as ``$1``...), then shifting them.

    In a v1 group the shell writes ``0`` (itself) to ``tasks``: moving only the calling thread
    skips the kernel's system-wide lock that moving a whole process takes (a wait for an RCU
    grace period, milliseconds on a busy machine); the shell has one thread, so that moves it
    whole. v2 has no such file for a domain group: the shell writes its pid to ``cgroup.procs``.
    """
    script = "".join(
        f'echo 0 > "${i + 1}/tasks" && '
        if os.path.exists(os.path.join(group, "tasks"))
        else f'echo $$ > "${i + 1}/cgroup.procs" && '
        for i, group in enumerate(groups)
    )
    return script + f"shift {len(groups)}"


def _members(group: str) -> list[int]:
    try:
        with open(os.path.join(group, "cgroup.procs")) as handle:
            return [int(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        return []


def kill_all(group: str, wait: float = 5.0) -> None:
    """SIGKILL every process in a sandbox group (nothing in it can escape, unlike a pgid).

    A process forking while we kill is caught by the next round; the group's pids limit bounds
    how many rounds that can take.
    """
    with contextlib.suppress(OSError):
        _write(os.path.join(group, "cgroup.kill"), "1")  # v2, Linux 5.14+: atomic
    limit = time.monotonic() + wait
    while True:
        pids = _members(group)
        if not pids or time.monotonic() > limit:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def end(name: str, wait: float = 2.0) -> None:
    """Kill everything in the sandbox groups called ``name`` and remove them (a sandbox whose
    state is gone: its groups found by their name)."""
    groups = named(name)
    for group in groups:
        kill_all(group)
    remove(groups, wait=wait)


def remove(groups: list[str], wait: float = 2.0) -> None:
    """Remove sandbox groups once their processes are gone (killing any still there, e.g. one
    that joined while the sandbox was being destroyed); best effort within ``wait`` seconds."""
    limit = time.monotonic() + wait
    for group in reversed(groups):
        while True:
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a killed process has not left yet
                if time.monotonic() > limit:
                    break
                for pid in _members(group):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
