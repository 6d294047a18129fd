"""The calls the adapter makes below Modal's public API, run on the SDK's own event loop.

Modal's public ``Sandbox.exec`` returns a ``ContainerProcess`` whose ``wait()`` folds a signal into
``128 + N`` and which cannot be reached again from another client. Underneath, the SDK talks to
the sandbox's *task command router*, where every command is addressed by an ``exec_id`` the
client chooses, its output is kept and can be read from any offset, its stdin is written at
offsets, and its end is reported as an exit ``code`` or a ``signal``. This module drives that
router through the SDK's own client (``TaskCommandRouterClient``, with its retries and token
refresh) exactly as ``Sandbox.exec`` does (``modal/sandbox/_common.py``, ``exec_via_tcr``), so a
process can be attached from any client and its status is exact. It also lists an app's
sandboxes with their tags in one call per page (``SandboxImplV2.list_page``, what
``Sandbox.list`` itself calls, whose public form drops the tags).

The SDK's objects live on its synchronicity event loop; each function here is registered with the
SDK's synchronizer (``synchronize_api``), so the adapter calls it as ``fn.aio(...)`` with public
``modal`` objects and the function runs on that loop with the SDK's internal ones. These are the
internals the pinned ``modal`` range (see ``pyproject.toml``) is tested against.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from modal._utils.async_utils import synchronize_api
from modal.sandbox._impl_v2 import SandboxImplV2
from modal.secret import _secret_sources
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2

if TYPE_CHECKING:
    from modal.client import _Client
    from modal.sandbox._sandbox import _Sandbox
    from modal.sandbox._task_command_router_client import TaskCommandRouterClient

STDIN_CHUNK = 1 << 20
"""Bytes per stdin write (the router's messages stay well under gRPC's size limit)."""
_FDS = (("stdout", api_pb2.FILE_DESCRIPTOR_STDOUT), ("stderr", api_pb2.FILE_DESCRIPTOR_STDERR))

Exit = tuple[str, int]
"""``("code", n)`` or ``("signal", n)``."""


async def _router(
    sandbox: _Sandbox, task_id: str | None = None
) -> tuple[str, TaskCommandRouterClient]:
    if task_id is None:
        task_id = await sandbox._get_task_id(raise_if_task_complete=True)
    return task_id, await sandbox._get_command_router_client(task_id)


def _exit(response: Any) -> Exit | None:
    which = response.WhichOneof("exit_status")
    return None if which is None else (which, int(getattr(response, which)))


async def _start(
    sandbox: _Sandbox,
    exec_id: str,
    argv: list[str],
    workdir: str | None,
    env: dict[str, str],
    timeout_secs: int | None,
    stdin: bytes | None,
) -> str:
    """Start ``argv`` as ``exec_id`` (its idempotency key); feed ``stdin`` and close it when
    given. Returns the sandbox's task id."""
    task_id, router = await _router(sandbox)
    request = sr_pb2.TaskExecStartRequest(
        task_id=task_id,
        exec_id=exec_id,
        command_args=argv,
        stdout_config=sr_pb2.TaskExecStdoutConfig.TASK_EXEC_STDOUT_CONFIG_PIPE,
        stderr_config=sr_pb2.TaskExecStderrConfig.TASK_EXEC_STDERR_CONFIG_PIPE,
        timeout_secs=timeout_secs,
        workdir=workdir,
        secret_sources=_secret_sources([], env),
    )
    await router.exec_start(request)
    if stdin is not None:
        await router.exec_stdin_write_stream(task_id, exec_id, io.BytesIO(stdin))
    return task_id


