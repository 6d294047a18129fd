"""A local fake of Modal's wire protocol, served on 127.0.0.1 for offline tests.

Modal's SDK speaks gRPC (grpclib) to two services, and this fake serves both from the vendor's own
generated service bases and message types (the installed ``modal_proto`` package):

- the **control plane** (``modal_proto.api_grpc.ModalClientBase``), where ``MODAL_SERVER_URL``
  points: ``ClientHello``, ``AuthTokenGet``, ``EnvironmentGetOrCreate``, ``AppGetOrCreate``,
  ``ImageGetOrCreate``, ``ImageFromId`` and the V2 sandbox calls the SDK's ``SandboxImplV2``
  makes (``modal/sandbox/_impl_v2.py``): ``SandboxCreateV2``, ``SandboxGetCommandRouterAccess``,
  ``SandboxGetTaskIdV2``, ``SandboxWaitV2``, ``SandboxTerminateV2``, ``SandboxListV2``,
  ``SandboxTagsGetV2``, ``SandboxGetTunnelsV2``, ``SandboxGetFromNameV2``;
- the **task command router** (``modal_proto.task_command_router_grpc.TaskCommandRouterBase``),
  the per-sandbox service whose URL and JWT the control plane hands out
  (``CommandRouterAccess``): ``TaskExecStart``, ``TaskExecStdioRead`` (output kept and served
  from any offset, so a reader can resume or replay), ``TaskExecStdinWrite`` and
  ``TaskExecStdinWriteStream`` (offset-checked), ``TaskExecStdinStatus``, ``TaskExecPoll``,
  ``TaskExecWait`` (exit ``code`` or ``signal``) and ``TaskSnapshotFilesystem``.

Every other RPC answers ``UNIMPLEMENTED``. Requests are authenticated as Modal does: token id and
secret headers on the control plane, the ``x-modal-auth-token`` from ``AuthTokenGet`` on the V2
sandbox calls, the router's bearer JWT (bound to one task) on the router.

Modal's own client test suite fakes the same two services (modal-labs/modal-client,
``py/test/conftest.py``: ``MockClientServicer`` and ``MockTaskCommandRouterServicer``, the latter
running commands as local subprocesses); this fake follows the same wire contract but keeps a
state per sandbox and runs every command as a real process *inside* that sandbox's container
(:mod:`fake_modal_jail`), and the filesystem calls through an in-sandbox
``modal-sandbox-fs-tools`` (:mod:`fake_modal_fs_tools`), as Modal does.

Vendor behaviour modelled: a sandbox lives at most ``timeout_secs`` (at most 24 h; more is
``INVALID_ARGUMENT``) and is then finished with ``GENERIC_STATUS_TIMEOUT``, or is terminated
(``GENERIC_STATUS_TERMINATED``); names are unique among an app's running sandboxes
(``ALREADY_EXISTS``); a finished sandbox's router refuses with ``NOT_FOUND``; ``block_network``
leaves only loopback; an exec's ``timeout_secs`` kills it (exit by signal 9, as Modal's own
end-to-end tests expect); a missing exec workdir fails the start (``FAILED_PRECONDITION``);
sandbox and exec environment arrive inline as ``secret_sources`` (the 1.6 wire format).

Known gaps: CIDR and domain allowlists are recorded, not enforced; tunnels are addresses that lead
nowhere; images are this host's system (any registry tag resolves to it, but a tag containing
``does-not-exist`` fails to build); no GPUs, volumes, PTYs, memory snapshots or sidecars.

Faults can be injected (:meth:`FakeModal.fail_next`) to test error translation and retries.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fake_modal_jail as jail
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_grpc, api_pb2, task_command_router_grpc
from modal_proto import task_command_router_pb2 as sr_pb2

MAX_TIMEOUT_SECS = 24 * 3600
CHUNK = 64 * 1024
IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
"""The environment of the fake's one image (its system is this host's)."""
TOOLS = Path(__file__).with_name("fake_modal_fs_tools.py")
GENERIC = api_pb2.GenericResult


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token: the SDK reads its ``exp`` claim, nothing else."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.fake"


def _claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Fault:
    """The next ``count`` calls of ``rpc`` fail with ``status`` (after taking effect, when
    ``after_effect``: the answer is lost, not the work)."""

    rpc: str
    status: Status
    message: str
    count: int = 1
    after_effect: bool = False


class Spool:
    """One output stream of an exec, kept on disk so it can be read from any offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.eof = False
        self._file = open(path, "wb")  # noqa: SIM115 - closed at end of stream
        self._reader = os.open(path, os.O_RDONLY)
        self._changed = asyncio.Condition()

    def read(self, offset: int) -> bytes:
        """Up to one chunk from ``offset`` (kept for the sandbox's life, so any reader can
        replay)."""
        return os.pread(self._reader, min(CHUNK, self.size - offset), offset)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._reader)

    async def append(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        self.size += len(data)
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        self._file.close()
        self.eof = True
        async with self._changed:
            self._changed.notify_all()

    async def wait_past(self, offset: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.eof or self.size > offset)


@dataclass
class FakeExec:
    """One command started through the router."""

    exec_id: str
    argv: list[str]
    proc: asyncio.subprocess.Process
    stdout: Spool
    stderr: Spool
    stdin_written: int = 0
    stdin_closed: bool = False
    exit: tuple[str, int] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class FakeSandbox:
    """A sandbox: its definition, its container and its commands."""

    id: str
    task_id: str
    app_id: str
    name: str
    tags: dict[str, str]
    definition: api_pb2.Sandbox
    env: dict[str, str]
    created_at: float
    state_dir: Path
    container: jail.Container | None = None
    result: api_pb2.GenericResult | None = None
    execs: dict[str, FakeExec] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    last_activity: float = field(default_factory=time.monotonic)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.result is None

    @property
    def root(self) -> Path:
        return self.state_dir / "root"


class FakeModal:
    """The fake service. Use :meth:`start` / :meth:`stop`."""

    def __init__(
        self, token_id: str = "ak-fake-token", token_secret: str = "as-fake-secret"
    ) -> None:
        self.token_id = token_id
        self.token_secret = token_secret
        self.calls: Counter[str] = Counter()
        """How many times each RPC was called (control plane and router)."""
        self.create_requests: list[api_pb2.SandboxCreateV2Request] = []
        self.exec_requests: list[sr_pb2.TaskExecStartRequest] = []
        self.faults: list[Fault] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.apps: dict[tuple[str, str], str] = {}
        self.images: dict[str, Path | None] = {}
        """Image id -> the snapshot root it starts from (``None``: the base image)."""
        self.environment = "main"
        self._auth_tokens: set[str] = set()
        self._next_uid = jail.FIRST_UID
        self._state = Path(tempfile.mkdtemp(prefix="fake-modal-"))
        self._tools = self._state / "tools"
        self._tools.mkdir()
        shutil.copy(TOOLS, self._tools / "modal-sandbox-fs-tools")
        os.chmod(self._tools / "modal-sandbox-fs-tools", 0o755)
        os.chmod(self._state, 0o711)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[Server] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lock = threading.Lock()
        self.url = ""
        self.router_url = ""

    # -- running ---------------------------------------------------------------------------

    def start(self) -> FakeModal:
        """Serve both services on free loopback ports from a thread of their own."""
        ready = threading.Event()
        control = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        router = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        for sock in (control, router):
            sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{control.getsockname()[1]}"
        self.router_url = f"http://127.0.0.1:{router.getsockname()[1]}"

        async def serve() -> None:
            self._servers = [Server([ControlPlane(self)]), Server([Router(self)])]
            await self._servers[0].start(sock=control)
            await self._servers[1].start(sock=router)
            ready.set()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-modal", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the fake Modal did not start")
        return self

    def stop(self) -> None:
        """Terminate every sandbox, stop serving and remove the state."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=60)
        shutil.rmtree(self._state, ignore_errors=True)

    async def _shutdown(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self._finish(sandbox, GENERIC.GENERIC_STATUS_TERMINATED)
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def call(self, func: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``func`` on the fake's loop from another thread; its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(func(), self._loop).result(60)

    def fail_next(
        self, rpc: str, status: Status, message: str, *, count: int = 1, after_effect: bool = False
    ) -> None:
        """Make the next ``count`` calls of ``rpc`` fail (see :class:`Fault`)."""
        with self._lock:
            self.faults.append(Fault(rpc, status, message, count, after_effect))

    def _take_fault(self, rpc: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.rpc == rpc and fault.count > 0:
                    fault.count -= 1
                    return fault
        return None

    def running_sandboxes(self) -> list[str]:
        """Ids of the sandboxes still running."""
        return [s.id for s in self.sandboxes.values() if s.running]

    # -- authentication ----------------------------------------------------------------------

    def check_token(self, stream: Stream[Any, Any]) -> None:
        metadata = stream.metadata or {}
        if (
            metadata.get("x-modal-token-id") != self.token_id
            or metadata.get("x-modal-token-secret") != self.token_secret
        ):
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID or secret is invalid")

    def check_auth_token(self, stream: Stream[Any, Any]) -> None:
        self.check_token(stream)
        token = (stream.metadata or {}).get("x-modal-auth-token")
        if token not in self._auth_tokens or _claims(str(token)).get("exp", 0) < time.time():
            raise GRPCError(Status.UNAUTHENTICATED, "auth token missing or expired")

    def new_auth_token(self) -> str:
        token = _jwt({"exp": int(time.time()) + 3600, "jti": uuid.uuid4().hex})
        self._auth_tokens.add(token)
        return token

    def router_access(self, sandbox: FakeSandbox) -> api_pb2.CommandRouterAccess:
        jwt = _jwt({"task_id": sandbox.task_id, "exp": int(time.time()) + 3600})
        return api_pb2.CommandRouterAccess(url=self.router_url, jwt=jwt)

    def sandbox_of_task(self, stream: Stream[Any, Any], task_id: str) -> FakeSandbox:
        """The running sandbox of ``task_id``, for a caller holding its router JWT."""
        auth = str((stream.metadata or {}).get("authorization", ""))
        claims = _claims(auth.removeprefix("Bearer "))
        if claims.get("task_id") != task_id or claims.get("exp", 0) < time.time():
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or expired router token")
        for sandbox in self.sandboxes.values():
            if sandbox.task_id == task_id:
                if not sandbox.running:
                    raise GRPCError(Status.NOT_FOUND, f"task {task_id} has finished")
                sandbox.last_activity = time.monotonic()
                return sandbox
        raise GRPCError(Status.NOT_FOUND, f"task {task_id} not found")

    # -- sandboxes ---------------------------------------------------------------------------

    def sandbox(self, sandbox_id: str) -> FakeSandbox:
        found = self.sandboxes.get(sandbox_id)
        if found is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return found

    async def create_sandbox(self, request: api_pb2.SandboxCreateV2Request) -> FakeSandbox:
        definition = request.definition
        if not any(app_id == request.app_id for app_id in self.apps.values()):
            raise GRPCError(Status.NOT_FOUND, f"App {request.app_id} not found")
        if not 0 < definition.timeout_secs <= MAX_TIMEOUT_SECS:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"timeout must be between 1 and {MAX_TIMEOUT_SECS} seconds",
            )
        if definition.image_id not in self.images:
            raise GRPCError(Status.NOT_FOUND, f"Image {definition.image_id} not found")
        if definition.HasField("workdir") and not definition.workdir.startswith("/"):
            raise GRPCError(Status.INVALID_ARGUMENT, "workdir must be an absolute path")
        access = definition.network_access
        blocked = access.network_access_type == api_pb2.NetworkAccess.NetworkAccessType.BLOCKED
        if blocked and definition.open_ports.ports:
            raise GRPCError(Status.INVALID_ARGUMENT, "open ports need network access")
        if definition.name:
            for other in self.sandboxes.values():
                if (
                    other.app_id == request.app_id
                    and other.name == definition.name
                    and other.running
                ):
                    raise GRPCError(
                        Status.ALREADY_EXISTS,
                        f"Sandbox with name '{definition.name}' already exists",
                    )
        env = dict(IMAGE_ENV)
        for source in request.secret_sources:
            if source.HasField("env"):
                env.update(source.env.contents)
            else:
                raise GRPCError(Status.NOT_FOUND, f"Secret {source.secret_id} not found")
        sandbox = FakeSandbox(
            id=_id("sb"),
            task_id=_id("ta") + "V",
            app_id=request.app_id,
            name=definition.name,
            tags={tag.tag_name: tag.tag_value for tag in request.tags},
            definition=definition,
            env=env,
            created_at=time.time(),
            state_dir=self._state / "sandboxes" / uuid.uuid4().hex,
        )
        sandbox.state_dir.mkdir(parents=True)
        uid = self._next_uid
        self._next_uid += 1
        argv = list(definition.entrypoint_args) or ["sleep", "infinity"]
        workdir = definition.workdir if definition.HasField("workdir") else None
        snapshot = self.images[definition.image_id]
        await asyncio.to_thread(jail.prepare_root, sandbox.root, uid, workdir, snapshot)
        sandbox.container = await asyncio.to_thread(
            jail.start, sandbox.root, uid, self._tools, env, argv, network_blocked=blocked
        )
        self.sandboxes[sandbox.id] = sandbox
        loop = asyncio.get_running_loop()
        sandbox.timers.append(
            loop.call_later(
                definition.timeout_secs,
                lambda: self._spawn(self._finish(sandbox, GENERIC.GENERIC_STATUS_TIMEOUT)),
            )
        )
        if definition.HasField("idle_timeout_secs"):
            sandbox.timers.append(loop.call_later(1, self._check_idle, sandbox))
        self._spawn(self._watch_main_process(sandbox))
        return sandbox

    def _check_idle(self, sandbox: FakeSandbox) -> None:
        if not sandbox.running:
            return
        busy = any(e.exit is None for e in sandbox.execs.values())
        idle_for = time.monotonic() - sandbox.last_activity
        if not busy and idle_for >= sandbox.definition.idle_timeout_secs:
            self._spawn(self._finish(sandbox, GENERIC.GENERIC_STATUS_IDLE_TIMEOUT))
            return
        assert self._loop is not None
        sandbox.timers.append(self._loop.call_later(1, self._check_idle, sandbox))

    async def _watch_main_process(self, sandbox: FakeSandbox) -> None:
        """Finish the sandbox when its main process ends. Watched through a pidfd on the loop,
        not a waiting thread: a thread per live sandbox would fill the loop's default executor
        and stall every other ``to_thread`` call of the fake."""
        container = sandbox.container
        assert container is not None
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(container.bwrap.pid)
        ended: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        code = container.bwrap.wait()
        if sandbox.running:
            status = GENERIC.GENERIC_STATUS_SUCCESS if code == 0 else GENERIC.GENERIC_STATUS_FAILURE
            await self._finish(sandbox, status, exitcode=code)

    async def _finish(self, sandbox: FakeSandbox, status: int, exitcode: int = 0) -> None:
        """End a sandbox: kill its container (every process in it) and keep its result."""
        if sandbox.running:
            sandbox.result = api_pb2.GenericResult(status=status, exitcode=exitcode)  # type: ignore[arg-type]
            for timer in sandbox.timers:
                timer.cancel()
            if sandbox.container is not None:
                await asyncio.to_thread(sandbox.container.kill)
            sandbox.finished.set()
            for ex in sandbox.execs.values():
                await ex.done.wait()
                ex.stdout.release()
                ex.stderr.release()
            await asyncio.to_thread(shutil.rmtree, sandbox.root, True)

    def info(self, sandbox: FakeSandbox) -> api_pb2.SandboxInfo:
        result = sandbox.result or api_pb2.GenericResult()
        return api_pb2.SandboxInfo(
            id=sandbox.id,
            created_at=sandbox.created_at,
            task_info=api_pb2.TaskInfo(id=sandbox.task_id, result=result, sandbox_id=sandbox.id),
            app_id=sandbox.app_id,
            tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sandbox.tags.items()],
            name=sandbox.name,
            image_id=sandbox.definition.image_id,
            timeout_secs=sandbox.definition.timeout_secs,
            metadata=self.handle_metadata(sandbox),
        )

    def handle_metadata(self, sandbox: FakeSandbox) -> api_pb2.SandboxHandleMetadata:
        metadata = api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id)
        if sandbox.result is not None:
            metadata.result.CopyFrom(sandbox.result)
        return metadata

    def tunnels(self, sandbox: FakeSandbox) -> list[api_pb2.TunnelData]:
        return [
            api_pb2.TunnelData(
                host=f"{sandbox.id}-{spec.port}.modal.fake", port=443, container_port=spec.port
            )
            for spec in sandbox.definition.open_ports.ports
        ]

    # -- execs -------------------------------------------------------------------------------

    async def start_exec(self, sandbox: FakeSandbox, request: sr_pb2.TaskExecStartRequest) -> None:
        if request.exec_id in sandbox.execs:
            return  # exec_id is the idempotency key of a start
        if not request.command_args:
            raise GRPCError(Status.INVALID_ARGUMENT, "command_args must not be empty")
        container = sandbox.container
        assert container is not None
        cwd = (
            request.workdir if request.HasField("workdir") else (sandbox.definition.workdir or "/")
        )
        if not jail.is_directory(sandbox.root, cwd):
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"failed to start exec: chdir to cwd ({cwd!r}): No such file or directory",
            )
        env = dict(sandbox.env)
        env.update(request.env)
        for source in request.secret_sources:
            if source.HasField("env"):
                env.update(source.env.contents)
            else:
                raise GRPCError(Status.NOT_FOUND, f"Secret {source.secret_id} not found")
        exec_dir = sandbox.state_dir / "execs" / request.exec_id
        exec_dir.mkdir(parents=True)
        proc = await asyncio.create_subprocess_exec(
            *container.nsenter_argv(cwd, list(request.command_args)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            umask=0o022,
        )
        ex = FakeExec(
            exec_id=request.exec_id,
            argv=list(request.command_args),
            proc=proc,
            stdout=Spool(exec_dir / "stdout"),
            stderr=Spool(exec_dir / "stderr"),
        )
        sandbox.execs[request.exec_id] = ex
        self._spawn(self._follow(sandbox, ex, request))

    async def _follow(
        self, sandbox: FakeSandbox, ex: FakeExec, request: sr_pb2.TaskExecStartRequest
    ) -> None:
        async def pump(source: asyncio.StreamReader | None, spool: Spool) -> None:
            assert source is not None
            while chunk := await source.read(CHUNK):
                await spool.append(chunk)
            await spool.close()

        self._spawn(self._keep_running(ex))
        timer = None
        if request.HasField("timeout_secs") and request.timeout_secs > 0:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(request.timeout_secs, self._kill_exec, sandbox, ex)
        await asyncio.gather(pump(ex.proc.stdout, ex.stdout), pump(ex.proc.stderr, ex.stderr))
        code = await ex.proc.wait()
        if timer is not None:
            timer.cancel()
        ex.exit = ("signal", -code) if code < 0 else ("code", code)
        ex.done.set()

    async def _keep_running(self, ex: FakeExec) -> None:
        """``nsenter`` stops itself when the command it waits for is stopped (its
        ``continue_as_child``), and resumes the command only when resumed: a command stopped
        inside the sandbox (say, by a ``kill -STOP`` before a ``kill -KILL``) would freeze
        its exec for good. Modal's runtime is no process of the sandbox's, so nothing freezes
        there: the fake resumes a stopped ``nsenter`` at once."""
        stat = f"/proc/{ex.proc.pid}/stat"
        while not ex.done.is_set():
            with contextlib.suppress(OSError, IndexError):
                with open(stat, "rb") as handle:  # noqa: ASYNC230 - procfs, never blocks
                    state = handle.read().rsplit(b") ", 1)[1][:1]
                if state == b"T":
                    os.kill(ex.proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.02)

    def _kill_exec(self, sandbox: FakeSandbox, ex: FakeExec) -> None:
        container = sandbox.container
        child = container.host_pid_of_child(ex.proc.pid) if container else None
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(child, signal.SIGKILL)  # type: ignore[arg-type]

    def execution(self, sandbox: FakeSandbox, exec_id: str) -> FakeExec:
        found = sandbox.execs.get(exec_id)
        if found is None:
            raise GRPCError(Status.NOT_FOUND, f"exec {exec_id} not found")
        return found

    async def write_stdin(self, ex: FakeExec, offset: int, data: bytes, eof: bool) -> None:
        """Write at ``offset`` of the exec's stdin: what was already written is skipped (a retry),
        a gap is refused."""
        async with ex.stdin_lock:
            if offset > ex.stdin_written:
                raise GRPCError(Status.FAILED_PRECONDITION, "stdin offset is past what was written")
            data = data[ex.stdin_written - offset :]
            if ex.stdin_closed:
                if data:
                    raise GRPCError(Status.FAILED_PRECONDITION, "stdin is closed")
                return
            stdin = ex.proc.stdin
            assert stdin is not None
            if data:
                try:
                    stdin.write(data)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    raise GRPCError(
                        Status.FAILED_PRECONDITION, "the process closed its stdin"
                    ) from None
                ex.stdin_written += len(data)
            if eof:
                ex.stdin_closed = True
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    stdin.close()

    async def snapshot(self, sandbox: FakeSandbox, snapshot_id: str) -> str:
        image_id = "im-" + hashlib.sha256(snapshot_id.encode()).hexdigest()[:24]
        if image_id not in self.images:
            target = self._state / "images" / image_id
            target.parent.mkdir(exist_ok=True)
            await asyncio.to_thread(
                shutil.copytree,
                sandbox.root,
                target,
                symlinks=True,
                copy_function=jail._copy_regular,
            )
            self.images[image_id] = target
        return image_id


Handler = Callable[[Any, Stream[Any, Any]], Awaitable[Any]]


class _Service:
    """Common plumbing of both servicers: call counting, injected faults, unary calls."""

    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake

    async def unary(self, name: str, stream: Stream[Any, Any], handler: Handler) -> None:
        self.fake.calls[name] += 1
        request = await stream.recv_message()
        fault = self.fake._take_fault(name)
        if fault is not None and not fault.after_effect:
            raise GRPCError(fault.status, fault.message)
        response = await handler(request, stream)
        if fault is not None:
            raise GRPCError(fault.status, fault.message)
        await stream.send_message(response)


def _unimplemented(cls: type) -> type:
    """Answer ``UNIMPLEMENTED`` for every RPC of ``cls``'s base it does not define."""

    def stub(name: str) -> Callable[..., Awaitable[None]]:
        async def method(self: Any, stream: Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"the fake Modal does not implement {name}")

        return method

    for name in getattr(cls, "__abstractmethods__", ()):
        if name not in cls.__dict__:
            setattr(cls, name, stub(name))
    abc.update_abstractmethods(cls)
    return cls


