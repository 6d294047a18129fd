"""The worker's metrics in the Prometheus text format, and the HTTP endpoint serving them.

Exposed (prefix ``agent_sandbox_worker_``): ``queue_depth``, ``queue_pending``,
``queue_oldest_age_seconds``, ``queue_workers_polling`` (from the source's stats),
``sessions_running``, ``sessions_total{outcome}``, ``tool_calls_total{tool,outcome}`` and the
histogram ``tool_call_duration_seconds{tool}``. Scale on ``queue_depth`` (or the oldest age).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Sequence
from datetime import datetime, timezone

import anyio
import anyio.abc

from .source import QueueStats

log = logging.getLogger("agent_sandbox.worker")

PREFIX = "agent_sandbox_worker_"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(BUCKETS, value)
        if index < len(BUCKETS):
            self.counts[index] += 1
        self.total += 1
        self.sum += value


class WorkerMetrics:
    """Counters, gauges and a latency histogram of one worker process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sessions_running = 0
        self.stats: QueueStats | None = None
        self._sessions: dict[str, int] = {}
        self._calls: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Histogram] = {}

    def session_started(self) -> None:
        """A session began on this worker."""
        with self._lock:
            self.sessions_running += 1

    def session_ended(self, outcome: str) -> None:
        """A session ended: ``closed``, ``drained``, ``stopped``, ``lease_lost`` or ``failed``."""
        with self._lock:
            self.sessions_running -= 1
            self._sessions[outcome] = self._sessions.get(outcome, 0) + 1

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        """A tool call was answered (``ok``, ``error``, ``cancelled``, ``interrupted``)."""
        with self._lock:
            key = (tool, outcome)
            self._calls[key] = self._calls.get(key, 0) + 1
            self._durations.setdefault(tool, _Histogram()).observe(seconds)

    def render(self, now: datetime | None = None) -> str:
        """The metrics in the Prometheus text exposition format (0.0.4)."""
        now = now or datetime.now(timezone.utc)
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")

        def sample(name: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
            lines.append(f"{PREFIX}{name}{_labels(labels)} {_number(value)}")

        with self._lock:
            stats = self.stats
            if stats is not None:
                family("queue_depth", "gauge", "Work items waiting to be polled.")
                sample("queue_depth", stats.depth)
                family("queue_pending", "gauge", "Work items polled but not yet acknowledged.")
                sample("queue_pending", stats.pending)
                family("queue_oldest_age_seconds", "gauge", "Age of the oldest queued work item.")
                oldest = stats.oldest_queued_at
                sample(
                    "queue_oldest_age_seconds",
                    max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
                )
                if stats.workers_polling is not None:
                    family("queue_workers_polling", "gauge", "Workers that polled recently.")
                    sample("queue_workers_polling", stats.workers_polling)
            family("sessions_running", "gauge", "Sessions this worker is serving.")
            sample("sessions_running", self.sessions_running)
            family("sessions_total", "counter", "Sessions this worker finished, by outcome.")
            for outcome, count in sorted(self._sessions.items()):
                sample("sessions_total", count, [("outcome", outcome)])
            family("tool_calls_total", "counter", "Tool calls answered, by tool and outcome.")
            for (tool, outcome), count in sorted(self._calls.items()):
                sample("tool_calls_total", count, [("tool", tool), ("outcome", outcome)])
            family(
                "tool_call_duration_seconds",
                "histogram",
                "Seconds from taking a tool call to posting its result.",
            )
            for tool, hist in sorted(self._durations.items()):
                running = 0
                for bound, count in zip(BUCKETS, hist.counts, strict=True):
                    running += count
                    sample(
                        "tool_call_duration_seconds_bucket",
                        running,
                        [("tool", tool), ("le", _number(bound))],
                    )
                sample(
                    "tool_call_duration_seconds_bucket",
                    hist.total,
                    [("tool", tool), ("le", "+Inf")],
                )
                sample("tool_call_duration_seconds_sum", hist.sum, [("tool", tool)])
                sample("tool_call_duration_seconds_count", hist.total, [("tool", tool)])
        return "\n".join(lines) + "\n"


async def serve_metrics(
    metrics: WorkerMetrics,
    port: int,
    host: str = "0.0.0.0",
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` (HTTP/1.0, one response per connection) until cancelled.

    Reports the port actually bound through ``task_status`` (useful with port 0).
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    head = b""
                    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < 8192:
                        head += await stream.receive(4096)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            request_line = head.split(b"\n", 1)[0].decode("latin-1").split()
            if (
                len(request_line) >= 2
                and request_line[0] == "GET"
                and (request_line[1].split("?")[0] in ("/metrics", "/"))
            ):
                body = metrics.render().encode()
                status, kind = "200 OK", CONTENT_TYPE
            else:
                body, status, kind = b"not found\n", "404 Not Found", "text/plain"
            reply = (
                f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                await stream.send(reply + body)
            except (anyio.BrokenResourceError, OSError):
                return

    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        task_status.started(bound)
        await listener.serve(handle)