async def _output(
    sandbox: _Sandbox, task_id: str, exec_id: str
) -> AsyncIterator[tuple[str, bytes] | tuple[str, int]]:
    """The command's output from its start, ``("stdout" | "stderr", data)`` as it comes, then
    its end: ``("code", n)`` or ``("signal", n)``.

    Paced by the reader: at most a few chunks wait here, and a stream whose reader falls behind
    is closed and reopened at its offset later, so a fast command's output never piles up in
    this client."""
    _, router = await _router(sandbox, task_id)
    queue: asyncio.Queue[tuple[str, bytes] | BaseException | None] = asyncio.Queue(4)

    async def pump(name: str, fd: Any) -> None:
        offset = 0
        try:
            while True:
                stream = router.exec_stdio_read(task_id, exec_id, fd, start_offset=offset)
                behind = False
                try:
                    async for item in stream:
                        if not item.data:
                            continue
                        data = bytes(item.data)
                        offset += len(data)
                        if queue.full():
                            # The reader is behind: let the stream go, and with it whatever
                            # the transport took in for it (the SDK's HTTP/2 window is 64 MiB),
                            # then resume from this offset once the reader catches up.
                            behind = True
                            break
                        queue.put_nowait((name, data))
                finally:
                    await stream.aclose()
                if not behind:
                    break
                await queue.put((name, data))
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    pumps = [asyncio.ensure_future(pump(name, fd)) for name, fd in _FDS]
    try:
        ended = 0
        while ended < len(pumps):
            item = await queue.get()
            if item is None:
                ended += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        end = _exit(await router.exec_wait(task_id, exec_id))
        if end is None:
            raise RuntimeError(f"the router reported no exit status for exec {exec_id}")
        yield end
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _wait(sandbox: _Sandbox, task_id: str, exec_id: str) -> Exit | None:
    _, router = await _router(sandbox, task_id)
    return _exit(await router.exec_wait(task_id, exec_id))


async def _attach(sandbox: _Sandbox, exec_id: str) -> tuple[str, int, bool]:
    """``(task id, stdin bytes written, stdin closed)`` of a command started by any client;
    ``NotFoundError`` for an exec id the sandbox never ran."""
    task_id, router = await _router(sandbox)
    await router.exec_poll(task_id, exec_id)
    status = await router.exec_stdin_status(task_id, exec_id)
    return task_id, int(status.num_bytes_written), bool(status.closed)


async def _polls(sandbox: _Sandbox, exec_ids: list[str]) -> dict[str, Exit | None]:
    """Each command's end (``None``: still running), polled at once; a command the router never
    ran is left out, any other failure raised."""
    from modal.exception import NotFoundError

    task_id, router = await _router(sandbox)

    async def one(exec_id: str) -> tuple[str, Exit | None] | None:
        try:
            return exec_id, _exit(await router.exec_poll(task_id, exec_id))
        except NotFoundError:
            return None

    found = await asyncio.gather(*(one(e) for e in exec_ids))
    return dict(item for item in found if item is not None)


async def _write_stdin(
    sandbox: _Sandbox, task_id: str, exec_id: str, offset: int, data: bytes, eof: bool
) -> None:
    """Write ``data`` at ``offset`` of the command's stdin (then close it, with ``eof``)."""
    _, router = await _router(sandbox, task_id)
    chunks = [data[i : i + STDIN_CHUNK] for i in range(0, len(data), STDIN_CHUNK)] or [b""]
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        await router.exec_stdin_write(task_id, exec_id, offset, chunk, eof and last)
        offset += len(chunk)


async def _list(
    client: _Client, app_id: str, tags: dict[str, str]
) -> list[tuple[str, dict[str, str], float, str]]:
    """``(id, tags, created_at, image_id)`` of the app's running sandboxes carrying ``tags``."""
    found: list[tuple[str, dict[str, str], float, str]] = []
    before = 0.0
    wanted = [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in tags.items()]
    while True:
        request = api_pb2.SandboxListRequest(
            app_id=app_id, before_timestamp=before, include_finished=False, tags=wanted
        )
        page = await SandboxImplV2.list_page(client, request)
        if not page.sandboxes:
            return found
        for info in page.sandboxes:
            found.append(
                (
                    info.id,
                    {tag.tag_name: tag.tag_value for tag in info.tags},
                    float(info.created_at),
                    info.image_id,
                )
            )
        before = page.sandboxes[-1].created_at


def _on_sdk_loop(func: Callable[..., Any]) -> Any:
    """``func`` registered with the SDK's synchronizer: ``.aio(...)`` runs it on the SDK's loop."""
    return synchronize_api(func, target_module=__name__)  # type: ignore[no-untyped-call]


start = _on_sdk_loop(_start)
output = _on_sdk_loop(_output)
wait = _on_sdk_loop(_wait)
attach = _on_sdk_loop(_attach)
polls = _on_sdk_loop(_polls)
write_stdin = _on_sdk_loop(_write_stdin)
list_sandboxes = _on_sdk_loop(_list)
