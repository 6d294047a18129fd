"""The ``local`` provider: sandboxes as directories on this host, commands as host processes.

Each sandbox is a directory under the backend's ``root`` holding ``workspace/`` (the workdir),
``tmp/`` (a private /tmp), ``procs/`` (one empty file per running command, so another process's
sweep can find and kill it) and ``state.json`` (id, spec, labels, times, isolation), which is
what makes :meth:`LocalBackend.connect` work after a restart.

With bubblewrap (``isolation="bwrap"``, the default when ``bwrap`` is on PATH) every command runs
in a fresh jail: read-only system, the workspace at ``/workspace``, the private tmp at ``/tmp``,
new user, pid, ipc, uts and (for network policy ``none``) network namespaces, uid 1000 without
capabilities. With ``isolation="none"`` commands run directly on the host in the workspace
directory: nothing is confined, and the backend says so (a warning, ``Capabilities.isolated``
false).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio.to_thread

from ..backend import BaseBackend, Diagnostic, ProviderOptions, argv_of, exit_status
from ..errors import (
    CommandTimeout,
    ConfigError,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProviderError,
    SandboxNotFound,
)
from ..models import (
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    FileType,
    SandboxInfo,
    SandboxSpec,
)
from ..output import CappedBuffer
from . import _cgroup, _jail
from ._process import Child, Deadline, has_marker, kill_marked, killpg, pump

log = logging.getLogger("agent_sandbox.local")

_ID_RE = re.compile(r"^loc-[0-9a-f]{20}$")
_STATE = "state.json"
_ACTIVITY = "activity"
_SMALL_FILE = 256 * 1024
_WRITE_CHUNK = 1024 * 1024
_MARK_SANDBOX = "AGENT_SANDBOX_ID"
_MARK_EXEC = "AGENT_SANDBOX_EXEC"
_RECORD_AFTER = 0.05
_exec_counter = itertools.count(1)


def default_root() -> Path:
    """``$XDG_STATE_HOME/agent-sandbox/local``, else ``~/.local/state/agent-sandbox/local``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "agent-sandbox" / "local"


class LocalOptions(ProviderOptions):
    """Options of the ``local`` provider."""

    provider: Literal["local"] = "local"
    root: Path | None = None
    """Directory holding the sandboxes' directories and state (default: :func:`default_root`)."""
    isolation: Literal["auto", "bwrap", "none"] = "auto"
    """``bwrap``: jail every command with bubblewrap (an error when it is missing or unusable).
    ``none``: run commands directly on the host, confining nothing. ``auto``: ``bwrap`` when it
    is on PATH and works here, else ``none`` with a warning."""


@dataclass
class _Box:
    """What this process knows of one sandbox (rebuilt from ``state.json`` when it changes)."""

    id: str
    dir: str
    workspace: str
    tmp: str
    isolation: Literal["bwrap", "none"]
    info: SandboxInfo
    expires: float
    idle: float | None
    workdir: str
    network: str
    state_mtime: int
    cgroups: list[str] = field(default_factory=list)
    rlimit_as: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    wrap: list[str] = field(default_factory=list)
    """argv run before the command: joins the sandbox's cgroups or sets its rlimit."""
    fs: _jail.JailFS | None = None
    last_active: float = 0.0
    """Wall time of this process's last operation on the sandbox (idle timeout)."""
    last_flush: float = 0.0
    """When ``last_active`` was last written to the activity file, for other processes."""
    running: int = 0
    """Commands of this process running in the sandbox right now."""

    @property
    def procs(self) -> str:
        return os.path.join(self.dir, "procs")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _atomic_write_small(path: str, data: bytes) -> None:
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _rmtree(path: str) -> None:
    """Delete a sandbox directory, even where its commands removed permissions."""
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    # The jail's user is us: a command may have made directories unreadable or unwritable
    # (without root we then cannot list or empty them). Open everything up, then delete.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for top, dirs, _files in os.walk(path):
        for name in dirs:
            target = os.path.join(top, name)
            if not os.path.islink(target):  # never chmod what a link points at
                with contextlib.suppress(OSError):
                    os.chmod(target, 0o700)
    shutil.rmtree(path, ignore_errors=True)


