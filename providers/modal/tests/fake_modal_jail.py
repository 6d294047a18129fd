"""How the fake Modal runs a sandbox: a container of real processes on this host.

A Modal Sandbox is a gVisor container: its own root filesystem, its own process tree whose
commands run as root *inside* it, its own network when networking is blocked. The fake gives each
sandbox the same shape with the kernel's namespaces:

- the sandbox's files are a directory on the host (its root); the host's ``/usr`` and ``/etc``
  (and the ``/bin``, ``/lib``... links) are bound read-only into it, the way an image's layers
  sit under the container's writable layer;
- ``bubblewrap`` (``bwrap``), run as an unprivileged host user, starts the container: a user
  namespace mapping the sandbox's root (uid 0) onto that unprivileged host uid — so root in a
  fake sandbox is never root over the host —, a pid namespace whose init reaps orphans, private
  IPC and UTS (hostname ``modal``), and a network namespace holding only loopback when the
  sandbox was created with ``block_network``;
- every ``exec`` enters those namespaces with ``nsenter`` (as ``runsc exec`` enters a gVisor
  sandbox) and runs the argv as the sandbox's root, with real pipes, a real exit status and
  real signals;
- terminating the sandbox kills the namespace's init, and with it every process in it, escaped
  or not.

Paths are resolved host-side with the sandbox's view of its own root (:func:`resolve`):
symlinks inside the sandbox are followed inside it, never out of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

from fake_vm import resolve_with

SYSTEM_DIRS = ("usr", "etc")
"""Host directories a sandbox sees read-only (its image's system)."""
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Top-level entries that are symlinks into /usr on merged-/usr hosts (Debian 12)."""
OWN_DIRS = ("root", "tmp", "var/tmp", "run", "home", "opt", "srv", "mnt")
"""Directories of the sandbox's own writable layer, made at start."""
TOOLS_MOUNT = "/__modal/.bin"
"""Where Modal mounts its in-sandbox tools (``modal-sandbox-fs-tools``)."""
FIRST_UID = 1_610_000
"""Host uids from here on are the (unprivileged) root of one fake sandbox each."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"the fake Modal needs {tool} on this host")
    return path


def unavailable() -> str | None:
    """Why containers cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "the fake Modal needs root (it enters each sandbox's namespaces with nsenter)"
    for tool in ("bwrap", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"the fake Modal needs {tool}"
    if not Path("/usr/bin/python3").is_file():
        return "the fake Modal's in-sandbox tools run on /usr/bin/python3"
    return None


@dataclass
class Container:
    """One running sandbox container."""

    root: Path
    uid: int
    init_pid: int
    """Host pid of the namespace's init (``nsenter`` target)."""
    bwrap: subprocess.Popen[bytes]
    network_blocked: bool

    def nsenter_argv(self, cwd: str, argv: list[str]) -> list[str]:
        """The host argv that runs ``argv`` inside the container as its root, in ``cwd``."""
        return [
            _require("nsenter"),
            "--target", str(self.init_pid),
            "--user", "--mount", "--pid", "--uts", "--ipc", "--net",
            "--root", "--wd",
            "--",
            "/usr/bin/env", "-C", cwd, "--", *argv,
        ]  # fmt: skip

    def host_pid_of_child(self, nsenter_pid: int) -> int | None:
        """The host pid of the command an ``nsenter`` process forked into the container."""
        try:
            text = Path(f"/proc/{nsenter_pid}/task/{nsenter_pid}/children").read_text()
        except OSError:
            return None
        pids = text.split()
        return int(pids[0]) if pids else None

    def alive(self) -> bool:
        return self.bwrap.poll() is None

    def kill(self) -> None:
        """Kill the container: its init first (the kernel then kills every process of the
        namespace), then bwrap."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.bwrap.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.bwrap.wait(timeout=10)


def prepare_root(root: Path, uid: int, workdir: str | None, copy_from: Path | None) -> None:
    """Lay out a sandbox's writable layer (a copy of ``copy_from`` for a snapshot image)."""
    if copy_from is not None:
        shutil.copytree(copy_from, root, symlinks=True, copy_function=_copy_regular)
    root.mkdir(mode=0o755, exist_ok=True)
    for name in TOP_LINKS:
        host = Path("/") / name
        target = root / name
        if host.is_symlink() and not target.is_symlink():
            target.symlink_to(os.readlink(host))
        elif host.is_dir() and not host.is_symlink():
            target.mkdir(exist_ok=True)
    for name in (*SYSTEM_DIRS, "proc", "dev", *OWN_DIRS):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    if workdir:
        # Like runc, the container runtime creates a missing working directory.
        host = resolve_host(root, workdir)
        if host is not None:
            host.mkdir(parents=True, exist_ok=True)
    _chown_tree(root, uid)


def _copy_regular(source: str, target: str) -> None:
    """Copy a regular file of a snapshot; FIFOs, sockets and devices are not copied (a FIFO
    would block the copy)."""
    if stat.S_ISREG(os.lstat(source).st_mode):
        shutil.copy2(source, target, follow_symlinks=False)


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)


def start(
    root: Path,
    uid: int,
    tools: Path,
    env: dict[str, str],
    argv: list[str],
    *,
    network_blocked: bool,
) -> Container:
    """Start the container whose main process is ``argv``."""
    bwrap = _require("bwrap")
    args = [_require("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", bwrap]
    args += ["--bind", str(root), "/"]
    for name in SYSTEM_DIRS:
        args += ["--ro-bind", f"/{name}", f"/{name}"]
    for name in TOP_LINKS:
        host = Path("/") / name
        if host.is_dir() and not host.is_symlink():
            args += ["--ro-bind", str(host), f"/{name}"]
    args += ["--ro-bind", str(tools), TOOLS_MOUNT]
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--unshare-user", "--uid", "0", "--gid", "0",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "modal",
        "--die-with-parent",
        "--chdir", "/",
    ]  # fmt: skip
    if network_blocked:
        args.append("--unshare-net")
    read_info, write_info = os.pipe()
    args += ["--info-fd", str(write_info), "--", *argv]
    # The state directory must be traversable by the unprivileged uid that runs bwrap.
    for parent in root.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o711)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(write_info,),
            close_fds=True,
        )
    finally:
        os.close(write_info)
    with os.fdopen(read_info, "rb") as info:
        raw = info.read()
    try:
        init_pid = int(json.loads(raw.decode() or "{}")["child-pid"])
    except (ValueError, KeyError) as exc:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"bwrap did not start: {err.decode(errors='replace')}") from exc
    _wait_for_main_process(init_pid, proc)
    return Container(root, uid, init_pid, proc, network_blocked)