@_unimplemented
class ControlPlane(_Service, api_grpc.ModalClientBase):
    """Modal's control plane: apps, images and V2 sandboxes."""

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: Any, stream: Stream[Any, Any]) -> Any:
            self.fake.check_token(stream)
            return api_pb2.ClientHelloResponse()

        await self.unary("ClientHello", stream, handle)

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: Any, stream: Stream[Any, Any]) -> Any:
            self.fake.check_token(stream)
            return api_pb2.AuthTokenGetResponse(token=self.fake.new_auth_token())

        await self.unary("AuthTokenGet", stream, handle)

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.EnvironmentGetOrCreateRequest, stream: Any) -> Any:
            self.fake.check_token(stream)
            name = request.deployment_name or self.fake.environment
            if name != self.fake.environment:
                raise GRPCError(Status.NOT_FOUND, f"Environment '{name}' not found")
            return api_pb2.EnvironmentGetOrCreateResponse(
                environment_id="en-fake",
                metadata=api_pb2.EnvironmentMetadata(
                    name=name,
                    settings=api_pb2.EnvironmentSettings(image_builder_version="2025.06"),
                ),
            )

        await self.unary("EnvironmentGetOrCreate", stream, handle)

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.AppGetOrCreateRequest, stream: Any) -> Any:
            self.fake.check_token(stream)
            environment = request.environment_name or self.fake.environment
            if environment != self.fake.environment:
                raise GRPCError(Status.NOT_FOUND, f"Environment '{environment}' not found")
            key = (environment, request.app_name)
            if key not in self.fake.apps:
                if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found")
                self.fake.apps[key] = _id("ap")
            return api_pb2.AppGetOrCreateResponse(app_id=self.fake.apps[key])

        await self.unary("AppGetOrCreate", stream, handle)

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.ImageGetOrCreateRequest, stream: Any) -> Any:
            self.fake.check_token(stream)
            definition = request.image.SerializeToString(deterministic=True)
            image_id = "im-" + hashlib.sha256(definition).hexdigest()[:24]
            commands = "\n".join(request.image.dockerfile_commands)
            if "does-not-exist" in commands:
                result = api_pb2.GenericResult(
                    status=GENERIC.GENERIC_STATUS_FAILURE,
                    exception="pull access denied: repository does not exist",
                )
            else:
                self.fake.images.setdefault(image_id, None)
                result = api_pb2.GenericResult(status=GENERIC.GENERIC_STATUS_SUCCESS)
            return api_pb2.ImageGetOrCreateResponse(
                image_id=image_id, result=result, metadata=api_pb2.ImageMetadata(workdir="/root")
            )

        await self.unary("ImageGetOrCreate", stream, handle)

    async def ImageFromId(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.ImageFromIdRequest, stream: Any) -> Any:
            self.fake.check_token(stream)
            if request.image_id not in self.fake.images:
                raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
            return api_pb2.ImageFromIdResponse(
                image_id=request.image_id, metadata=api_pb2.ImageMetadata(workdir="/root")
            )

        await self.unary("ImageFromId", stream, handle)

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxCreateV2Request, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            self.fake.create_requests.append(request)
            sandbox = await self.fake.create_sandbox(request)
            return api_pb2.SandboxCreateV2Response(
                sandbox_id=sandbox.id,
                task_id=sandbox.task_id,
                tunnels=self.fake.tunnels(sandbox),
                metadata=self.fake.handle_metadata(sandbox),
                command_router_access=self.fake.router_access(sandbox),
            )

        await self.unary("SandboxCreateV2", stream, handle)

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxGetCommandRouterAccessRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            if request.sandbox_id:
                sandbox = self.fake.sandbox(request.sandbox_id)
            else:
                found = [s for s in self.fake.sandboxes.values() if s.task_id == request.task_id]
                if not found:
                    raise GRPCError(Status.NOT_FOUND, f"Task {request.task_id} not found")
                sandbox = found[0]
            if not sandbox.running:
                raise GRPCError(Status.FAILED_PRECONDITION, "Sandbox has already finished")
            access = self.fake.router_access(sandbox)
            return api_pb2.SandboxGetCommandRouterAccessResponse(jwt=access.jwt, url=access.url)

        await self.unary("SandboxGetCommandRouterAccess", stream, handle)

    async def SandboxGetTaskIdV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxGetTaskIdRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            sandbox = self.fake.sandbox(request.sandbox_id)
            if sandbox.result is not None:
                return api_pb2.SandboxGetTaskIdResponse(task_result=sandbox.result)
            return api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id)

        await self.unary("SandboxGetTaskIdV2", stream, handle)

    async def SandboxWaitV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxWaitRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            sandbox = self.fake.sandbox(request.sandbox_id)
            if request.timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(sandbox.finished.wait(), request.timeout)
            return api_pb2.SandboxWaitResponse(
                result=sandbox.result or api_pb2.GenericResult(),
                metadata=self.fake.handle_metadata(sandbox),
            )

        await self.unary("SandboxWaitV2", stream, handle)

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxTerminateRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            sandbox = self.fake.sandbox(request.sandbox_id)
            await self.fake._finish(sandbox, GENERIC.GENERIC_STATUS_TERMINATED)
            return api_pb2.SandboxTerminateResponse()

        await self.unary("SandboxTerminateV2", stream, handle)

    async def SandboxListV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxListRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            wanted = {tag.tag_name: tag.tag_value for tag in request.tags}
            found = [
                s
                for s in self.fake.sandboxes.values()
                if (s.running or request.include_finished)
                and (not request.app_id or s.app_id == request.app_id)
                and (not request.before_timestamp or s.created_at < request.before_timestamp)
                and all(s.tags.get(k) == v for k, v in wanted.items())
            ]
            found.sort(key=lambda s: s.created_at, reverse=True)
            return api_pb2.SandboxListResponse(sandboxes=[self.fake.info(s) for s in found[:100]])

        await self.unary("SandboxListV2", stream, handle)

    async def SandboxTagsGetV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxTagsGetRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            sandbox = self.fake.sandbox(request.sandbox_id)
            tags = [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sandbox.tags.items()]
            return api_pb2.SandboxTagsGetResponse(tags=tags)

        await self.unary("SandboxTagsGetV2", stream, handle)

    async def SandboxGetTunnelsV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxGetTunnelsRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            sandbox = self.fake.sandbox(request.sandbox_id)
            return api_pb2.SandboxGetTunnelsResponse(
                result=api_pb2.GenericResult(status=GENERIC.GENERIC_STATUS_SUCCESS),
                tunnels=self.fake.tunnels(sandbox),
            )

        await self.unary("SandboxGetTunnelsV2", stream, handle)

    async def SandboxGetFromNameV2(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: api_pb2.SandboxGetFromNameRequest, stream: Any) -> Any:
            self.fake.check_auth_token(stream)
            environment = request.environment_name or self.fake.environment
            app_id = self.fake.apps.get((environment, request.app_name))
            for sandbox in self.fake.sandboxes.values():
                named = sandbox.app_id == app_id and sandbox.name == request.sandbox_name
                if named and (sandbox.running or request.include_terminated):
                    return api_pb2.SandboxGetFromNameResponse(
                        sandbox_id=sandbox.id, metadata=self.fake.handle_metadata(sandbox)
                    )
            raise GRPCError(
                Status.NOT_FOUND, f"Sandbox with name '{request.sandbox_name}' not found"
            )

        await self.unary("SandboxGetFromNameV2", stream, handle)


