"""envd's process service (``process.Process``), as the fake E2B serves it.

Served through the SDK's own generated connect-rpc stub (``ProcessASGIApplication``), so the wire
format is the vendor's. The behaviour follows envd's sources in e2b-dev/infra
(``packages/envd/internal/services/process/``):

- ``handler/handler.go``: a command runs as ``/bin/sh -c 'echo 100 > /proc/$$/oom_score_adj &&
  exec "${@}"' -- cmd args`` (the ionice/nice prefix is left out), so the pid is the command's
  own; its environment is ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, the sandbox's variables, then
  the request's; the cwd defaults to the template's workdir, else the user's home, and must
  exist; stdin is a pipe unless the request says ``stdin: false``. Output is read in 32 KiB
  chunks and fanned out only while someone subscribes (``multiplex.go``: output nobody listens
  to is dropped; a slow listener holds the command back). ``Wait`` waits for *both output pipes
  to close* before reaping the command, so a background child holding stdout keeps the stream
  open until it exits, unless a SIGKILL/SIGTERM (``SendSignal``) or the request deadline cancels
  that wait; the deadline (``Connect-Timeout-Ms``) kills the command's own process only.
- ``start.go``: the process outlives the request that started it (its context is not the
  request's); the stream sends keepalives at the interval the client's header asks for.
- ``connect.go``, ``service.go``: ``Connect`` by pid or tag streams what comes *after* it
  subscribes (nothing is replayed); a process that ended within the last 30 s is answered with
  its start and end events; ``List`` gives the live processes with their tag and config.
- ``signal.go``, ``input.go``: SIGKILL and SIGTERM only; stdin by pid or tag; ``CloseStdin``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fake_e2b_jail as jail
import fake_vm
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

if TYPE_CHECKING:
    from fake_e2b import FakeE2B, FakeSandbox

CHUNK = 32 * 1024
RETAIN_EXIT_SECONDS = 30.0
ENVD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WRAPPER = 'echo 100 > /proc/$$/oom_score_adj && exec "${@}"'

_GO_SIGNAL_NAMES = {
    1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction", 5: "trace/breakpoint trap",
    6: "aborted", 7: "bus error", 8: "floating point exception", 9: "killed",
    10: "user defined signal 1", 11: "segmentation fault", 12: "user defined signal 2",
    13: "broken pipe", 14: "alarm clock", 15: "terminated",
}  # fmt: skip


@dataclass
class Subscriber:
    """One stream following a process (``Start`` or ``Connect``)."""

    data: asyncio.Queue[tuple[str, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1)
    )
    end: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    cancelled: bool = False


@dataclass
class EnvdProcess:
    """envd's ``Handler`` of one command."""

    pid: int
    tag: str | None
    config: Any
    stdin_fd: int | None
    subscribers: list[Subscriber] = field(default_factory=list)
    out_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.cancelled = True
        with contextlib.suppress(ValueError):
            self.subscribers.remove(sub)
        while not sub.data.empty():  # free a fan-out blocked on this subscriber
            sub.data.get_nowait()

    async def publish(self, item: tuple[str, bytes]) -> None:
        for sub in list(self.subscribers):
            while not sub.cancelled:
                try:
                    await asyncio.wait_for(sub.data.put(item), 0.5)
                    break
                except TimeoutError:
                    continue

    def close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            os.close(fd)


@dataclass
class Retained:
    pid: int
    tag: str | None
    end: Any
    expires: float


