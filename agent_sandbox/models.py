"""The data that crosses the contract: specs, results, events, infos, capabilities."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1024 * 1024
DEFAULT_OUTPUT_LIMIT = 10 * MiB
DEFAULT_READ_LIMIT = 100 * MiB
"""Largest file ``read_file`` returns unless the call asks for more (``max_bytes``)."""
DEFAULT_TTL_SECONDS = 3600.0
MAX_TTL_SECONDS = 365 * 24 * 3600.0
"""The longest TTL a spec accepts (a year): a sandbox must end by itself in finite time."""

Command = str | Sequence[str]
"""A shell string (run by ``sh -c``) or an argv list (run as is). Never converted one into the other."""


class _Model(BaseModel):
    # bytes travel through JSON as base64, so binary output survives model_dump_json().
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        defer_build=True,
    )


class NetworkPolicy(_Model):
    """What a sandbox may reach.

    ``none``: loopback only. ``allowlist``: only the hosts or CIDRs in ``allow``.
    ``open``: anything the host can reach.
    """

    mode: Literal["none", "allowlist", "open"] = "open"
    allow: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _allow_only_with_allowlist(self) -> NetworkPolicy:
        if self.allow and self.mode != "allowlist":
            raise ValueError(
                f"network allow list given with mode {self.mode!r}; use mode 'allowlist'"
            )
        if self.mode == "allowlist" and not self.allow:
            raise ValueError("network mode 'allowlist' needs at least one host or CIDR in 'allow'")
        return self

    def split(self) -> tuple[list[str], list[str]]:
        """``allow`` as CIDRs (normalised: ``10.0.0.1`` is ``10.0.0.1/32``) and host names."""
        cidrs, hosts = [], []
        for entry in self.allow:
            try:
                cidrs.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                hosts.append(entry)
        return cidrs, hosts


class SandboxSpec(_Model):
    """What to create. Fields a provider cannot honour raise ``Unsupported``; none is ignored."""

    image: str | None = None
    """Image or template; ``None`` is the provider's default."""
    cpus: float | None = Field(default=None, gt=0)
    memory_mib: int | None = Field(default=None, gt=0)
    disk_mib: int | None = Field(default=None, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    """Default working directory of commands and base of relative paths; provider default if unset."""
    labels: dict[str, str] = Field(default_factory=dict)
    ttl_seconds: float = Field(
        default=DEFAULT_TTL_SECONDS, gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False
    )
    """After this many seconds (at most a year) the sandbox ends itself, whether or not anyone
    destroys it."""
    idle_timeout_seconds: float | None = Field(
        default=None, gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False
    )
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    ports: tuple[int, ...] = ()
    """Ports to make reachable from outside with ``expose_port``."""
    user: str | None = None
    """Default user of commands; provider default if unset."""
    snapshot: str | None = None
    """Create from this snapshot id (see ``Sandbox.snapshot``) instead of ``image``."""


class ExecOptions(_Model):
    """How one command runs."""

    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    stdin: bytes | None = None
    timeout: float | None = Field(default=None, gt=0)
    """Seconds; on expiry the whole process tree is killed and ``CommandTimeout`` raised."""
    user: str | None = None
    output_limit: int = Field(default=DEFAULT_OUTPUT_LIMIT, ge=0)
    """Bytes kept per stream; the rest is discarded and the result flagged as truncated."""


class StartOptions(_Model):
    """How a provider starts one process (what :meth:`BaseBackend.start` receives).

    The core owns the rest of the command's life (deadline, output caps, exit normalisation);
    ``timeout`` is passed on only so a provider may also enforce it on its side, as a backstop
    for a client that dies.
    """

    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    stdin: bytes | None = None
    """Bytes fed to the process's stdin, which is then closed (unless ``stdin_open``)."""
    stdin_open: bool = False
    """Keep stdin open for ``write_stdin``/``close_stdin`` (``Capabilities.stdin_streaming``)."""
    detached: bool = False
    """The process outlives this client and can be attached by its ref; otherwise it belongs to
    the client and may be tied to it (the fast path ``exec`` takes)."""
    timeout: float | None = Field(default=None, gt=0)


class ProcessInfo(_Model):
    """A process started with ``Sandbox.start``, as ``Sandbox.processes()`` lists it."""

    ref: str
    """Pass to ``Sandbox.attach`` (from any client) to reach the process again."""
    command: tuple[str, ...] = ()
    running: bool = True
    exit_code: int | None = None
    started_at: datetime | None = None


class ExecResult(_Model):
    """The outcome of a finished command."""

    exit_code: int
    """Process exit status; ``128 + N`` when killed by signal ``N``."""
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration_s: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    signal: int | None = None
    """The signal that killed the process, when one did."""

    @property
    def stdout(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        """stderr decoded as UTF-8 (invalid bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        """True when the exit code is 0."""
        return self.exit_code == 0


class ExecEvent(_Model):
    """One step of a streamed command: a chunk of ``stdout``/``stderr``, then one ``exit``."""

    kind: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (invalid bytes replaced; a split character may show twice)."""
        return self.data.decode("utf-8", errors="replace")


FileType = Literal["file", "dir", "symlink", "other"]


class FileInfo(_Model):
    """One entry of a sandbox's filesystem."""

    path: str
    name: str
    type: FileType
    size: int
    mode: int
    """Permission bits, e.g. ``0o644``."""
    mtime: float
    """Seconds since the epoch."""


class FoundFiles(_Model):
    """What ``find`` found: absolute paths, sorted; ``truncated`` when the list was cut."""

    paths: list[str] = Field(default_factory=list)
    truncated: bool = False


class GrepMatch(_Model):
    """One matching line."""

    path: str
    line: int
    """1-based line number."""
    text: str


class GrepResult(_Model):
    """What ``grep`` found, sorted by path and line; ``truncated`` when the answer was cut."""

    matches: list[GrepMatch] = Field(default_factory=list)
    truncated: bool = False


SandboxState = Literal["running", "paused", "stopped", "unknown"]


class SandboxInfo(_Model):
    """What is known of a sandbox; enough to reconnect to it."""

    id: str
    provider: str
    state: SandboxState = "running"
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    image: str | None = None
    workdir: str = "/"
    metadata: dict[str, str] = Field(default_factory=dict)
    """Provider-specific facts (host, template, runtime) for people, not for code."""


class Capabilities(_Model):
    """What a provider can do beyond the required primitives. A ``False`` here is a skip marker
    in the conformance suite and an ``Unsupported`` error at run time."""

    network_none: bool = False
    network_allowlist: bool = False
    expose_port: bool = False
    snapshot: bool = False
    pause: bool = False
    exec_user: bool = False
    stdin: bool = True
    resources: bool = False
    """cpus / memory_mib are honoured."""
    gpu: bool = False
    persistent: bool = True
    """A sandbox survives the client: ``connect`` works from another process."""
    isolated: bool = True
    """Sandboxes cannot see the host's or each other's files."""
    signals: bool = True
    """A command killed by a signal reports it (``exit_code`` 128+N, ``signal`` N)."""
    stdin_streaming: bool = False
    """A started process's stdin stays open for ``write_stdin``/``close_stdin``."""
    reattach: bool = False
    """A started process can be attached by its ref from another client, and is listed by
    ``processes()``."""
