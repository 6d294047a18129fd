"""The guard: a backend asking a policy before, and auditing after, every operation of another."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..backend import BaseBackend, Diagnostic, close_stream
from ..derived import DOWNLOAD_LIMIT, LISTING_LIMIT
from ..errors import PolicyDenied
from ..models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    FoundFiles,
    GrepResult,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from ..policy import Action, Policy
from ..process import ProcessHandle
from ._log import AuditLog, AuditRecord


def _exec_summary(result: ExecResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "exit_code": result.exit_code,
        "stdout_bytes": len(result.stdout_bytes),
        "stderr_bytes": len(result.stderr_bytes),
    }
    if result.signal is not None:
        summary["signal"] = result.signal
    if result.stdout_truncated or result.stderr_truncated:
        summary["truncated"] = True
    return summary


def _exec_arguments(command: Command, options: ExecOptions) -> dict[str, Any]:
    args: dict[str, Any] = {
        "command": command if isinstance(command, str) else list(command),
    }
    if options.cwd is not None:
        args["cwd"] = options.cwd
    if options.env:
        args["env"] = dict(options.env)
    if options.stdin is not None:
        args["stdin"] = options.stdin
    if options.timeout is not None:
        args["timeout"] = options.timeout
    if options.user is not None:
        args["user"] = options.user
    return args


class AuditingBackend(BaseBackend):
    """A backend that asks a policy before, and audits after, every operation of another one.

    Wraps ``inner`` (any :class:`BaseBackend`): create, connect, list, destroy, exec,
    exec_stream, file operations (including the derived ones, forwarded to ``inner``'s own
    versions), ports, snapshots, pause/resume and sweep each produce one audit event. Before an
    operation runs, ``policy`` decides; a denial raises
    :class:`~agent_sandbox.errors.PolicyDenied` and is audited with decision ``"deny"``.
    ``name``, ``capabilities`` and ``options`` are the inner backend's.

    Args:
        inner: the backend doing the work (closed by :meth:`aclose`).
        audit: where events go; ``None`` for policy only.
        policy: what is allowed; ``None`` allows everything.
        secrets: env variable names whose values are redacted in events (besides those whose
            names look secret).
    """

    def __init__(
        self,
        inner: BaseBackend,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        self.inner = inner
        self.audit = audit if audit is not None else AuditLog()
        self.policy = policy
        self.secrets = tuple(secrets)
        self.options = inner.options
        self.capabilities: Capabilities = inner.capabilities
        # name/Options are class variables of a provider; this wrapper takes the inner one's.
        setattr(self, "name", inner.name)  # noqa: B010
        setattr(self, "Options", inner.Options)  # noqa: B010

    def __repr__(self) -> str:
        return f"AuditingBackend({self.inner!r})"

    @contextlib.contextmanager
    def _guard(
        self,
        op: str,
        sandbox_id: str | None,
        arguments: dict[str, Any] | None,
        *,
        command: Command | None = None,
        path: str | None = None,
        current: bool = True,
    ) -> Iterator[AuditRecord]:
        with self.audit.span(
            op,
            sandbox_id=sandbox_id,
            provider=self.inner.name,
            arguments=arguments,
            secrets=self.secrets,
            current=current,
        ) as record:
            if self.policy is not None:
                decision = self.policy.decide(
                    Action(
                        op=op,
                        sandbox_id=sandbox_id,
                        input=arguments,
                        command=command
                        if command is None or isinstance(command, str)
                        else list(command),
                        path=path,
                    )
                )
                if not decision.allowed:
                    record.decision = "deny"
                    raise PolicyDenied(
                        f"denied by policy: {decision.reason}",
                        provider=self.inner.name,
                        op=op,
                        sandbox_id=sandbox_id,
                    )
            record.decision = "allow"
            yield record

    # -- primitives -------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """The inner backend's check."""
        self.inner.check_spec(spec)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create through the inner backend (policy op ``create``)."""
        arguments = spec.model_dump(mode="json", exclude_defaults=True)
        with self._guard("create", None, arguments) as record:
            info = await self.inner.create(spec)
            record.sandbox_id = info.id
            record.result = {"sandbox_id": info.id, "state": info.state}
        return info

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Connect through the inner backend (policy op ``connect``)."""
        with self._guard("connect", sandbox_id, None) as record:
            info = await self.inner.connect(sandbox_id)
            record.result = {"state": info.state}
        return info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """List through the inner backend (policy op ``list``)."""
        with self._guard("list", None, {"labels": dict(labels or {})}) as record:
            found = await self.inner.list(labels)
            record.result = {"count": len(found)}
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy through the inner backend (policy op ``destroy``)."""
        with self._guard("destroy", sandbox_id, None):
            await self.inner.destroy(sandbox_id)

    async def exec(self, sandbox_id: str, command: Command, options: ExecOptions) -> ExecResult:
        """Run through the inner backend's ``exec`` (policy op ``exec``, ``command`` checked)."""
        arguments = _exec_arguments(command, options)
        with self._guard("exec", sandbox_id, arguments, command=command) as record:
            result = await self.inner.exec(sandbox_id, command, options)
            record.result = _exec_summary(result)
        return result

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Stream through the inner backend (policy op ``exec_stream``); audited when it ends."""
        arguments = _exec_arguments(command, options)
        # The span is not made current across yields: the consumer may close the stream from
        # another context than the one that started it.
        with self._guard(
            "exec_stream", sandbox_id, arguments, command=command, current=False
        ) as record:
            counts = {"stdout_bytes": 0, "stderr_bytes": 0}
            stream = self.inner.exec_stream(sandbox_id, command, options)
            try:
                async for event in stream:
                    if event.kind == "exit":
                        record.result = {"exit_code": event.exit_code, **counts}
                        if event.signal is not None:
                            record.result["signal"] = event.signal
                    else:
                        counts[f"{event.kind}_bytes"] += len(event.data)
                    yield event
            except GeneratorExit:
                record.result = {"closed_early": True, **counts}
                raise
            finally:
                await close_stream(stream)

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start a background process through the inner backend (policy op ``start``,
        ``command`` checked); the record holds its ref."""
        arguments: dict[str, Any] = {"command": list(argv)}
        if options.cwd is not None:
            arguments["cwd"] = options.cwd
        if options.env:
            arguments["env"] = dict(options.env)
        if options.timeout is not None:
            arguments["timeout"] = options.timeout
        with self._guard("start", sandbox_id, arguments, command=argv) as record:
            handle = await self.inner.start(sandbox_id, argv, options)
            record.result = {"ref": handle.ref}
        return handle

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """Attach through the inner backend (policy op ``attach``)."""
        with self._guard("attach", sandbox_id, {"ref": ref}):
            return await self.inner.attach(sandbox_id, ref)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """List processes through the inner backend (policy op ``processes``)."""
        with self._guard("processes", sandbox_id, None) as record:
            found = await self.inner.processes(sandbox_id)
            record.result = {"count": len(found)}
        return found

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Read through the inner backend (policy op ``read_file``, ``path`` checked)."""
        with self._guard("read_file", sandbox_id, {"path": path}, path=path) as record:
            data = await self.inner.read_file(sandbox_id, path, max_bytes=max_bytes)
            record.result = {"bytes": len(data)}
        return data

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Write through the inner backend (policy op ``write_file``, ``path`` checked)."""
        arguments = {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        with self._guard("write_file", sandbox_id, arguments, path=path) as record:
            await self.inner.write_file(sandbox_id, path, data)
            record.result = {"bytes": len(data)}

    async def aclose(self) -> None:
        """Close the inner backend."""
        await self.inner.aclose()

    # -- derived, forwarded to the inner backend's own versions ---------------------------------

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """The inner backend's ``stat`` (policy op ``stat``)."""
        with self._guard("stat", sandbox_id, {"path": path}, path=path) as record:
            info = await self.inner.stat(sandbox_id, path)
            record.result = {"type": info.type, "bytes": info.size}
        return info

    async def exists(self, sandbox_id: str, path: str) -> bool:
        """The inner backend's ``exists`` (policy op ``exists``)."""
        with self._guard("exists", sandbox_id, {"path": path}, path=path) as record:
            found = await self.inner.exists(sandbox_id, path)
            record.result = {"exists": found}
        return found

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """The inner backend's ``list_dir`` (policy op ``list_dir``)."""
        with self._guard("list_dir", sandbox_id, {"path": path}, path=path) as record:
            entries = await self.inner.list_dir(sandbox_id, path)
            record.result = {"entries": len(entries)}
        return entries

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """The inner backend's ``remove`` (policy op ``remove``)."""
        arguments = {"path": path, "recursive": recursive}
        with self._guard("remove", sandbox_id, arguments, path=path):
            await self.inner.remove(sandbox_id, path, recursive=recursive)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """The inner backend's ``mkdir`` (policy op ``mkdir``)."""
        with self._guard("mkdir", sandbox_id, {"path": path}, path=path):
            await self.inner.mkdir(sandbox_id, path)

    async def upload_file(
        self,
        sandbox_id: str,
        local: Path,
        path: str,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """The inner backend's ``upload_file`` (policy op ``write_file``, ``path`` checked)."""
        arguments = {"path": path, "local": str(local)}
        with self._guard("write_file", sandbox_id, arguments, path=path):
            await self.inner.upload_file(sandbox_id, local, path, on_progress=on_progress)

    async def download_file(
        self,
        sandbox_id: str,
        path: str,
        local: Path,
        *,
        max_bytes: int = DOWNLOAD_LIMIT,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """The inner backend's ``download_file`` (policy op ``read_file``, ``path`` checked)."""
        arguments = {"path": path, "local": str(local)}
        with self._guard("read_file", sandbox_id, arguments, path=path):
            await self.inner.download_file(
                sandbox_id, path, local, max_bytes=max_bytes, on_progress=on_progress
            )

    async def realpath(self, sandbox_id: str, paths: Sequence[str]) -> builtins.list[str]:
        """The inner backend's ``realpath`` (policy op ``realpath``; it reads nothing, so no
        path rule applies)."""
        with self._guard("realpath", sandbox_id, {"paths": list(paths)}):
            return await self.inner.realpath(sandbox_id, paths)

    async def find(self, sandbox_id: str, root: str, *, limit: int = LISTING_LIMIT) -> FoundFiles:
        """The inner backend's ``find`` (policy op ``find``, ``root`` checked)."""
        with self._guard("find", sandbox_id, {"path": root}, path=root) as record:
            found = await self.inner.find(sandbox_id, root, limit=limit)
            record.result = {"count": len(found.paths), "truncated": found.truncated}
        return found

    async def grep(
        self, sandbox_id: str, pattern: str, path: str, *, limit: int = LISTING_LIMIT
    ) -> GrepResult:
        """The inner backend's ``grep`` (policy op ``grep``, ``path`` checked)."""
        arguments = {"pattern": pattern, "path": path}
        with self._guard("grep", sandbox_id, arguments, path=path) as record:
            found = await self.inner.grep(sandbox_id, pattern, path, limit=limit)
            record.result = {"count": len(found.matches), "truncated": found.truncated}
        return found

    async def read_lines(
        self, sandbox_id: str, path: str, start: int, end: int | None, *, max_bytes: int
    ) -> bytes:
        """The inner backend's ``read_lines`` (policy op ``read_file``, ``path`` checked)."""
        arguments = {"path": path, "start": start, "end": end}
        with self._guard("read_file", sandbox_id, arguments, path=path) as record:
            data = await self.inner.read_lines(sandbox_id, path, start, end, max_bytes=max_bytes)
            record.result = {"bytes": len(data)}
        return data

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """The inner backend's ``upload`` (policy op ``upload``, ``remote_dir`` checked)."""
        arguments = {"local_dir": str(local_dir), "path": remote_dir}
        with self._guard("upload", sandbox_id, arguments, path=remote_dir):
            await self.inner.upload(sandbox_id, local_dir, remote_dir)

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """The inner backend's ``download`` (policy op ``download``, ``remote_dir`` checked)."""
        arguments = {"path": remote_dir, "local_dir": str(local_dir)}
        with self._guard("download", sandbox_id, arguments, path=remote_dir):
            await self.inner.download(sandbox_id, remote_dir, local_dir)

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """The inner backend's ``sweep`` (policy op ``sweep``); the removed ids are the result."""
        with self._guard("sweep", None, None) as record:
            removed = await self.inner.sweep(now=now, labels=labels)
            record.result = {"removed": removed}
        return removed

    async def doctor(self) -> builtins.list[Diagnostic]:
        """The inner backend's checks (not audited: they touch no sandbox)."""
        return await self.inner.doctor()

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """The inner backend's ``expose_port`` (policy op ``expose_port``)."""
        with self._guard("expose_port", sandbox_id, {"port": port}) as record:
            url = await self.inner.expose_port(sandbox_id, port)
            record.result = {"url": url}
        return url

    async def snapshot(self, sandbox_id: str) -> str:
        """The inner backend's ``snapshot`` (policy op ``snapshot``)."""
        with self._guard("snapshot", sandbox_id, None) as record:
            snapshot_id = await self.inner.snapshot(sandbox_id)
            record.result = {"snapshot": snapshot_id}
        return snapshot_id

    async def pause(self, sandbox_id: str) -> None:
        """The inner backend's ``pause`` (policy op ``pause``)."""
        with self._guard("pause", sandbox_id, None):
            await self.inner.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        """The inner backend's ``resume`` (policy op ``resume``)."""
        with self._guard("resume", sandbox_id, None):
            await self.inner.resume(sandbox_id)
