"""``ModalBackend``: the agent-sandbox contract on Modal's official ``modal`` SDK.

How the contract maps (details and limits in ``docs/providers/modal.md``):

* create: ``Sandbox.create(app=App.lookup(app_name, create_if_missing=True), image=, env=,
  timeout=ttl (Modal's native lifetime, at most 24 h), idle_timeout=, workdir=, cpu=, memory=,
  encrypted_ports=ports, tags=labels, name=)``; network ``none`` -> ``block_network``,
  ``allowlist`` -> ``outbound_cidr_allowlist`` (addresses and CIDRs) and
  ``outbound_domain_allowlist`` (host names); ``snapshot`` and ``image`` ids -> ``Image.from_id``,
  other images -> ``Image.from_registry``. Every create is named after a key of its own (also a
  tag), so a retry that meets the name finds the first attempt's sandbox, and a create that
  finally fails terminates whatever carries the key.
* processes: the task command router through the SDK (:mod:`._sdk`, :mod:`._process`): argv
  only, stdout and stderr apart as they come, stdin streamed, exact exit codes and signals,
  attach from any client (output replayed from the start), ``processes()`` from a registry in the
  sandbox.
* files: ``sb.filesystem`` (``write_bytes``, ``list_files``, ``stat``, ``make_directory``,
  ``remove``), which acts as root, the sandbox's default user; reads run the same in-sandbox tool
  as ``read_bytes``, streamed and bounded.
* ``expose_port`` -> ``sb.tunnels()``; ``snapshot`` -> ``sb.snapshot_filesystem()`` (an image id).
* every ``modal`` exception is translated into the agent-sandbox error hierarchy (:mod:`._errors`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from pydantic import Field, SecretStr

from agent_sandbox import file_access, tree
from agent_sandbox import labels as _labels
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.errors import (
    ConfigError,
    FileTooLarge,
    SandboxError,
    SandboxNotFound,
    translating,
)
from agent_sandbox.models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    ExecOptions,
    FileInfo,
    FileType,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from agent_sandbox.process import ProcessHandle
from agent_sandbox.retry import retry

from . import _process
from ._errors import NAME, process_not_found, rows

if TYPE_CHECKING:
    import modal

MAX_TTL_SECONDS = 24 * 3600
"""Modal ends a sandbox after at most 24 hours."""
SERVER_TIMEOUT_GRACE = 30
"""Seconds past a command's timeout after which Modal kills it, should this client be gone."""
FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
"""Modal's in-sandbox file tool, behind ``sb.filesystem``."""
FS_ERROR_LIMIT = 64 * 1024
"""Bytes of the file tool's error report kept."""
REGISTRY_LIMIT = 1 << 20
"""Bytes of the in-sandbox process registry read (its newest)."""
MAX_LISTED_PROCESSES = 1000
"""Processes ``processes()`` polls at most (the newest): the registry is the sandbox's to write."""
_TYPES: dict[str, FileType] = {"file": "file", "directory": "dir", "symlink": "symlink"}


class ModalOptions(ProviderOptions):
    """Options of the Modal provider (``[modal]`` in ``agent-sandbox.toml``,
    ``AGENT_SANDBOX_MODAL_*``).

    Unset credentials fall back to the SDK's own configuration (``MODAL_TOKEN_ID`` and
    ``MODAL_TOKEN_SECRET``, or ``~/.modal.toml``); the server is the SDK's (``MODAL_SERVER_URL``).
    """

    provider: Literal["modal"] = "modal"
    token_id: SecretStr | None = None
    """Modal token id; default ``MODAL_TOKEN_ID`` or the active profile of ``~/.modal.toml``."""
    token_secret: SecretStr | None = None
    """Modal token secret; default ``MODAL_TOKEN_SECRET`` or ``~/.modal.toml``."""
    environment: str | None = None
    """Modal environment; default ``MODAL_ENVIRONMENT`` or the workspace's default."""
    app_name: str = "agent-sandbox"
    """The Modal App sandboxes belong to (created if missing)."""
    image: str | None = None
    """Registry image (``python:3.12-slim``) or image id (``im-...``) when the spec names none;
    default Modal's ``debian_slim``."""
    workdir: str = "/root"
    """Working directory of commands when the spec sets none."""
    create_attempts: int = Field(default=3, ge=1)
    """Attempts at creating a sandbox when a failure is transient."""
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    """First wait between create attempts; doubles each time."""

    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"app_name", "image", "workdir", "create_attempts", "retry_backoff_seconds"}
    )


