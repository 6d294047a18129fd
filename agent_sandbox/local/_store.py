"""The local provider's store: each sandbox's directory and ``state.json``, its expiry, and
killing its commands.

A sandbox is a directory under the store's root holding ``workspace/`` (the workdir), ``tmp/``
(a private /tmp), ``procs/`` (one record per running command, so another process's destroy or
sweep can find and kill it) and ``state.json`` (id, spec, labels, times, isolation), which is
what makes ``connect`` work from another process or after a restart.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from ..errors import ConfigError, ProviderError, SandboxNotFound
from ..models import SandboxInfo, SandboxSpec
from . import _cgroup, _confine, _jail, _user
from ._confine import Confinement
from ._process import has_marker, kill_marked, killpg

ID_RE = re.compile(r"^loc-[0-9a-f]{20}$")
_TRASH_RE = re.compile(r"^\.trash-(loc-[0-9a-f]{20})-[0-9a-f]{8}$")
"""A sandbox's directory moved aside by a destroy: ``.trash-ID-RANDOM``."""
_STATE = "state.json"
_ACTIVITY = "activity"
MARK_SANDBOX = "AGENT_SANDBOX_ID"
MARK_EXEC = "AGENT_SANDBOX_EXEC"
PROVIDER = "local"
_GROUPS_EMPTY_WITHIN = 30.0
ROOT_FOR_ROOT = "/var/lib/agent-sandbox/local"
"""The default root of a client running as root (reachable by the sandboxes' own uids)."""


@dataclass
class Box:
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
    confinement: Confinement = field(default_factory=Confinement)
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    wrap: list[str] = field(default_factory=list)
    """argv run before the command (or its jail): joins the sandbox's cgroups, sets its
    rlimits, drops to its host user."""
    inner: list[str] = field(default_factory=list)
    """argv run inside the jail before the command (its process-count limit, if set there)."""
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


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def atomic_write_small(path: str, data: bytes) -> None:
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def rmtree(path: str) -> None:
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