@_unimplemented
class Router(_Service, task_command_router_grpc.TaskCommandRouterBase):
    """The task command router: commands in one sandbox."""

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskExecStartRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            self.fake.exec_requests.append(request)
            await self.fake.start_exec(sandbox, request)
            return sr_pb2.TaskExecStartResponse()

        await self.unary("TaskExecStart", stream, handle)

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        self.fake.calls["TaskExecStdioRead"] += 1
        request: sr_pb2.TaskExecStdioReadRequest = await stream.recv_message()
        fault = self.fake._take_fault("TaskExecStdioRead")
        if fault is not None:
            raise GRPCError(fault.status, fault.message)
        sandbox = self.fake.sandbox_of_task(stream, request.task_id)
        ex = self.fake.execution(sandbox, request.exec_id)
        if request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT:
            spool = ex.stdout
        elif request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR:
            spool = ex.stderr
        else:
            raise GRPCError(Status.INVALID_ARGUMENT, "unsupported file descriptor")
        offset = request.offset
        while True:
            if offset < spool.size:
                data = spool.read(offset)
                offset += len(data)
                await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=data))
                continue
            if spool.eof:
                return
            await spool.wait_past(offset)

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskExecStdinWriteRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            ex = self.fake.execution(sandbox, request.exec_id)
            await self.fake.write_stdin(ex, request.offset, request.data, request.eof)
            return sr_pb2.TaskExecStdinWriteResponse()

        await self.unary("TaskExecStdinWrite", stream, handle)

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        self.fake.calls["TaskExecStdinWriteStream"] += 1
        first: sr_pb2.TaskExecStdinWriteStreamRequest = await stream.recv_message()
        if first.WhichOneof("payload") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be start")
        start = first.start
        sandbox = self.fake.sandbox_of_task(stream, start.task_id)
        ex = self.fake.execution(sandbox, start.exec_id)
        offset = start.offset
        if offset != ex.stdin_written:
            raise GRPCError(Status.FAILED_PRECONDITION, "stdin offset mismatch")
        while (message := await stream.recv_message()) is not None:
            which = message.WhichOneof("payload")
            if which == "data":
                await self.fake.write_stdin(ex, offset, message.data, False)
                offset += len(message.data)
            elif which == "end":
                await self.fake.write_stdin(ex, offset, b"", True)
                break
            else:
                raise GRPCError(Status.INVALID_ARGUMENT, "expected data or end")
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskExecStdinStatusRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            ex = self.fake.execution(sandbox, request.exec_id)
            return sr_pb2.TaskExecStdinStatusResponse(
                num_bytes_written=ex.stdin_written, closed=ex.stdin_closed
            )

        await self.unary("TaskExecStdinStatus", stream, handle)

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskExecPollRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            ex = self.fake.execution(sandbox, request.exec_id)
            if ex.exit is None:
                return sr_pb2.TaskExecPollResponse()
            return sr_pb2.TaskExecPollResponse(**{ex.exit[0]: ex.exit[1]})

        await self.unary("TaskExecPoll", stream, handle)

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskExecWaitRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            ex = self.fake.execution(sandbox, request.exec_id)
            await ex.done.wait()
            assert ex.exit is not None
            return sr_pb2.TaskExecWaitResponse(**{ex.exit[0]: ex.exit[1]})

        await self.unary("TaskExecWait", stream, handle)

    async def TaskSnapshotFilesystem(self, stream: Stream[Any, Any]) -> None:
        async def handle(request: sr_pb2.TaskSnapshotFilesystemRequest, stream: Any) -> Any:
            sandbox = self.fake.sandbox_of_task(stream, request.task_id)
            image_id = await self.fake.snapshot(sandbox, request.snapshot_id)
            return sr_pb2.TaskSnapshotFilesystemResponse(image_id=image_id)

        await self.unary("TaskSnapshotFilesystem", stream, handle)
