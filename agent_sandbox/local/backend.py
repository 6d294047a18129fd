"""The ``local`` provider: sandboxes as directories on this host, commands as host processes.

Each sandbox is a directory under the backend's ``root`` (see ``_store``); file operations are
done host-side (``_files``) and commands are host processes (``_exec``, ``_process``).

With bubblewrap (``isolation="bwrap"``, the default when ``bwrap`` is on PATH) every command runs
in a fresh jail: read-only system, the workspace at ``/workspace``, the private tmp at ``/tmp``,
new user, pid, ipc, uts and (for network policy ``none``) network namespaces, uid 1000 without
capabilities. With ``isolation="none"`` commands run directly on the host in the workspace
directory: nothing is confined, and the backend says so (a warning, ``Capabilities.isolated``
false).
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..backend import BaseBackend, Diagnostic, ProviderOptions
from ..errors import ConfigError
from ..models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    FileInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from ..process import ProcessHandle
from . import _background, _cgroup, _confine, _jail, _reaper, _user
from ._exec import Launcher
from ._files import Files
from ._store import ROOT_FOR_ROOT, Store

log = logging.getLogger("agent_sandbox.local")


def _user_problem() -> str | None:
    """Why a root client cannot run sandboxes as unprivileged uids here, if it cannot."""
    if not _user.dedicated():
        return None
    if _user.find_setpriv() is None:
        return (
            "running as root, commands must drop to an unprivileged uid with setpriv "
            "(util-linux), which is not installed"
        )
    try:
        _user.candidates()
    except _user.UserError as exc:
        return f"running as root, sandboxes need unprivileged uids of their own, but {exc}"
    return None


def default_root() -> Path:
    """``$XDG_STATE_HOME/agent-sandbox/local``, else ``~/.local/state/agent-sandbox/local``;
    for root ``/var/lib/agent-sandbox/local`` (its sandboxes' own uids must reach it)."""
    if _user.dedicated():
        return Path(ROOT_FOR_ROOT)
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
    pids_limit: int | None = Field(default=4096, gt=0)
    """Most processes (threads included) a sandbox may run at once, a fork-bomb guard;
    ``None`` for no limit. See ``docs/providers/local.md`` for how it is enforced."""


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
        self._warned = False
        self._warned_pids = False
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
        self._user_problem = _user_problem()
        self.store = Store(self.root, self.bwrap)
        self.files = Files(self.store)
        self.launcher = Launcher(self.store)
        jailed = self.isolation == "bwrap"
        found_cgroups = _cgroup.detect()
        self.cgroups = found_cgroups if isinstance(found_cgroups, _cgroup.Hierarchy) else None
        self.pids_by, self.pids_detail = _confine.pids_by(self.cgroups, self.isolation)
        self.capabilities = Capabilities(
            network_none=jailed,
            isolated=jailed,
            resources=self.cgroups is not None and self.cgroups.resources,
            persistent=True,
            stdin=True,
            signals=True,
            stdin_streaming=True,
            reattach=True,
        )

    def check_spec(self, spec: SandboxSpec) -> None:
        """As :meth:`BaseBackend.check_spec`; without cgroups ``memory_mib`` alone is still
        honoured, as an address-space limit (``ulimit -v``), while ``cpus`` is ``Unsupported``."""
        no_cgroups = self.cgroups is None or not self.cgroups.resources
        if no_cgroups and spec.memory_mib is not None and spec.cpus is None:
            spec = spec.model_copy(update={"memory_mib": None})
        super().check_spec(spec)

    async def doctor(self) -> builtins.list[Diagnostic]:
        """Check the state root, the isolation in use and whether resource limits work."""
        checks: builtins.list[Diagnostic] = []
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            writable = os.access(self.root, os.W_OK | os.X_OK)
            detail = f"{self.root} ({len(await self.list())} sandboxes)"
            blocked = _user.unreachable(str(self.root.parent)) if _user.dedicated() else None
            if blocked is not None:
                writable = False
                detail += f"; the sandboxes' own uids cannot reach it ({blocked} is not o+x)"
            checks.append(Diagnostic("root", writable, detail))
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
        if _user.dedicated():
            checks.append(
                Diagnostic(
                    "user",
                    self._user_problem is None,
                    self._user_problem
                    or "running as root: each sandbox runs as an unprivileged uid of its own",
                )
            )
        found = self.cgroups
        if found is not None and found.resources:
            checks.append(Diagnostic("resources", True, f"cgroup v{found.version}"))
        else:
            why = found.missing.get("cpu") or found.missing.get("memory") if found else None
            checks.append(
                Diagnostic(
                    "resources",
                    True,
                    f"cpus unsupported, memory as ulimit -v ({why or _cgroup.detect()})",
                )
            )
        options = self.options
        limit = options.pids_limit if isinstance(options, LocalOptions) else None
        if limit is None:
            checks.append(Diagnostic("pids", True, "no process-count limit (pids_limit=None)"))
        else:
            checks.append(
                Diagnostic(
                    "pids",
                    self.pids_by is not None,
                    f"at most {limit} processes: {self.pids_detail}"
                    if self.pids_by is not None
                    else f"NOT limited: {self.pids_detail}",
                )
            )
        return checks

    # -- lifecycle --------------------------------------------------------------------------

    def _warn_unisolated(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "local sandboxes run with isolation='none' (%s): commands run directly on this "
                "host as %s and are NOT isolated from it",
                self._fallback_reason,
                "an unprivileged uid of their own (not root)" if _user.dedicated() else "your user",
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
        self._refuse(spec)
        if self._user_problem is not None:
            raise ConfigError(
                f"cannot create a sandbox: {self._user_problem}", provider=self.name, op="create"
            )
        pids = self._pids_limit()
        if self.isolation == "none":
            self._warn_unisolated()
        info = self.store.create(spec, self.isolation, self.cgroups, pids)
        _reaper.ensure(str(self.root))  # ends it at its TTL even if no client is left then
        return info

    def _pids_limit(self) -> tuple[int, _confine.PidsBy] | None:
        """The process-count limit of new sandboxes and how it is enforced; ``Unsupported`` when
        one was set explicitly and cannot be, a warning when the default cannot be."""
        opts = self.options
        assert isinstance(opts, LocalOptions)
        if opts.pids_limit is None:
            return None
        if self.pids_by is not None:
            return opts.pids_limit, self.pids_by
        if "pids_limit" in opts.model_fields_set:
            raise self._unsupported(f"pids_limit here: {self.pids_detail}")
        if not self._warned_pids:
            self._warned_pids = True
            log.warning("local sandboxes' process count is NOT limited: %s", self.pids_detail)
        return None

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id (this process or another made it). Raises ``SandboxNotFound``."""
        return self.store.live(sandbox_id, "connect").info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Live (unexpired) sandboxes under ``root`` that carry all of ``labels``."""
        return self.store.list(labels)

    async def destroy(self, sandbox_id: str) -> None:
        """Kill the sandbox's commands and delete its directory. Idempotent."""
        await self.store.destroy(sandbox_id)

    def _retire(self, sandbox_id: str) -> str | None:
        return self.store.retire(sandbox_id)

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """Destroy every sandbox under ``root`` past its TTL (or idle timeout); return their ids.

        ``labels`` narrows the sweep to sandboxes carrying all of them. Also removes leftovers
        of interrupted destroys and creates. Commands still running in an expired sandbox are
        killed, whichever process started them.
        """
        return await self.store.sweep(now=now, labels=labels)

    # -- commands ---------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start a command (see :meth:`BaseBackend.start`): a host process held by this client,
        or with ``options.detached`` one under a supervisor of its own that any client can
        attach to. Raises ``SandboxNotFound`` for a gone or expired sandbox, ``FileNotFound``
        for a missing working directory."""
        return await self.launcher.start(sandbox_id, argv, options)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """The background process ``ref``. Raises ``ProcessNotFound``, ``SandboxNotFound``."""
        box = self.store.live(sandbox_id, "attach")
        return _background.attach(box, ref, box.isolation == "bwrap")

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The sandbox's background processes, running or ended, oldest first."""
        return _background.list_processes(self.store.live(sandbox_id, "processes"))

    # -- files ------------------------------------------------------------------------------

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path (not following a final symlink). Raises ``FileNotFound``."""
        info = await self.files.stat(sandbox_id, path)
        return info if info is not None else await super().stat(sandbox_id, path)

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        entries = await self.files.list_dir(sandbox_id, path)
        return entries if entries is not None else await super().list_dir(sandbox_id, path)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents; an existing directory is fine."""
        await self.files.mkdir(sandbox_id, path)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        await self.files.remove(sandbox_id, path, recursive=recursive)

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Content of a regular file, read as the sandbox's user. Raises ``FileNotFound``,
        ``IsADirectory``, ``PermissionDenied``, ``FileTooLarge``, ``InvalidPath`` (FIFO, device).
        """
        return await self.files.read_file(sandbox_id, path, max_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file as the sandbox's user, atomically (temp file + rename),
        creating parent directories; a replaced file keeps its mode and owner.

        In a jail, only ``/workspace`` and ``/tmp`` are writable (else ``PermissionDenied``).
        """
        await self.files.write_file(sandbox_id, path, data)