class ModalBackend(BaseBackend):
    """Sandboxes on Modal (https://modal.com) through the ``modal`` SDK."""

    name = NAME
    Options = ModalOptions
    capabilities = Capabilities(
        network_none=True,
        network_allowlist=True,
        expose_port=True,
        snapshot=True,
        pause=False,
        exec_user=False,
        stdin=True,
        resources=True,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=True,
        stdin_streaming=True,
        reattach=True,
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: ModalOptions = self.options  # type: ignore[assignment]
        self._client: modal.Client | None = None
        self._owns_client = False
        self._app: modal.App | None = None
        self._setup = asyncio.Lock()
        self._boxes: dict[str, modal.Sandbox] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def _translating(
        self, op: str, sandbox_id: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return translating(NAME, op, sandbox_id, table=rows)

    async def _connection(self, op: str) -> tuple[modal.Client, modal.App]:
        """The SDK client and the app (made once per backend)."""
        import modal

        async with self._setup:
            if self._client is None or self._app is None:
                with self._translating(op):
                    if self.opts.token_id is not None and self.opts.token_secret is not None:
                        client = await modal.Client.from_credentials.aio(
                            self.opts.token_id.get_secret_value(),
                            self.opts.token_secret.get_secret_value(),
                        )
                        self._owns_client = True
                    else:
                        client = await modal.Client.from_env.aio()
                    self._client = client
                    self._app = await modal.App.lookup.aio(
                        self.opts.app_name,
                        create_if_missing=True,
                        client=client,
                        environment_name=self.opts.environment,
                    )
        return self._client, self._app

    async def _box(self, sandbox_id: str, op: str) -> modal.Sandbox:
        """The SDK's handle of a running sandbox: cached, or looked up by id."""
        box = self._boxes.get(sandbox_id)
        if box is not None:
            return box
        import modal

        client, _ = await self._connection(op)
        with self._translating(op, sandbox_id):
            box = await modal.Sandbox.from_id.aio(sandbox_id, client=client)
        if box.returncode is not None:
            raise SandboxNotFound(
                f"sandbox {sandbox_id} has ended", provider=NAME, op=op, sandbox_id=sandbox_id
            )
        self._boxes[sandbox_id] = box
        return box

    def _info(
        self, sandbox_id: str, tags: Mapping[str, str], image: str | None = None
    ) -> SandboxInfo:
        labels = _labels.public(tags)
        return SandboxInfo(
            id=sandbox_id,
            provider=NAME,
            state="running",
            labels=labels,
            created_at=_labels.created_at(labels),
            expires_at=_labels.expires_at(labels),
            image=image or None,
            workdir=tags.get(_labels.WORKDIR) or self.opts.workdir,
            metadata={"app": self.opts.app_name},
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what Modal cannot honour: a disk size, a lifetime over 24 hours."""
        super().check_spec(spec)
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib (Modal sandboxes have no disk size setting)")
        if spec.ttl_seconds > MAX_TTL_SECONDS:
            raise self._unsupported(
                f"ttl_seconds over {MAX_TTL_SECONDS} (Modal ends a sandbox within 24 hours)"
            )

    def _image(self, spec: SandboxSpec) -> modal.Image | None:
        import modal

        name = spec.snapshot or spec.image or self.opts.image
        if name is None:
            return None
        if name.startswith("im-"):
            return modal.Image.from_id(name)
        if spec.snapshot is not None:
            raise ConfigError(
                f"not a Modal snapshot id: {name!r} (snapshots are image ids, im-...)",
                provider=NAME,
                op="create",
            )
        return modal.Image.from_registry(name)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox; transient failures are retried under the same name."""
        import modal

        self.check_spec(spec)
        client, app = await self._connection("create")
        key = uuid.uuid4().hex
        workdir = spec.workdir or self.opts.workdir
        tags = {**spec.labels, _labels.CREATE_KEY: key, _labels.WORKDIR: workdir}
        name = f"asb-{key}"
        kwargs: dict[str, Any] = {
            "app": app,
            "client": client,
            "name": name,
            "tags": tags,
            "image": self._image(spec),
            "env": dict(spec.env) or None,
            "timeout": max(1, math.ceil(spec.ttl_seconds)),
            "workdir": workdir,
            "cpu": spec.cpus,
            "memory": spec.memory_mib,
            "encrypted_ports": list(spec.ports),
            **_network(spec),
        }
        if spec.idle_timeout_seconds is not None:
            kwargs["idle_timeout"] = max(1, math.ceil(spec.idle_timeout_seconds))

        async def attempt() -> modal.Sandbox:
            with self._translating("create"):
                try:
                    return await modal.Sandbox.create.aio(**kwargs)
                except modal.exception.AlreadyExistsError:
                    # An earlier attempt made it; only its answer was lost.
                    return await modal.Sandbox.from_name.aio(
                        self.opts.app_name,
                        name,
                        environment_name=self.opts.environment,
                        client=client,
                    )

        try:
            box = await retry(
                attempt,
                attempts=self.opts.create_attempts,
                backoff=self.opts.retry_backoff_seconds,
            )
        except BaseException:
            with _shielded():
                await self._remove_created(key)
            raise
        self._boxes[box.object_id] = box
        return self._info(box.object_id, tags, spec.snapshot or spec.image or self.opts.image)

    async def _remove_created(self, key: str) -> None:
        """Terminate whatever a failed create made (every sandbox carrying its key)."""
        with contextlib.suppress(Exception):
            for info in await self.list({_labels.CREATE_KEY: key}):
                await self.destroy(info.id)

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a running sandbox. Raises ``SandboxNotFound``."""
        self._boxes.pop(sandbox_id, None)
        box = await self._box(sandbox_id, "connect")
        with self._translating("connect", sandbox_id):
            tags = await box.get_tags.aio()
        return self._info(sandbox_id, tags)

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Running sandboxes of the app whose tags hold all of ``labels``."""
        from . import _sdk

        client, app = await self._connection("list")
        assert app.app_id is not None
        with self._translating("list"):
            found = await _sdk.list_sandboxes.aio(client, app.app_id, dict(labels or {}))
        return [self._info(sid, tags, image) for sid, tags, _, image in found]

    async def destroy(self, sandbox_id: str) -> None:
        """Terminate a sandbox at once; one already gone is fine."""
        try:
            box = await self._box(sandbox_id, "destroy")
            with self._translating("destroy", sandbox_id):
                await box.terminate.aio()
        except SandboxNotFound:
            pass
        finally:
            await self._forget(sandbox_id)

    async def _forget(self, sandbox_id: str) -> None:
        box = self._boxes.pop(sandbox_id, None)
        if box is not None:
            with contextlib.suppress(Exception):
                await box.detach.aio()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Release the sandboxes' connections and this backend's client."""
        for sandbox_id in builtins.list(self._boxes):
            await self._forget(sandbox_id)
        client, self._client, self._app = self._client, None, None
        if client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                await client.close.aio()

    # -- processes ------------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` through the sandbox's command router (see :mod:`._process`)."""
        from . import _sdk

        box = await self._box(sandbox_id, "exec")
        ref = str(uuid.uuid4())
        streaming = options.stdin_open or options.stdin is not None
        record = _process.record(ref, argv) if options.detached else None
        env = {**options.env, tree.MARK: ref}
        timeout = (
            None if options.timeout is None else math.ceil(options.timeout) + SERVER_TIMEOUT_GRACE
        )
        stdin = None if options.stdin_open else options.stdin
        with self._translating("exec", sandbox_id):
            task_id = await _sdk.start.aio(
                box,
                ref,
                _process.wrap(argv, stdin=streaming, record=record),
                options.cwd,
                env,
                timeout,
                stdin,
            )
        process = _process.ModalProcess(
            box, sandbox_id, task_id, ref, stdin_closed=not options.stdin_open
        )
        if options.stdin_open and options.stdin:
            await process.write_stdin(options.stdin)  # fed, and left open
        return process

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A command started by any client, its output replayed from the start. Raises
        ``ProcessNotFound``."""
        from modal.exception import NotFoundError

        from . import _sdk

        box = await self._box(sandbox_id, "attach")
        with self._translating("attach", sandbox_id):
            try:
                task_id, written, closed = await _sdk.attach.aio(box, ref)
            except NotFoundError:
                raise process_not_found(ref, sandbox_id) from None
        return _process.ModalProcess(
            box, sandbox_id, task_id, ref, stdin_offset=written, stdin_closed=closed
        )

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The commands started with ``Sandbox.start``, from the sandbox's registry."""
        from . import _sdk

        result = await self.exec(
            sandbox_id,
            ["sh", "-c", 'tail -c "$1" "$2" 2>/dev/null || true', "sh",
             str(REGISTRY_LIMIT), _process.REGISTRY],
            ExecOptions(cwd="/", output_limit=REGISTRY_LIMIT),
        )  # fmt: skip
        records = _records(result.stdout_bytes)
        box = await self._box(sandbox_id, "processes")
        with self._translating("processes", sandbox_id):
            ends = await _sdk.polls.aio(box, [r["ref"] for r in records])
        found = []
        for entry in records:
            if entry["ref"] not in ends:
                continue  # a line the router knows nothing of (forged, or from a snapshot)
            end = ends[entry["ref"]]
            status = _process.status_of(end)
            found.append(
                ProcessInfo(
                    ref=entry["ref"],
                    command=tuple(entry["command"]),
                    running=end is None,
                    exit_code=None if status is None else status.exit_code,
                    started_at=entry["started_at"],
                )
            )
        return found

    # -- files ----------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Content of a regular file, read by Modal's in-sandbox file tool.

        A command first checks that it is a regular file (Modal's reader would block on a FIFO)
        of at most ``max_bytes``. The tool then runs with the command ``sb.filesystem.read_bytes``
        gives it, but its output is streamed and cut past ``max_bytes``: ``read_bytes`` would
        keep all of a file that grew after the check (or a ``/proc`` file that reports no size).
        """
        from modal._utils.sandbox_fs_utils import make_read_file_command, raise_read_file_error

        await file_access.check_read(self, sandbox_id, path, max_bytes)
        argv = [FS_TOOLS, make_read_file_command(path)]
        handle = await self.start(sandbox_id, argv, StartOptions(cwd="/"))
        chunks: builtins.list[bytes] = []
        total = 0
        errors = bytearray()
        try:
            while (item := await handle.read()) is not None:
                stream, data = item
                if stream == "stderr":
                    errors += data[: FS_ERROR_LIMIT - len(errors)]
                    continue
                total += len(data)
                if total > max_bytes:
                    raise FileTooLarge(
                        f"read_file {path}: more than max_bytes={max_bytes} came (the file "
                        "grew after its size was checked)",
                        provider=NAME,
                        op="read_file",
                        sandbox_id=sandbox_id,
                    )
                chunks.append(data)
            status = await handle.wait()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(SandboxError):
                await handle.kill()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await handle.close()
        if status.exit_code != 0:
            with self._translating("read_file", sandbox_id):
                raise_read_file_error(status.exit_code, bytes(errors), path)
        return b"".join(chunks)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file (parents created, a replaced file keeps its mode), through
        ``sb.filesystem.write_bytes``."""
        box = await self._box(sandbox_id, "write_file")
        with self._translating("write_file", sandbox_id):
            await box.filesystem.write_bytes.aio(data, path)

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """``sb.filesystem.stat`` (a final symlink is described, not followed)."""
        box = await self._box(sandbox_id, "stat")
        with self._translating("stat", sandbox_id):
            entry = await box.filesystem.stat.aio(path)
        return _file_info(entry)

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """``sb.filesystem.list_files``, sorted by name."""
        box = await self._box(sandbox_id, "list_dir")
        with self._translating("list_dir", sandbox_id):
            entries = await box.filesystem.list_files.aio(path)
        return sorted((_file_info(e) for e in entries), key=lambda e: e.name)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """``sb.filesystem.make_directory`` with its parents; an existing directory is fine."""
        box = await self._box(sandbox_id, "mkdir")
        with self._translating("mkdir", sandbox_id):
            await box.filesystem.make_directory.aio(path, create_parents=True)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """``sb.filesystem.remove`` (without ``recursive``, a directory only when empty)."""
        box = await self._box(sandbox_id, "remove")
        with self._translating("remove", sandbox_id):
            await box.filesystem.remove.aio(path, recursive=recursive)

    # -- optional capabilities ------------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """The HTTPS URL of Modal's tunnel to ``port`` (declared in ``SandboxSpec.ports``)."""
        box = await self._box(sandbox_id, "expose_port")
        with self._translating("expose_port", sandbox_id):
            tunnels = await box.tunnels.aio()
        tunnel = tunnels.get(port)
        if tunnel is None:
            raise ConfigError(
                f"port {port} has no tunnel: Modal opens ports at create "
                "(list it in SandboxSpec.ports)",
                provider=NAME,
                op="expose_port",
                sandbox_id=sandbox_id,
            )
        return str(tunnel.url)

    async def snapshot(self, sandbox_id: str) -> str:
        """Modal's filesystem snapshot: an image id to use as ``SandboxSpec.snapshot``."""
        box = await self._box(sandbox_id, "snapshot")
        with self._translating("snapshot", sandbox_id):
            image = await box.snapshot_filesystem.aio()
        return str(image.object_id)


def _network(spec: SandboxSpec) -> dict[str, Any]:
    """Modal's network arguments for our policy: addresses and CIDRs in one list, host names
    in the other."""
    if spec.network.mode == "none":
        return {"block_network": True}
    if spec.network.mode == "open":
        return {}
    cidrs, domains = spec.network.split()
    return {
        "outbound_cidr_allowlist": cidrs,
        "outbound_domain_allowlist": domains or None,
    }


def _file_info(entry: Any) -> FileInfo:
    mode = int(entry.mode)
    kind = _TYPES.get(entry.type.value, "other")
    if kind == "file" and (mode & 0o170000) not in (0, 0o100000):
        kind = "other"
    return FileInfo(
        path=entry.path,
        name=entry.name,
        type=kind,
        size=int(entry.size),
        mode=mode & 0o7777,
        mtime=float(entry.modified_time),
    )


def _records(raw: bytes) -> builtins.list[dict[str, Any]]:
    """Well-formed, distinct registry lines (the registry is written inside the sandbox: each
    line is checked, and anything malformed skipped)."""
    found: dict[str, dict[str, Any]] = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            ref, command = entry["ref"], entry["command"]
            started = datetime.fromisoformat(entry["started_at"])
        except (ValueError, KeyError, TypeError):
            continue
        if (
            isinstance(ref, str)
            and 0 < len(ref) <= 64
            and isinstance(command, builtins.list)
            and all(isinstance(arg, str) for arg in command)
        ):
            found.setdefault(ref, {"ref": ref, "command": command, "started_at": started})
    return builtins.list(found.values())[-MAX_LISTED_PROCESSES:]


@contextlib.contextmanager
def _shielded() -> Any:
    with anyio.CancelScope(shield=True) as scope:
        yield scope
