"""CPU and memory limits through cgroups (v1 or v2), nested under the backend's own cgroup.

Sandbox groups are created *below* the cgroup this process lives in, so whatever limits and
accounting already apply to the caller keep applying to its sandboxes. A command joins its
sandbox's groups before it executes, through a tiny ``sh`` wrapper (``echo $$ > cgroup.procs;
exec ...``): Python has no safe pre-exec hook, and joining after the spawn would race with the
command's first children. When no writable cgroup is found, :func:`detect` says why and the
backend reports ``Capabilities(resources=False)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from dataclasses import dataclass

_ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Hierarchy:
    """Where sandbox groups are made: ``version`` 2 (one ``base``) or 1 (cpu and memory bases)."""

    version: int
    memory_base: str
    cpu_base: str


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _can_nest(base: str, needed: tuple[str, ...]) -> bool:
    probe = os.path.join(base, f"asb-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        return all(os.path.exists(os.path.join(probe, name)) for name in needed)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


@functools.lru_cache(maxsize=1)
def detect() -> Hierarchy | str:
    """The usable hierarchy, or why there is none (a sentence for logs and docs)."""
    try:
        own = _own_paths()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup: {exc}"
    if os.path.exists(os.path.join(_ROOT, "cgroup.controllers")):
        base = os.path.join(_ROOT, own.get("", "/").lstrip("/"))
        if _can_nest(base, ("memory.max", "cpu.max")):
            return Hierarchy(2, base, base)
        return (
            f"cgroup v2: cannot create child groups with the cpu and memory controllers "
            f"under {base} (not delegated to this user, or controllers not enabled)"
        )
    memory_mount = os.path.join(_ROOT, "memory")
    cpu_mount = next(
        (
            os.path.join(_ROOT, name)
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
            if os.path.exists(os.path.join(_ROOT, name, "cpu.cfs_quota_us"))
        ),
        None,
    )
    if cpu_mount is None or not os.path.isdir(memory_mount):
        return "cgroup v1 without both the cpu and memory controllers mounted"
    memory_base = os.path.join(memory_mount, own.get("memory", "/").lstrip("/"))
    cpu_base = os.path.join(cpu_mount, own.get("cpu", own.get("cpuacct", "/")).lstrip("/"))
    if _can_nest(memory_base, ("memory.limit_in_bytes",)) and _can_nest(
        cpu_base, ("cpu.cfs_quota_us",)
    ):
        return Hierarchy(1, memory_base, cpu_base)
    return f"cgroup v1: {memory_base} or {cpu_base} is not writable"


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def create(
    hierarchy: Hierarchy, name: str, cpus: float | None, memory_mib: int | None
) -> list[str]:
    """Make the groups of one sandbox and set its limits; the directories, to join and remove."""
    made: list[str] = []
    try:
        if hierarchy.version == 2:
            group = os.path.join(hierarchy.memory_base, name)
            os.mkdir(group)
            made.append(group)
            if memory_mib is not None:
                _write(os.path.join(group, "memory.max"), str(memory_mib * 1024 * 1024))
                with contextlib.suppress(OSError):
                    _write(os.path.join(group, "memory.swap.max"), "0")
            if cpus is not None:
                quota = max(1000, int(cpus * CPU_PERIOD_US))
                _write(os.path.join(group, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            return made
        if memory_mib is not None:
            group = os.path.join(hierarchy.memory_base, name)
            os.mkdir(group)
            made.append(group)
            limit = str(memory_mib * 1024 * 1024)
            _write(os.path.join(group, "memory.limit_in_bytes"), limit)
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(os.path.join(group, "memory.memsw.limit_in_bytes"), limit)
        if cpus is not None:
            group = os.path.join(hierarchy.cpu_base, name)
            os.mkdir(group)
            made.append(group)
            _write(os.path.join(group, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(
                os.path.join(group, "cpu.cfs_quota_us"), str(max(1000, int(cpus * CPU_PERIOD_US)))
            )
        return made
    except OSError:
        remove(made)
        raise


def join_prefix(groups: list[str]) -> list[str]:
    """An argv prefix that moves the command into ``groups`` and then executes it."""
    script = "".join(f'echo $$ > "${i + 1}/cgroup.procs" && ' for i in range(len(groups)))
    script += f'shift {len(groups)} && exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *groups]


def kill_all(group: str) -> None:
    """SIGKILL every process in a sandbox group (nothing in it can escape, unlike a pgid)."""
    try:
        with open(os.path.join(group, "cgroup.procs")) as handle:
            pids = [int(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def remove(groups: list[str], wait: float = 2.0) -> None:
    """Remove sandbox groups once their (killed) processes are gone; best effort."""
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
                time.sleep(0.01)