class Store:
    """The sandboxes under ``root``: their state on disk, cached per process."""

    def __init__(self, root: Path, bwrap: str | None) -> None:
        self.root = root
        self.bwrap = bwrap
        self._boxes: dict[str, Box] = {}

    def not_found(self, sandbox_id: str, op: str, why: str = "no such sandbox") -> SandboxNotFound:
        return SandboxNotFound(
            f"{why}: {sandbox_id}", provider=PROVIDER, op=op, sandbox_id=sandbox_id
        )

    def dir(self, sandbox_id: str) -> str:
        return os.path.join(self.root, sandbox_id)

    def load(self, sandbox_id: str, op: str) -> Box:
        """The sandbox, from cache when its state file is unchanged. Raises SandboxNotFound."""
        if not ID_RE.match(sandbox_id):
            raise self.not_found(sandbox_id, op)
        box = self._boxes.get(sandbox_id)
        path = os.path.join(self.dir(sandbox_id), _STATE)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            self._boxes.pop(sandbox_id, None)
            raise self.not_found(sandbox_id, op) from None
        if box is None or box.state_mtime != mtime:
            box = self._read_state(sandbox_id, path, mtime, op)
            self._boxes[sandbox_id] = box
        return box

    def _read_state(self, sandbox_id: str, path: str, mtime: int, op: str) -> Box:
        try:
            with open(path, "rb") as handle:
                state = json.load(handle)
            info = SandboxInfo.model_validate(state["info"])
            directory = self.dir(sandbox_id)
            box = Box(
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
                confinement=_confinement(state),
                state_mtime=mtime,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self.not_found(sandbox_id, op, "unreadable sandbox state") from exc
        self._prepare(box)
        return box

    def _prepare(self, box: Box) -> None:
        """Precompute what every exec of this sandbox needs (env, argv prefixes)."""
        try:
            box.wrap = box.confinement.outer()
        except _user.UserError as exc:
            raise ProviderError(
                f"sandbox {box.id} cannot run commands: {exc}", provider=PROVIDER, sandbox_id=box.id
            ) from exc
        box.inner = box.confinement.inner()
        if box.isolation == "bwrap":
            bwrap = self.bwrap or _jail.find_bwrap()
            if bwrap is None:
                raise ProviderError(
                    f"sandbox {box.id} was created with bubblewrap, which is no longer on PATH",
                    provider=PROVIDER,
                    sandbox_id=box.id,
                )
            box.prefix = _jail.bwrap_prefix(
                bwrap, box.workspace, box.tmp, share_net=box.network != "none"
            )
            for key, value in box.env.items():
                box.prefix += ["--setenv", key, value]
            box.fs = _jail.JailFS(box.workspace, box.tmp)
        else:
            box.env = {**box.env, MARK_SANDBOX: box.id}

    def live(self, sandbox_id: str, op: str) -> Box:
        """The sandbox if it exists and has not expired; an expired one has its commands killed."""
        box = self.load(sandbox_id, op)
        now = time.time()
        if now >= self.expiry(box, now):
            self.kill_all(box)
            self._boxes.pop(sandbox_id, None)
            raise self.not_found(sandbox_id, op, "sandbox expired")
        self.touch(box, now)
        return box

    def touch(self, box: Box, now: float) -> None:
        """Note activity (only sandboxes with an idle timeout care)."""
        if box.idle is None:
            return
        box.last_active = now
        if now - box.last_flush > min(1.0, box.idle / 4):
            box.last_flush = now
            with contextlib.suppress(OSError):
                os.utime(os.path.join(box.dir, _ACTIVITY))

    def expiry(self, box: Box, now: float) -> float:
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

    def kill_all(self, box: Box) -> None:
        """Kill every running command of a sandbox, from this process or any other."""
        self._kill_dir(box.id, box.dir)

    def create(
        self,
        spec: SandboxSpec,
        isolation: Literal["bwrap", "none"],
        cgroups: _cgroup.Hierarchy | None,
        pids: tuple[int, _confine.PidsBy] | None,
    ) -> SandboxInfo:
        """Make a new sandbox's directories and state, its host user (a root client), and its
        cgroups. ``pids`` is the process-count limit and how it is enforced."""
        sandbox_id = "loc-" + secrets.token_hex(10)
        directory = self.dir(sandbox_id)
        dedicated = _user.dedicated()
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            root_real = os.path.realpath(self.root)
            if dedicated:
                _open_to_sandbox_users(root_real)
            directory = os.path.join(root_real, sandbox_id)
            # A dedicated uid must pass through the sandbox's directory (never read it).
            os.mkdir(directory, 0o711 if dedicated else 0o700)
            for sub in ("workspace", "tmp", "procs"):
                os.mkdir(os.path.join(directory, sub), 0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create a sandbox under {self.root}: {exc}", provider=PROVIDER, op="create"
            ) from exc
        workspace = os.path.join(directory, "workspace")
        tmp = os.path.join(directory, "tmp")
        state: dict[str, Any] = {}
        uid: int | None = None
        try:
            if dedicated:
                uid = _user.allocate(root_real, sandbox_id)
                for sub in (workspace, tmp):
                    os.chown(sub, uid, uid)
            workdir = _make_workdir(isolation, spec.workdir, workspace, tmp, uid)
            created = utcnow()
            expires = created.timestamp() + spec.ttl_seconds
            if isolation == "bwrap":
                env = {"PATH": _jail.JAIL_PATH, "HOME": _jail.WORKSPACE, "LANG": "C.UTF-8"}
            else:
                path = os.environ.get("PATH") or os.defpath
                if uid is not None:  # only what the sandbox's own uid can search
                    path = ":".join(d for d in path.split(":") if d and not _user.unreachable(d))
                env = {
                    "PATH": path,
                    "HOME": workspace,
                    "LANG": os.environ.get("LANG") or "C.UTF-8",
                    "TMPDIR": tmp,
                }
            env.update(spec.env)
            info = SandboxInfo(
                id=sandbox_id,
                provider=PROVIDER,
                state="running",
                labels=dict(spec.labels),
                created_at=created,
                expires_at=datetime.fromtimestamp(expires, timezone.utc),
                image=None,
                workdir=workdir,
                metadata={"isolation": isolation, "path": directory},
            )
            state.update(
                {
                    "version": 1,
                    "id": sandbox_id,
                    "spec": spec.model_dump(mode="json"),
                    "isolation": isolation,
                    "expires": expires,
                    "idle": spec.idle_timeout_seconds,
                    "workdir": workdir,
                    "network": spec.network.mode,
                    "env": env,
                }
            )
            if uid is not None:
                state["uid"] = uid
                info.metadata["uid"] = str(uid)
            if spec.idle_timeout_seconds is not None:
                Path(directory, _ACTIVITY).touch()
            limits: dict[str, Any] = {}
            if cgroups is not None and cgroups.resources:
                limits.update(cpus=spec.cpus, memory_mib=spec.memory_mib)
            elif spec.memory_mib is not None:
                state["rlimit_as"] = spec.memory_mib * 1024 * 1024
            if pids is not None:
                count, by = pids
                info.metadata["pids_limit"] = str(count)
                if by == "cgroup":
                    limits["pids"] = count
                else:
                    state["nproc" if by == "uid" else "nproc_jail"] = count
            if cgroups is not None and any(v is not None for v in limits.values()):
                state["cgroups"] = groups = _cgroup.create(
                    cgroups, group_name(sandbox_id), **limits
                )
                info.metadata["cgroups"] = ",".join(groups)
            state["info"] = info.model_dump(mode="json")
            atomic_write_small(
                os.path.join(directory, _STATE), json.dumps(state, indent=1).encode()
            )
        except _user.UserError as exc:
            rmtree(directory)
            raise ConfigError(
                f"cannot give the sandbox an unprivileged user: {exc}",
                provider=PROVIDER,
                op="create",
            ) from exc
        except BaseException:
            _cgroup.remove(state.get("cgroups") or [])
            rmtree(directory)
            if uid is not None:
                _user.release(root_real, uid, sandbox_id)
            raise
        self.load(sandbox_id, "create")
        return info

    def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Live (unexpired) sandboxes under ``root`` that carry all of ``labels``."""
        wanted = dict(labels or {})
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found = []
        now = time.time()
        for name in names:
            if not ID_RE.match(name):
                continue
            try:
                box = self.load(name, "list")
            except (SandboxNotFound, ProviderError):
                continue
            if now >= self.expiry(box, now):
                continue
            if all(box.info.labels.get(k) == v for k, v in wanted.items()):
                found.append(box.info)
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Kill the sandbox's commands and delete its directory. Idempotent."""
        if not ID_RE.match(sandbox_id):
            return
        trash = self.retire(sandbox_id)
        if trash is not None:
            await anyio.to_thread.run_sync(_finish, sandbox_id, trash)

    def retire(self, sandbox_id: str) -> str | None:
        """Move a sandbox's directory aside (from then on nobody can find or exec in it) and
        kill its commands; the directory to delete, or ``None`` when already gone. Given the
        name of a directory already moved aside (a destroy cut short), finish killing."""
        moved = _TRASH_RE.match(sandbox_id)
        if moved:
            trash = os.path.join(self.root, sandbox_id)
            self._release(moved[1], trash)
            return trash
        if not ID_RE.match(sandbox_id):
            return None
        self._boxes.pop(sandbox_id, None)
        trash = os.path.join(self.root, f".trash-{sandbox_id}-{secrets.token_hex(4)}")
        try:
            os.rename(self.dir(sandbox_id), trash)
        except FileNotFoundError:
            return None
        self._release(sandbox_id, trash)
        return trash

    def _release(self, sandbox_id: str, directory: str) -> None:
        """Kill the processes of a sandbox moved aside, remove its cgroups, delete what its uid
        left in the host's shared directories, free its uid."""
        confinement = self._kill_dir(sandbox_id, directory)
        _cgroup.remove(confinement.cgroups)
        if confinement.uid is not None:
            _user.scrub(confinement.uid)
            _user.release(str(self.root), confinement.uid, sandbox_id)

    def _kill_dir(self, sandbox_id: str, directory: str) -> Confinement:
        """Kill every process of the sandbox: all of its dedicated uid's (a root client), all in
        its cgroups, the commands recorded in ``directory/procs`` (checked by their marker, so a
        reused pid is left alone) and any process still carrying the sandbox's marker; returns
        the sandbox's confinement (its cgroups and uid, to release)."""
        confinement = Confinement()
        with (
            contextlib.suppress(OSError, ValueError, AttributeError, TypeError),
            open(os.path.join(directory, _STATE), "rb") as handle,
        ):
            confinement = _confinement(json.load(handle))
        if not confinement.cgroups:  # state lost: the groups are found by their name
            confinement = replace(confinement, cgroups=_cgroup.named(group_name(sandbox_id)))
        if confinement.uid is not None:
            _user.kill_all(confinement.uid)
        for group in confinement.cgroups:
            _cgroup.kill_all(group)
        procs = os.path.join(directory, "procs")
        try:
            records = os.listdir(procs)
        except OSError:
            records = []
        for record in records:
            pid_text, _, nonce = record.partition(".")
            if pid_text.isdigit() and has_marker(int(pid_text), f"{MARK_EXEC}={nonce}".encode()):
                killpg(int(pid_text))
        kill_marked(f"{MARK_SANDBOX}={sandbox_id}".encode())
        return confinement

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """Destroy every sandbox under ``root`` past its TTL (or idle timeout); return their ids.

        ``labels`` narrows the sweep to sandboxes carrying all of them. Also removes leftovers
        of interrupted destroys and creates. Commands still running in an expired sandbox are
        killed, whichever process started them.
        """
        wanted = dict(labels or {})
        moment = (now or utcnow()).timestamp()
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        removed = []
        for name in names:
            path = os.path.join(self.root, name)
            moved = _TRASH_RE.match(name)
            if moved:
                self.retire(name)  # a destroy cut short: finish it (cgroups and uid too)
                await anyio.to_thread.run_sync(_finish, moved[1], path)
                continue
            if not ID_RE.match(name):
                continue
            try:
                box = self.load(name, "sweep")
            except SandboxNotFound:
                # No readable state: a create that died half-way (give it time to finish).
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(path).st_mtime > 600:
                        await self.destroy(name)
                continue
            except ProviderError:
                continue
            if any(box.info.labels.get(k) != v for k, v in wanted.items()):
                continue
            if moment >= self.expiry(box, moment):
                await self.destroy(name)
                removed.append(name)
        self._sweep_claims()
        return removed

    def _sweep_claims(self) -> None:
        """Free the uids still claimed by sandboxes that are gone (a destroy that was cut
        short), killing whatever still runs as them first."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for uid, sandbox_id in _user.claims(str(self.root)).items():
            if sandbox_id in names or any(n.startswith(f".trash-{sandbox_id}-") for n in names):
                continue
            _user.kill_all(uid)
            _cgroup.end(group_name(sandbox_id))
            _user.scrub(uid)
            _user.release(str(self.root), uid, sandbox_id)


def _make_workdir(
    isolation: Literal["bwrap", "none"],
    wanted: str | None,
    workspace: str,
    tmp: str,
    uid: int | None,
) -> str:
    if isolation == "bwrap":
        if wanted is None:
            return _jail.WORKSPACE
        path = _jail.normalise(wanted)
        fs = _jail.JailFS(workspace, tmp)
        located = fs.host_of(path)
        if located is None:
            raise ConfigError(
                f"workdir {wanted!r} must be under /workspace or /tmp (or exist read-only)",
                provider=PROVIDER,
                op="create",
            )
        mount, host = located
        if mount.writable:
            _make_owned(mount.host, host, uid)
        elif not os.path.isdir(host):
            raise ConfigError(f"workdir {wanted!r} does not exist", provider=PROVIDER, op="create")
        return path
    if wanted is None:
        return workspace
    path = _jail.normalise(wanted)
    if path == _jail.WORKSPACE or path.startswith(_jail.WORKSPACE + "/"):
        host = workspace + path[len(_jail.WORKSPACE) :]
        _make_owned(workspace, host, uid)
        return host
    if not os.path.isdir(path):
        raise ConfigError(f"workdir {wanted!r} does not exist", provider=PROVIDER, op="create")
    return path


def _make_owned(base: str, path: str, uid: int | None) -> None:
    """``os.makedirs(path)`` below ``base``, the new directories owned by ``uid`` (if given).

    Only at create, when nothing runs in the sandbox yet to race with.
    """
    os.makedirs(path, exist_ok=True)
    if uid is None:
        return
    while path != base and path.startswith(base + "/"):
        os.chown(path, uid, uid, follow_symlinks=False)
        path = os.path.dirname(path)


def _open_to_sandbox_users(root: str) -> None:
    """As root: let the sandboxes' dedicated uids pass through ``root`` (search, not list), and
    check that they can reach it at all."""
    mode = os.stat(root).st_mode
    if not mode & stat.S_IXOTH:
        os.chmod(root, stat.S_IMODE(mode) | stat.S_IXOTH)
    blocked = _user.unreachable(root)
    if blocked is not None:
        raise ConfigError(
            f"the sandboxes of a root client run as an unprivileged user, which cannot reach "
            f"{root}: other users may not search {blocked}. Choose a root they can reach (the "
            f"default for root is {ROOT_FOR_ROOT}) or allow it (chmod o+x {blocked})",
            provider=PROVIDER,
            op="create",
        )


def _finish(sandbox_id: str, trash: str) -> None:
    """The slow end of a destroy, off the event loop: the sandbox's cgroups, once their last
    killed process has left (which takes a while on a loaded machine), and its directory."""
    _cgroup.remove(_cgroup.named(group_name(sandbox_id)), wait=_GROUPS_EMPTY_WITHIN)
    rmtree(trash)


def group_name(sandbox_id: str) -> str:
    return f"asb-{sandbox_id}"


def _confinement(state: dict[str, Any]) -> Confinement:
    return Confinement(
        uid=state.get("uid"),
        cgroups=[str(g) for g in state.get("cgroups") or []],
        rlimit_as=state.get("rlimit_as"),
        nproc=state.get("nproc"),
        nproc_jail=state.get("nproc_jail"),
    )