class LocalBackend(BaseBackend):
    """Sandboxes on this host: a directory each, commands as host processes (jailed with
    bubblewrap when available). See ``docs/providers/local.md``."""

    name: ClassVar[str] = "local"
    Options: ClassVar[type[ProviderOptions]] = LocalOptions

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        opts = self.options
        if not isinstance(opts, LocalOptions):
            raise ConfigError("LocalBackend needs LocalOptions", provider=self.name)
        root = Path(opts.root if opts.root is not None else default_root()).expanduser()
        # Real path: the jail's file operations compare opened files' real paths against it.
        self.root = Path(os.path.realpath(root))
        self._boxes: dict[str, _Box] = {}
        self._warned = False
        self.bwrap: str | None = None
        self.isolation: Literal["bwrap", "none"] = "none"
        self._fallback_reason: str | None = None
        found = _jail.find_bwrap()
        if opts.isolation == "none":
            self._fallback_reason = "isolation='none' was chosen"
        elif found is None:
            if opts.isolation == "bwrap":
                raise ConfigError(
                    "isolation='bwrap' but bwrap (bubblewrap) is not on PATH; install it "
                    "(Debian/Ubuntu: apt-get install bubblewrap) or choose isolation='none'",
                    provider=self.name,
                )
            self._fallback_reason = "bwrap (bubblewrap) is not on PATH"
        else:
            problem = _jail.probe(found)
            if problem is None:
                self.bwrap, self.isolation = found, "bwrap"
            elif opts.isolation == "bwrap":
                raise ConfigError(
                    f"isolation='bwrap' but bwrap cannot build a jail here: {problem}",
                    provider=self.name,
                )
            else:
                self._fallback_reason = f"bwrap cannot build a jail here ({problem})"
        jailed = self.isolation == "bwrap"
        found_cgroups = _cgroup.detect()
        self.cgroups = found_cgroups if isinstance(found_cgroups, _cgroup.Hierarchy) else None
        self.capabilities = Capabilities(
            network_none=jailed,
            isolated=jailed,
            resources=self.cgroups is not None,
            persistent=True,
            stdin=True,
            signals=True,
        )

    def check_spec(self, spec: SandboxSpec) -> None:
        """As :meth:`BaseBackend.check_spec`; without cgroups ``memory_mib`` alone is still
        honoured, as an address-space limit (``ulimit -v``), while ``cpus`` is ``Unsupported``."""
        if self.cgroups is None and spec.memory_mib is not None and spec.cpus is None:
            spec = spec.model_copy(update={"memory_mib": None})
        super().check_spec(spec)

    # -- state ------------------------------------------------------------------------------

    def _not_found(self, sandbox_id: str, op: str, why: str = "no such sandbox") -> SandboxNotFound:
        return SandboxNotFound(
            f"{why}: {sandbox_id}", provider=self.name, op=op, sandbox_id=sandbox_id
        )

    def _dir(self, sandbox_id: str) -> str:
        return os.path.join(self.root, sandbox_id)

    def _load(self, sandbox_id: str, op: str) -> _Box:
        """The sandbox, from cache when its state file is unchanged. Raises SandboxNotFound."""
        if not _ID_RE.match(sandbox_id):
            raise self._not_found(sandbox_id, op)
        box = self._boxes.get(sandbox_id)
        path = os.path.join(self._dir(sandbox_id), _STATE)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            self._boxes.pop(sandbox_id, None)
            raise self._not_found(sandbox_id, op) from None
        if box is None or box.state_mtime != mtime:
            box = self._read_state(sandbox_id, path, mtime, op)
            self._boxes[sandbox_id] = box
        return box

    def _read_state(self, sandbox_id: str, path: str, mtime: int, op: str) -> _Box:
        try:
            with open(path, "rb") as handle:
                state = json.load(handle)
            info = SandboxInfo.model_validate(state["info"])
            directory = self._dir(sandbox_id)
            box = _Box(
                id=sandbox_id,
                dir=directory,
                workspace=os.path.join(directory, "workspace"),
                tmp=os.path.join(directory, "tmp"),
                isolation=state["isolation"],
                info=info,
                expires=float(state["expires"]),
                idle=state.get("idle"),
                workdir=state["workdir"],
                network=state["network"],
                env=dict(state["env"]),
                cgroups=list(state.get("cgroups") or []),
                rlimit_as=state.get("rlimit_as"),
                state_mtime=mtime,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._not_found(sandbox_id, op, "unreadable sandbox state") from exc
        self._prepare(box)
        return box

    def _prepare(self, box: _Box) -> None:
        """Precompute what every exec of this sandbox needs (env, bwrap argv prefix)."""
        if box.cgroups:
            box.wrap = _cgroup.join_prefix(box.cgroups)
        elif box.rlimit_as is not None:
            kib = str(box.rlimit_as // 1024)
            box.wrap = ["/bin/sh", "-c", 'ulimit -v "$1" && shift && exec "$@"', "sh", kib]
        if box.isolation == "bwrap":
            bwrap = self.bwrap or _jail.find_bwrap()
            if bwrap is None:
                raise ProviderError(
                    f"sandbox {box.id} was created with bubblewrap, which is no longer on PATH",
                    provider=self.name,
                    sandbox_id=box.id,
                )
            box.prefix = _jail.bwrap_prefix(
                bwrap, box.workspace, box.tmp, share_net=box.network != "none"
            )
            for key, value in box.env.items():
                box.prefix += ["--setenv", key, value]
            box.fs = _jail.JailFS(box.workspace, box.tmp)
        else:
            box.env = {**box.env, _MARK_SANDBOX: box.id}

    def _live(self, sandbox_id: str, op: str) -> _Box:
        """The sandbox if it exists and has not expired; an expired one has its commands killed."""
        box = self._load(sandbox_id, op)
        now = time.time()
        if now >= self._expiry(box, now):
            self._kill_all(box)
            self._boxes.pop(sandbox_id, None)
            raise self._not_found(sandbox_id, op, "sandbox expired")
        self._touch(box, now)
        return box

    def _touch(self, box: _Box, now: float) -> None:
        """Note activity (only sandboxes with an idle timeout care)."""
        if box.idle is None:
            return
        box.last_active = now
        if now - box.last_flush > min(1.0, box.idle / 4):
            box.last_flush = now
            with contextlib.suppress(OSError):
                os.utime(os.path.join(box.dir, _ACTIVITY))

    def _expiry(self, box: _Box, now: float) -> float:
        """When the sandbox ends: its TTL, or earlier after ``idle`` seconds without activity.

        A sandbox running a command (from this process, or recorded on disk by another one)
        is not idle.
        """
        if box.idle is None:
            return box.expires
        try:
            busy = box.running > 0 or bool(os.listdir(box.procs))
        except OSError:
            busy = False
        if busy:
            return min(box.expires, now + box.idle)
        try:
            last = os.stat(os.path.join(box.dir, _ACTIVITY)).st_mtime
        except OSError:
            last = box.last_active
        return min(box.expires, max(last, box.last_active) + box.idle)

    def _kill_all(self, box: _Box) -> None:
        """Kill every running command of a sandbox, from this process or any other."""
        self._kill_dir(box.id, box.dir)

    async def doctor(self) -> builtins.list[Diagnostic]:
        """Check the state root, the isolation in use and whether resource limits work."""
        checks: builtins.list[Diagnostic] = []
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            writable = os.access(self.root, os.W_OK | os.X_OK)
            checks.append(
                Diagnostic("root", writable, f"{self.root} ({len(await self.list())} sandboxes)")
            )
        except OSError as exc:
            checks.append(Diagnostic("root", False, f"{self.root}: {exc}"))
        if self.isolation == "bwrap":
            checks.append(Diagnostic("isolation", True, f"bubblewrap ({self.bwrap})"))
        else:
            # Not an error when chosen on purpose, but never reported as isolated.
            opts = self.options
            chosen = isinstance(opts, LocalOptions) and opts.isolation == "none"
            checks.append(
                Diagnostic(
                    "isolation",
                    chosen,
                    f"none: commands are NOT isolated ({self._fallback_reason}); install "
                    "bubblewrap to jail them",
                )
            )
        found = _cgroup.detect()
        if isinstance(found, _cgroup.Hierarchy):
            checks.append(Diagnostic("resources", True, f"cgroup v{found.version}"))
        else:
            checks.append(
                Diagnostic("resources", True, f"cpus unsupported, memory as ulimit -v ({found})")
            )
        return checks

    # -- lifecycle --------------------------------------------------------------------------

    def _warn_unisolated(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "local sandboxes run with isolation='none' (%s): commands run directly on this "
                "host as your user and are NOT isolated from it",
                self._fallback_reason,
            )

    def _refuse(self, spec: SandboxSpec) -> None:
        self.check_spec(spec)
        if spec.image is not None:
            raise self._unsupported(
                f"images (got {spec.image!r}; the local provider runs the host's system)"
            )
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib limits")

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create the sandbox's directory and state. Raises ``Unsupported`` for what it cannot do."""
        return self._create(spec)

    def _create(self, spec: SandboxSpec) -> SandboxInfo:
        self._refuse(spec)
        if self.isolation == "none":
            self._warn_unisolated()
        sandbox_id = "loc-" + secrets.token_hex(10)
        directory = self._dir(sandbox_id)
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            root_real = os.path.realpath(self.root)
            directory = os.path.join(root_real, sandbox_id)
            os.mkdir(directory, 0o700)
            for sub in ("workspace", "tmp", "procs"):
                os.mkdir(os.path.join(directory, sub), 0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create a sandbox under {self.root}: {exc}", provider=self.name, op="create"
            ) from exc
        workspace = os.path.join(directory, "workspace")
        tmp = os.path.join(directory, "tmp")
        state: dict[str, Any] = {}
        try:
            workdir = self._make_workdir(spec.workdir, workspace, tmp)
            created = _now()
            expires = created.timestamp() + spec.ttl_seconds
            if self.isolation == "bwrap":
                env = {"PATH": _jail.JAIL_PATH, "HOME": _jail.WORKSPACE, "LANG": "C.UTF-8"}
            else:
                env = {
                    "PATH": os.environ.get("PATH") or os.defpath,
                    "HOME": workspace,
                    "LANG": os.environ.get("LANG") or "C.UTF-8",
                    "TMPDIR": tmp,
                }
            env.update(spec.env)
            info = SandboxInfo(
                id=sandbox_id,
                provider=self.name,
                state="running",
                labels=dict(spec.labels),
                created_at=created,
                expires_at=datetime.fromtimestamp(expires, timezone.utc),
                image=None,
                workdir=workdir,
                metadata={"isolation": self.isolation, "path": directory},
            )
            state.update(
                {
                    "version": 1,
                    "id": sandbox_id,
                    "spec": spec.model_dump(mode="json"),
                    "info": info.model_dump(mode="json"),
                    "isolation": self.isolation,
                    "expires": expires,
                    "idle": spec.idle_timeout_seconds,
                    "workdir": workdir,
                    "network": spec.network.mode,
                    "env": env,
                }
            )
            if spec.idle_timeout_seconds is not None:
                Path(directory, _ACTIVITY).touch()
            if spec.cpus is not None or spec.memory_mib is not None:
                if self.cgroups is not None:
                    state["cgroups"] = groups = _cgroup.create(
                        self.cgroups, f"asb-{sandbox_id}", spec.cpus, spec.memory_mib
                    )
                    info.metadata["cgroups"] = ",".join(groups)
                elif spec.memory_mib is not None:
                    state["rlimit_as"] = spec.memory_mib * 1024 * 1024
                state["info"] = info.model_dump(mode="json")
            _atomic_write_small(
                os.path.join(directory, _STATE), json.dumps(state, indent=1).encode()
            )
        except BaseException:
            _cgroup.remove(state.get("cgroups") or [])
            _rmtree(directory)
            raise
        self._load(sandbox_id, "create")
        return info

    def _make_workdir(self, wanted: str | None, workspace: str, tmp: str) -> str:
        if self.isolation == "bwrap":
            if wanted is None:
                return _jail.WORKSPACE
            path = _jail.normalise(wanted)
            fs = _jail.JailFS(workspace, tmp)
            located = fs.host_of(path)
            if located is None:
                raise ConfigError(
                    f"workdir {wanted!r} must be under /workspace or /tmp (or exist read-only)",
                    provider=self.name,
                    op="create",
                )
            mount, host = located
            if mount.writable:
                os.makedirs(host, exist_ok=True)
            elif not os.path.isdir(host):
                raise ConfigError(
                    f"workdir {wanted!r} does not exist", provider=self.name, op="create"
                )
            return path
        if wanted is None:
            return workspace
        path = _jail.normalise(wanted)
        if path == _jail.WORKSPACE or path.startswith(_jail.WORKSPACE + "/"):
            host = workspace + path[len(_jail.WORKSPACE) :]
            os.makedirs(host, exist_ok=True)
            return host
        if not os.path.isdir(path):
            raise ConfigError(f"workdir {wanted!r} does not exist", provider=self.name, op="create")
        return path

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id (this process or another made it). Raises ``SandboxNotFound``."""
        return self._live(sandbox_id, "connect").info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Live (unexpired) sandboxes under ``root`` that carry all of ``labels``."""
        wanted = dict(labels or {})
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found = []
        now = time.time()
        for name in names:
            if not _ID_RE.match(name):
                continue
            try:
                box = self._load(name, "list")
            except (SandboxNotFound, ProviderError):
                continue
            if now >= self._expiry(box, now):
                continue
            if all(box.info.labels.get(k) == v for k, v in wanted.items()):
                found.append(box.info)
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Kill the sandbox's commands and delete its directory. Idempotent."""
        trash = self._retire(sandbox_id)
        if trash is not None:
            await anyio.to_thread.run_sync(_rmtree, trash)

    def _retire(self, sandbox_id: str) -> str | None:
        """Move a sandbox's directory aside (from then on nobody can find or exec in it) and
        kill its commands; the directory to delete, or ``None`` when already gone."""
        if not _ID_RE.match(sandbox_id):
            return None
        self._boxes.pop(sandbox_id, None)
        trash = os.path.join(self.root, f".trash-{sandbox_id}-{secrets.token_hex(4)}")
        try:
            os.rename(self._dir(sandbox_id), trash)
        except FileNotFoundError:
            return None
        groups = self._kill_dir(sandbox_id, trash)
        _cgroup.remove(groups)
        return trash

    def _kill_dir(self, sandbox_id: str, directory: str) -> builtins.list[str]:
        """Kill the commands recorded in ``directory/procs`` (checked by their marker, so a
        reused pid is left alone), any process still carrying the sandbox's marker, and every
        process in the sandbox's cgroups; returns those cgroups."""
        groups: builtins.list[str] = []
        with (
            contextlib.suppress(OSError, ValueError, AttributeError),
            open(os.path.join(directory, _STATE), "rb") as handle,
        ):
            groups = [str(g) for g in json.load(handle).get("cgroups") or []]
        for group in groups:
            _cgroup.kill_all(group)
        procs = os.path.join(directory, "procs")
        try:
            records = os.listdir(procs)
        except OSError:
            records = []
        for record in records:
            pid_text, _, nonce = record.partition(".")
            if pid_text.isdigit() and has_marker(int(pid_text), f"{_MARK_EXEC}={nonce}".encode()):
                killpg(int(pid_text))
        kill_marked(f"{_MARK_SANDBOX}={sandbox_id}".encode())
        return groups

    async def sweep(self, *, now: datetime | None = None) -> builtins.list[str]:
        """Destroy every sandbox under ``root`` past its TTL (or idle timeout); return their ids.

        Also removes leftovers of interrupted destroys and creates. Commands still running in an
        expired sandbox are killed, whichever process started them.
        """
        moment = (now or _now()).timestamp()
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        removed = []
        for name in names:
            path = os.path.join(self.root, name)
            if name.startswith(".trash-"):
                await anyio.to_thread.run_sync(_rmtree, path)
                continue
            if not _ID_RE.match(name):
                continue
            try:
                box = self._load(name, "sweep")
            except SandboxNotFound:
                # No readable state: a create that died half-way (give it time to finish).
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(path).st_mtime > 600:
                        await self.destroy(name)
                continue
            except ProviderError:
                continue
            if moment >= self._expiry(box, moment):
                await self.destroy(name)
                removed.append(name)
        return removed

    # -- commands ---------------------------------------------------------------------------

    def _deadline(self, box: _Box, timeout: float | None) -> tuple[float | None, str]:
        """Monotonic deadline of a command: its timeout or the sandbox's TTL, whichever first
        (a running command keeps the sandbox from being idle)."""
        left = box.expires - time.time()
        if timeout is not None and timeout <= left:
            return time.monotonic() + timeout, "timeout"
        return time.monotonic() + max(left, 0.0), "expired"

    def _missing_command(self, box: _Box, argv0: str, cwd: str, path_var: str) -> ExecEvent | None:
        """In a jail, tell "not found" (127) and "not executable" (126) apart before spawning:
        bwrap itself would exit 1 for both."""
        fs = box.fs
        assert fs is not None
        if "/" in argv0:
            candidates = [_jail.normalise(os.path.join(cwd, argv0))]
        else:
            candidates = [_jail.normalise(d or ".") + "/" + argv0 for d in path_var.split(":")]
        denied = False
        for jail_path in candidates:
            located = fs.host_of(jail_path)
            if (
                located is not None
                and os.access(located[1], os.X_OK)
                and not os.path.isdir(located[1])
            ):
                return None
            try:
                resolved = fs.host_of(fs.resolve(jail_path))
            except _jail.JailPathError:
                continue
            if resolved is None or not os.path.exists(resolved[1]):
                continue
            st = os.stat(resolved[1])
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return None
            denied = True
        if denied:
            return ExecEvent(kind="stderr", data=f"{argv0}: Permission denied\n".encode())
        return ExecEvent(kind="stderr", data=f"{argv0}: command not found\n".encode())

    def _launch(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> _Run | builtins.list[ExecEvent]:
        """Spawn a command; the running command, or the events of one that could not start
        (127 not found, 126 not executable)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise self._unsupported("exec outside an asyncio event loop (trio)") from None
        box = self._live(sandbox_id, "exec")
        argv = argv_of(command)
        if options.user is not None:
            raise self._unsupported("running as another user")
        nonce = f"{os.getpid()}-{next(_exec_counter)}-{secrets.token_hex(4)}"
        cwd = options.cwd or box.workdir
        if box.isolation == "bwrap":
            assert box.fs is not None
            if cwd != box.workdir:
                self._check_cwd_jail(box, cwd)
            path_var = options.env.get("PATH") or box.env.get("PATH", _jail.JAIL_PATH)
            failure = self._missing_command(box, argv[0], cwd, path_var)
            if failure is not None:
                code = 126 if b"Permission denied" in failure.data else 127
                return [failure, ExecEvent(kind="exit", exit_code=code)]
            full = list(box.prefix)
            for key, value in options.env.items():
                full += ["--setenv", key, value]
            full += ["--chdir", cwd, "--", *argv]
            env = {_MARK_SANDBOX: box.id, _MARK_EXEC: nonce}
            host_cwd: str | None = box.dir
        else:
            full = argv
            env = {**box.env, **options.env, _MARK_EXEC: nonce}
            host_cwd = cwd
        if box.wrap:
            full = [*box.wrap, *full]
        deadline, reason = self._deadline(box, options.timeout)
        try:
            child = Child(
                full,
                env=env,
                cwd=host_cwd,
                stdin=options.stdin,
                marker=f"{_MARK_EXEC}={nonce}".encode(),
            )
        except FileNotFoundError as exc:
            if host_cwd is not None and exc.filename == host_cwd:
                raise FileNotFound(
                    f"working directory not found: {cwd}",
                    provider=self.name,
                    op="exec",
                    sandbox_id=sandbox_id,
                ) from exc
            return [
                ExecEvent(kind="stderr", data=f"{argv[0]}: command not found\n".encode()),
                ExecEvent(kind="exit", exit_code=127),
            ]
        except PermissionError:
            return [
                ExecEvent(kind="stderr", data=f"{argv[0]}: Permission denied\n".encode()),
                ExecEvent(kind="exit", exit_code=126),
            ]
        except NotADirectoryError as exc:
            raise FileNotFound(
                f"working directory not found: {cwd}",
                provider=self.name,
                op="exec",
                sandbox_id=sandbox_id,
            ) from exc
        # A command still running after a moment is recorded on disk, so that a destroy or sweep
        # from another process can kill it; short commands skip the cost (~0.1 ms on ext4).
        record = _Record(os.path.join(box.procs, f"{child.pid}.{nonce}"))
        box.running += 1
        return _Run(self, box, child, record, deadline, reason, options.timeout)

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Run a command in the sandbox, yielding output chunks as they come, then the exit.

        Raises ``CommandTimeout`` (the whole process tree killed) when ``options.timeout``
        passes, ``SandboxNotFound`` for a gone or expired sandbox, ``FileNotFound`` for a
        missing working directory. Leaving the iteration early kills the command.
        """
        run = self._launch(sandbox_id, command, options)
        if isinstance(run, builtins.list):
            for event in run:
                yield event
            return
        try:
            try:
                async for kind, data in pump(run.child, run.deadline, run.reason):
                    yield ExecEvent(kind=kind, data=data)
            except Deadline as exc:
                raise run.timed_out(exc) from None
            code, sig = run.finish()
        finally:
            run.close()
        yield ExecEvent(kind="exit", exit_code=code, signal=sig)

    async def exec(self, sandbox_id: str, command: Command, options: ExecOptions) -> ExecResult:
        """Run a command to completion, keeping at most ``options.output_limit`` bytes per
        stream (as :meth:`BaseBackend.exec`, without the per-chunk events)."""
        start = time.monotonic()
        out = CappedBuffer(options.output_limit)
        err = CappedBuffer(options.output_limit)
        run = self._launch(sandbox_id, command, options)
        code: int | None = None
        sig: int | None = None
        if isinstance(run, builtins.list):
            for event in run:
                if event.kind == "exit":
                    code, sig = event.exit_code, event.signal
                else:
                    (out if event.kind == "stdout" else err).write(event.data)
        else:
            try:
                try:
                    async for kind, data in pump(run.child, run.deadline, run.reason):
                        (out if kind == "stdout" else err).write(data)
                except Deadline as exc:
                    error = run.timed_out(exc)
                    error.stdout, error.stderr = out.getvalue(), err.getvalue()
                    raise error from None
                code, sig = run.finish()
            finally:
                run.close()
        assert code is not None
        return ExecResult(
            exit_code=code,
            signal=sig,
            stdout_bytes=out.getvalue(),
            stderr_bytes=err.getvalue(),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_s=time.monotonic() - start,
        )

    def _check_cwd_jail(self, box: _Box, cwd: str) -> None:
        assert box.fs is not None
        try:
            located = box.fs.host_of(box.fs.resolve(_jail.normalise(cwd)))
        except _jail.JailPathError:
            located = None
        if located is None or not os.path.isdir(located[1]):
            raise FileNotFound(
                f"working directory not found: {cwd}",
                provider=self.name,
                op="exec",
                sandbox_id=box.id,
            )

    # -- files ------------------------------------------------------------------------------

    def _path_error(self, exc: BaseException, op: str, box: _Box, path: str) -> Exception:
        where: dict[str, Any] = {"provider": self.name, "op": op, "sandbox_id": box.id}
        if isinstance(exc, _jail.JailPathError):
            if exc.kind == "missing":
                return FileNotFound(f"no such file or directory: {path}", **where)
            if exc.kind == "loop":
                return InvalidPath(str(exc), **where)
            return PermissionDenied(f"{op} {path}: {exc}", **where)
        if isinstance(exc, IsADirectoryError):
            return IsADirectory(f"is a directory: {path}", **where)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return FileNotFound(f"no such file or directory: {path}", **where)
        if isinstance(exc, PermissionError):
            return PermissionDenied(f"{op} {path}: permission denied", **where)
        if isinstance(exc, FileExistsError):
            return InvalidPath(f"{op} {path}: a parent is not a directory", **where)
        if isinstance(exc, OSError) and exc.errno == 30:  # EROFS
            return PermissionDenied(f"{op} {path}: read-only file system", **where)
        return ProviderError(f"{op} {path} failed: {exc}", **where)

    def _locate(self, box: _Box, path: str, op: str) -> tuple[str, _jail.Mount | None]:
        """Host path for a sandbox path, and (in a jail) the mount it must stay inside."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(
                f"invalid path: {path!r}", provider=self.name, op=op, sandbox_id=box.id
            )
        if box.fs is None:
            return path, None
        fs = box.fs
        resolved = fs.resolve(_jail.normalise(path))
        located = fs.host_of(resolved)
        if located is None:
            if resolved == "/":
                raise IsADirectoryError(path)
            top = "/" + resolved.split("/")[1]
            if top in ("/proc", "/dev"):
                raise _jail.JailPathError("denied", "not reachable through file operations")
            if op == "write_file":
                raise _jail.JailPathError("denied", "read-only file system")
            raise FileNotFoundError(path)
        mount, host = located
        if op == "write_file" and not mount.writable:
            raise _jail.JailPathError("denied", "read-only file system")
        return host, mount

    def _host(
        self, box: _Box, path: str, op: str, *, follow: bool = True, write: bool = False
    ) -> tuple[str, _jail.Mount | None] | None:
        """Host path of a sandbox path for the native file operations, with the mount it must
        stay in; ``None`` for jail places outside every mount (the derived, exec-based
        operation then answers as the jail sees it)."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(
                f"invalid path: {path!r}", provider=self.name, op=op, sandbox_id=box.id
            )
        if box.fs is None:
            return path, None
        fs = box.fs
        located = fs.host_of(fs.resolve(_jail.normalise(path), follow_final=follow))
        if located is None:
            if write:
                raise _jail.JailPathError("denied", "read-only file system")
            return None
        if write and not located[0].writable:
            raise _jail.JailPathError("denied", "read-only file system")
        return located[1], located[0]

    def _open_checked(self, host: str, mount: _jail.Mount | None, flags: int) -> int:
        fd = os.open(host, flags | os.O_CLOEXEC)
        if mount is not None:
            try:
                _jail.check_inside(fd, mount)
            except BaseException:
                os.close(fd)
                raise
        return fd

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path (not following a final symlink). Raises ``FileNotFound``."""
        box = self._live(sandbox_id, "stat")
        try:
            located = self._host(box, path, "stat", follow=False)
            if located is None:
                return await super().stat(sandbox_id, path)
            fd = self._open_checked(*located, os.O_PATH | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "stat", box, path) from exc
        return _file_info(path, st)

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        box = self._live(sandbox_id, "list_dir")
        try:
            located = self._host(box, path, "list_dir")
            if located is None:
                return await super().list_dir(sandbox_id, path)
            fd = self._open_checked(*located, os.O_RDONLY | os.O_DIRECTORY)
        except NotADirectoryError as exc:
            raise InvalidPath(
                f"not a directory: {path}", provider=self.name, op="list_dir", sandbox_id=box.id
            ) from exc
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "list_dir", box, path) from exc
        try:
            return _list_fd(fd, path)
        finally:
            os.close(fd)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents; an existing directory is fine."""
        box = self._live(sandbox_id, "mkdir")
        try:
            located = self._host(box, path, "mkdir", write=True)
            assert located is not None
            host, mount = located
            os.makedirs(host, exist_ok=True)
            os.close(self._open_checked(host, mount, os.O_RDONLY | os.O_DIRECTORY))
        except NotADirectoryError as exc:
            raise InvalidPath(
                f"a parent is not a directory: {path}",
                provider=self.name,
                op="mkdir",
                sandbox_id=box.id,
            ) from exc
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "mkdir", box, path) from exc

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        box = self._live(sandbox_id, "remove")
        try:
            located = self._host(box, path, "remove", follow=False, write=True)
            assert located is not None
            host, mount = located
            if mount is not None and host == mount.host:
                raise _jail.JailPathError("denied", f"{mount.jail} itself cannot be removed")
            parent, name = os.path.split(host)
            dir_fd = self._open_checked(parent, mount, os.O_RDONLY | os.O_DIRECTORY)
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "remove", box, path) from exc
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)
            elif not recursive:
                raise IsADirectoryError(path)
            else:
                # Through the checked parent's descriptor, so a swapped path cannot redirect it;
                # rmtree itself works on descriptors below and never follows a symlink.
                tree = f"/proc/self/fd/{dir_fd}/{name}"
                await anyio.to_thread.run_sync(shutil.rmtree, tree)
        except OSError as exc:
            raise self._path_error(exc, "remove", box, path) from exc
        finally:
            os.close(dir_fd)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """Whole content of a file. Raises ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``."""
        box = self._live(sandbox_id, "read_file")
        try:
            host, mount = self._locate(box, path, "read_file")
            fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "read_file", box, path) from exc
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(
                    f"is a directory: {path}", provider=self.name, op="read_file", sandbox_id=box.id
                )
            if mount is not None:
                try:
                    _jail.check_inside(fd, mount)
                except _jail.JailPathError as exc:
                    raise self._path_error(exc, "read_file", box, path) from exc
                if not mount.writable and not _jail.jail_may_read(st):
                    raise PermissionDenied(
                        f"read_file {path}: permission denied",
                        provider=self.name,
                        op="read_file",
                        sandbox_id=box.id,
                    )
            if st.st_size <= _SMALL_FILE:
                return _read_all(fd, st.st_size)
            return await anyio.to_thread.run_sync(_read_all, fd, st.st_size)
        finally:
            os.close(fd)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file atomically (temp file + rename), creating parent directories.

        In a jail, only ``/workspace`` and ``/tmp`` are writable (else ``PermissionDenied``).
        """
        box = self._live(sandbox_id, "write_file")
        try:
            host, mount = self._locate(box, path, "write_file")
            if mount is not None and host == mount.host:
                raise IsADirectoryError(path)
            parent, name = os.path.split(host)
            os.makedirs(parent, exist_ok=True)
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "write_file", box, path) from exc
        try:
            if mount is not None:
                _jail.check_inside(dir_fd, mount)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise IsADirectoryError(path)
            if len(data) <= _SMALL_FILE:
                _write_atomic(dir_fd, name, data)
            else:
                await anyio.to_thread.run_sync(_write_atomic, dir_fd, name, data)
        except (OSError, _jail.JailPathError) as exc:
            raise self._path_error(exc, "write_file", box, path) from exc
        finally:
            os.close(dir_fd)


class _Run:
    """A spawned command of a sandbox, from launch to reaping."""

    def __init__(
        self,
        backend: LocalBackend,
        box: _Box,
        child: Child,
        record: _Record,
        deadline: float | None,
        reason: str,
        timeout: float | None,
    ) -> None:
        self.backend, self.box, self.child, self.record = backend, box, child, record
        self.deadline, self.reason, self.timeout = deadline, reason, timeout
        self.finished = False
        self.closed = False

    def finish(self) -> tuple[int, int | None]:
        """Reap the (exited or killed) command: ``(exit_code, signal)``."""
        returncode = self.child.finish()
        self.finished = True
        code, sig = exit_status(returncode)
        if self.box.isolation == "bwrap" and sig is None and 128 < code <= 128 + 64:
            # bwrap reports a command killed by signal N as exit status 128+N.
            sig = code - 128
        return code, sig

    def timed_out(self, deadline: Deadline) -> CommandTimeout:
        """Reap the killed command; the error to raise."""
        self.finish()
        where: dict[str, Any] = {
            "provider": self.backend.name,
            "op": "exec",
            "sandbox_id": self.box.id,
            "timeout": self.timeout,
        }
        if deadline.reason == "expired":
            return CommandTimeout(
                f"sandbox {self.box.id} reached its TTL while the command ran; killed", **where
            )
        return CommandTimeout(
            f"command timed out after {self.timeout}s; its process tree was killed", **where
        )

    def close(self) -> None:
        """Kill whatever still runs (an abandoned stream), reap, and forget the command."""
        if self.closed:
            return
        self.closed = True
        if not self.finished:
            self.child.kill()
            self.child.finish()
        self.record.remove()
        self.box.running -= 1
        self.backend._touch(self.box, time.time())


class _Record:
    """The on-disk trace of a running command, written only if it runs past ``_RECORD_AFTER``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            _RECORD_AFTER, self._write
        )

    def _write(self) -> None:
        self.timer = None
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.written = True
        except OSError:
            pass

    def remove(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.written:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.written = False


_KINDS: dict[int, FileType] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
}


def _file_info(path: str, st: os.stat_result) -> FileInfo:
    return FileInfo(
        path=path,
        name=posixpath.basename(path.rstrip("/")) or "/",
        type=_KINDS.get(stat.S_IFMT(st.st_mode), "other"),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime=st.st_mtime,
    )


def _list_fd(dir_fd: int, path: str) -> builtins.list[FileInfo]:
    base = path.rstrip("/")
    entries = []
    with os.scandir(dir_fd) as listing:
        for entry in listing:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while listing
                continue
            entries.append(_file_info(f"{base}/{entry.name}", st))
    return sorted(entries, key=lambda e: e.name)


def _read_all(fd: int, size_hint: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, max(size_hint, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``name`` in chunks, then rename it into place."""
    tmp = f".{name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            # Replacing a file keeps its permission bits (an executable stays executable).
            os.fchmod(fd, stat.S_IMODE(os.stat(name, dir_fd=dir_fd).st_mode))
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK])
            view = view[written:]
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