def end_event(status: int) -> Any:
    """envd's end event from Go's ``ProcessState``: a signal death is exit code -1."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        text = f"exit status {code}"
        return process_pb.ProcessEvent.EndEvent(
            exit_code=code, exited=True, status=text, error=None if code == 0 else text
        )
    sig = os.WTERMSIG(status)
    text = f"signal: {_GO_SIGNAL_NAMES.get(sig, f'signal {sig}')}"
    return process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=text, error=text)


def _event(cls: Any, kind: str, value: Any) -> Any:
    return cls(event=process_pb.ProcessEvent(event=Oneof(kind, value)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FakeProcessService(process_connect.Process):
    """envd's ``process.Process`` service."""

    def __init__(self, fake: FakeE2B) -> None:
        self.fake = fake

    def _sandbox(self, ctx: Any) -> FakeSandbox:
        sid = ctx.request_headers.get("e2b-sandbox-id")
        sb = self.fake.sandboxes.get(sid or "")
        if sb is None:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sid} was not found")
        return sb

    @staticmethod
    def _user(ctx: Any) -> fake_vm.User:
        """``permissions.GetAuthUser``: Basic auth names the user; none is the default user."""
        auth = ctx.request_headers.get("authorization")
        name = jail.DEFAULT_USER
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "basic":
                raise ConnectError(Code.UNAUTHENTICATED, "invalid authorization scheme")
            name = base64.b64decode(value).decode().split(":", 1)[0]
        user = jail.USERS.get(name)
        if user is None:
            raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: '{name}'")
        return user

    @staticmethod
    def _find(sb: FakeSandbox, selector: Any) -> EnvdProcess:
        """``getProcess``: by pid or by tag."""
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=pid):
                proc = sb.procs.get(pid)
                if proc is None:
                    raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
                return proc
            case Oneof(field="tag", value=tag):
                found = [p for p in sb.procs.values() if p.tag == tag]
                if not found:
                    raise ConnectError(Code.NOT_FOUND, f"process with tag {tag} not found")
                return found[-1]
        raise ConnectError(Code.UNIMPLEMENTED, f"invalid input type {selector!r}")

    @staticmethod
    def _retained(sb: FakeSandbox, selector: Any) -> Retained | None:
        now = time.monotonic()
        for pid, kept in list(sb.terminated.items()):
            if kept.expires < now:
                del sb.terminated[pid]
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=pid):
                return sb.terminated.get(pid)
            case Oneof(field="tag", value=tag):
                return next((r for r in sb.terminated.values() if r.tag == tag), None)
        return None

    async def start(
        self, request: process_pb.StartRequest, ctx: Any
    ) -> AsyncIterator[process_pb.StartResponse]:
        sb = self._sandbox(ctx)
        user = self._user(ctx)
        config = request.process
        if config is None or not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process config with a command is required")
        if request.has_field("pty") and request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "the fake does not implement PTYs")
        cwd = (config.cwd if config.has_field("cwd") else "") or sb.workdir or user.home
        if cwd.startswith("~"):
            cwd = user.home + cwd[1:]
        if not cwd.startswith("/"):
            cwd = f"{user.home}/{cwd}"
        virtual_cwd = fake_vm.resolve(sb.root, cwd, self.fake.etc)
        if not fake_vm.host_path(sb.root, virtual_cwd, self.fake.etc).is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{virtual_cwd}' does not exist")
        env = {"PATH": ENVD_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
        env |= sb.env_vars | dict(config.envs)
        stdin_enabled = not request.has_field("stdin") or request.stdin
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if stdin_enabled else (os.open("/dev/null", os.O_RDONLY), None)
        argv = ["/bin/sh", "-c", WRAPPER, "--", config.cmd, *config.args]
        try:
            pid = await sb.vm.spawn(argv, env, virtual_cwd, user, [in_r, out_w, err_w])
        except ProcessLookupError as exc:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sb.id} was not found") from exc
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        tag = request.tag if request.has_field("tag") else None
        proc = EnvdProcess(pid=pid, tag=tag, config=config, stdin_fd=in_w)
        sub = proc.subscribe()  # before the output flows, as Start forks the channels first
        sb.procs[pid] = proc
        sb.terminated.pop(pid, None)
        proc.task = asyncio.get_running_loop().create_task(
            self._run(sb, proc, out_r, err_r, ctx.timeout_ms)
        )
        self.fake.tasks.add(proc.task)
        proc.task.add_done_callback(self.fake.tasks.discard)
        start = process_pb.ProcessEvent.StartEvent(pid=pid)
        yield _event(process_pb.StartResponse, "start", start)
        async for response in self._follow(proc, sub, ctx, process_pb.StartResponse):
            yield response

    async def _follow(
        self, proc: EnvdProcess, sub: Subscriber, ctx: Any, cls: Any
    ) -> AsyncIterator[Any]:
        interval = ctx.request_headers.get("keepalive-ping-interval")
        keepalive = float(interval) if interval else None
        try:
            while True:
                try:
                    item = await asyncio.wait_for(sub.data.get(), keepalive)
                except TimeoutError:
                    yield _event(cls, "keepalive", process_pb.ProcessEvent.KeepAlive())
                    continue
                if item is None:
                    break
                data = process_pb.ProcessEvent.DataEvent(output=Oneof(item[0], item[1]))
                yield _event(cls, "data", data)
            yield _event(cls, "end", await sub.end)
        finally:
            proc.unsubscribe(sub)

    async def _run(
        self, sb: FakeSandbox, proc: EnvdProcess, out_r: int, err_r: int, timeout_ms: Any
    ) -> None:
        """``Handler.Wait``: output until both pipes close (or the wait is cancelled), then the
        exit status; the end goes to every subscriber and is kept for late ``Connect``s."""
        loop = asyncio.get_running_loop()
        readers = [
            loop.create_task(self._pump(proc, out_r, "stdout")),
            loop.create_task(self._pump(proc, err_r, "stderr")),
        ]
        deadline = None
        if timeout_ms is not None:
            # exec.CommandContext: the deadline kills the command's own process, and cancels
            # the wait for the output pipes.
            def expire() -> None:
                proc.out_cancelled.set()
                sb.vm.signal(proc.pid, signal.SIGKILL)

            deadline = loop.call_later(max(timeout_ms, 0) / 1000, expire)
        cancelled = loop.create_task(proc.out_cancelled.wait())
        outputs = asyncio.gather(*readers, return_exceptions=True)
        await asyncio.wait([outputs, cancelled], return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        status = await sb.vm.wait(proc.pid)
        sb.vm.forget(proc.pid)
        if deadline is not None:
            deadline.cancel()
        for reader in readers:  # cmd.Wait closes the read ends
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        proc.close_stdin()
        end = end_event(status)
        sb.terminated[proc.pid] = Retained(
            proc.pid, proc.tag, end, time.monotonic() + RETAIN_EXIT_SECONDS
        )
        if sb.procs.get(proc.pid) is proc:
            del sb.procs[proc.pid]
        for sub in list(proc.subscribers):
            with contextlib.suppress(asyncio.InvalidStateError):
                sub.end.set_result(end)
            while not sub.cancelled:
                try:
                    await asyncio.wait_for(sub.data.put(None), 0.5)
                    break
                except TimeoutError:
                    continue

    async def _pump(self, proc: EnvdProcess, fd: int, kind: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )
        try:
            while chunk := await reader.read(CHUNK):
                if proc.subscribers:  # HasSubscribers: nobody listening, the output is dropped
                    await proc.publish((kind, chunk))
        finally:
            transport.close()

    async def connect(
        self, request: process_pb.ConnectRequest, ctx: Any
    ) -> AsyncIterator[process_pb.ConnectResponse]:
        sb = self._sandbox(ctx)
        try:
            proc = self._find(sb, request.process)
        except ConnectError:
            kept = self._retained(sb, request.process)
            if kept is None:
                raise
            start = process_pb.ProcessEvent.StartEvent(pid=kept.pid)
            yield _event(process_pb.ConnectResponse, "start", start)
            yield _event(process_pb.ConnectResponse, "end", kept.end)
            return
        sub = proc.subscribe()
        start = process_pb.ProcessEvent.StartEvent(pid=proc.pid)
        yield _event(process_pb.ConnectResponse, "start", start)
        async for response in self._follow(proc, sub, ctx, process_pb.ConnectResponse):
            yield response

    async def send_input(
        self, request: process_pb.SendInputRequest, ctx: Any
    ) -> process_pb.SendInputResponse:
        proc = self._find(self._sandbox(ctx), request.process)
        match request.input.input if request.input is not None else None:
            case Oneof(field="stdin", value=data):
                pass
            case _:
                raise ConnectError(Code.UNIMPLEMENTED, "invalid input type")
        if proc.stdin_fd is None:
            raise ConnectError(Code.INTERNAL, "error writing to stdin: stdin not enabled or closed")
        try:
            await asyncio.to_thread(_write_all, proc.stdin_fd, data)
        except OSError as exc:
            raise ConnectError(
                Code.INTERNAL,
                f"error writing to stdin: error writing to stdin of process '{proc.pid}': {exc}",
            ) from exc
        return process_pb.SendInputResponse()

    async def close_stdin(
        self, request: process_pb.CloseStdinRequest, ctx: Any
    ) -> process_pb.CloseStdinResponse:
        self._find(self._sandbox(ctx), request.process).close_stdin()
        return process_pb.CloseStdinResponse()

    async def send_signal(
        self, request: process_pb.SendSignalRequest, ctx: Any
    ) -> process_pb.SendSignalResponse:
        sb = self._sandbox(ctx)
        proc = self._find(sb, request.process)
        signals = {
            process_pb.Signal.SIGKILL: signal.SIGKILL,
            process_pb.Signal.SIGTERM: signal.SIGTERM,
        }
        sig = signals.get(request.signal)
        if sig is None:
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal}")
        proc.out_cancelled.set()
        sb.vm.signal(proc.pid, sig)
        return process_pb.SendSignalResponse()

    async def list(self, request: process_pb.ListRequest, ctx: Any) -> process_pb.ListResponse:
        sb = self._sandbox(ctx)
        return process_pb.ListResponse(
            processes=[
                process_pb.ProcessInfo(pid=p.pid, tag=p.tag, config=p.config)
                for p in sb.procs.values()
            ]
        )