def _wait_for_main_process(init_pid: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the namespace's init has finished setting up and started the main process:
    until then the container's root is not in place and nothing can enter it."""
    deadline = time.monotonic() + 30
    children = Path(f"/proc/{init_pid}/task/{init_pid}/children")
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if children.read_text().split():
                return
        time.sleep(0.001)
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise RuntimeError(f"the container did not start: {err.decode(errors='replace')}")


def resolve(root: Path, path: str, *, follow_last: bool = True) -> str:
    """``path`` as the sandbox sees it: absolute, symlinks followed inside the sandbox.

    Missing trailing components are kept; raises ``OSError`` on a symlink loop.
    """
    return resolve_with(lambda virtual: resolve_host(root, virtual), path, follow_last=follow_last)


def resolve_host(root: Path, virtual: str) -> Path | None:
    """The host path behind a symlink-free absolute sandbox path (``None`` for ``/proc`` and
    ``/dev``, which the host cannot look into for the sandbox)."""
    parts = [p for p in virtual.split("/") if p]
    if not parts:
        return root
    if parts[0] in ("proc", "dev"):
        return None
    if parts[0] in SYSTEM_DIRS:
        return Path("/", *parts)
    return root.joinpath(*parts)


def is_directory(root: Path, path: str) -> bool:
    """True when ``path`` is a directory inside the sandbox."""
    try:
        host = resolve_host(root, resolve(root, path))
    except OSError:
        return False
    return host is not None and host.is_dir() and not host.is_symlink()
