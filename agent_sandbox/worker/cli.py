"""``agent-sandbox worker``: serve sessions from a work queue until SIGTERM or SIGINT.

The first signal drains (no new calls; running ones get the grace period, then are cancelled
and answered with errors; items stopped; sandboxes destroyed; exit 0). A second signal cancels
what is still running at once (exit 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ..audit import AuditLog, JsonlSink
from ..errors import ConfigError
from ..models import SandboxSpec
from ..policy import Policy

__all__ = ["build_parser", "main", "run_worker"]

log = logging.getLogger("agent_sandbox.worker")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agent-sandbox worker``."""
    p = argparse.ArgumentParser(
        prog="agent-sandbox worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="URL",
        help="sqlite:///PATH, redis://HOST:PORT[/DB][?queue=NAME] or anthropic://ENVIRONMENT_ID",
    )
    p.add_argument("--provider", "-p", help="sandbox provider (default: from config, else local)")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="provider option")
    p.add_argument("--image")
    p.add_argument("--cpus", type=float)
    p.add_argument("--memory-mib", type=int, dest="memory_mib")
    p.add_argument("--network", choices=["none", "open"], default="none")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds a session's sandbox may live")
    p.add_argument("--workdir", help="confine the file tools to this directory in the sandbox")
    p.add_argument("--concurrency", type=int, default=8, help="sessions served at once")
    p.add_argument("--warm-pool", type=int, default=0, help="sandboxes kept ready in advance")
    p.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds running calls get on SIGTERM"
    )
    p.add_argument("--lease-ttl", type=float, help="lease TTL to ask for (default: the source's)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy rules (TOML or JSON)")
    p.add_argument("--audit", type=Path, metavar="FILE", help="append audit records (JSONL)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics endpoint")
    p.add_argument("--worker-id", help="this worker's name in labels, logs and queue stats")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str]) -> int:
    """Run ``agent-sandbox worker`` with the arguments after ``worker``; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    status: int = anyio.run(run_worker, args)
    return status


def _policy(path: Path | None) -> Policy | None:
    if path is None:
        return None
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
        return Policy.from_dict(data)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--policy {path}: {exc}") from exc


def _spec(args: argparse.Namespace) -> SandboxSpec:
    fields: dict[str, Any] = {"network": {"mode": args.network}, "ttl_seconds": args.ttl}
    for key in ("image", "cpus", "memory_mib"):
        value = getattr(args, key)
        if value is not None:
            fields[key] = value
    try:
        return SandboxSpec.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(f"invalid sandbox options: {exc}") from exc


def _options(args: argparse.Namespace) -> dict[str, str]:
    options = {}
    for item in args.option or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option must be KEY=VALUE, got {item!r}")
        options[key] = value
    return options


async def run_worker(args: argparse.Namespace) -> int:
    """Run the worker the parsed ``args`` describe; returns the exit status."""
    from . import Worker, WorkerMetrics, open_source, serve_metrics

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    policy = _policy(args.policy)
    audit = AuditLog(JsonlSink(args.audit)) if args.audit else None
    metrics = WorkerMetrics() if args.metrics_port is not None else None
    source = open_source(args.source, worker_id=args.worker_id)
    worker = Worker(
        source,
        provider=args.provider,
        options=_options(args),
        spec=_spec(args),
        concurrency=args.concurrency,
        warm_pool=args.warm_pool,
        grace_period=args.grace_period,
        lease_ttl=args.lease_ttl,
        policy=policy,
        audit=audit,
        workdir=args.workdir,
        metrics=metrics,
        worker_id=args.worker_id,
    )
    forced = False

    async def watch_signals() -> None:
        nonlocal forced
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not worker.draining:
                    log.info(
                        "%s: draining (grace period %g s; a second signal forces)",
                        signal.Signals(signum).name,
                        worker.grace_period,
                    )
                    worker.drain()
                else:
                    log.warning("%s: forced stop", signal.Signals(signum).name)
                    forced = True
                    worker.force_stop()

    log.info("worker %s serving %s", worker.worker_id, source.url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            if metrics is not None:
                await tg.start(serve_metrics, metrics, args.metrics_port, args.metrics_host)
            await worker.run()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await source.aclose()
    log.info("worker %s stopped", worker.worker_id)
    return 1 if forced else 0
