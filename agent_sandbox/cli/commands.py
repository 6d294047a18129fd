"""What the built-in sub-commands do (``cp`` lives in :mod:`.copy`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .. import registry
from ..backend import BaseBackend
from ..config import resolve
from ..errors import ConfigError, SandboxError
from ..models import SandboxSpec
from ..progress import Step, listening
from ..sandbox import Sandbox
from . import lookup
from .output import emit, error_line, info_dict, info_row, result_dict
from .progress import progress, wanted
from .status import report, status_of


def pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict. Raises ``ConfigError`` naming the malformed one."""
    result = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must be KEY=VALUE, got {item!r}")
        result[key] = value
    return result


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``-o KEY=VALUE`` provider options."""
    return dict(pairs(args.option, "--option"))


def _spec(args: argparse.Namespace) -> SandboxSpec:
    fields: dict[str, Any] = {
        "env": pairs(args.env, "--env"),
        "labels": pairs(args.label, "--label"),
        "network": {"mode": args.network},
    }
    for key in ("image", "cpus", "memory_mib", "workdir"):
        value = getattr(args, key)
        if value is not None:
            fields[key] = value
    if args.ttl is not None:
        fields["ttl_seconds"] = args.ttl
    try:
        return SandboxSpec.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(f"invalid sandbox options: {exc}") from exc


def _command(args: argparse.Namespace) -> str | list[str]:
    if args.shell is not None:
        if args.argv:
            raise ConfigError("give either --shell STRING or an argv after --, not both")
        return str(args.shell)
    if not args.argv:
        raise ConfigError("no command: give an argv after -- or --shell STRING")
    return list(args.argv)


async def _create(args: argparse.Namespace) -> Sandbox:
    spec = _spec(args)
    label = "creating a sandbox" + (f" on {args.provider}" if args.provider else "")
    async with progress(label, enabled=wanted(args.json)) as shown:

        def follow(step: Step) -> None:  # an image pull, from the provider's worker thread
            shown.label, shown.done, shown.total = step.what, step.done or 0, step.total

        with listening(follow):
            return await Sandbox.create(spec, provider=args.provider, options=options(args))


async def _run_command(sb: Sandbox, args: argparse.Namespace) -> int:
    command = _command(args)
    stdin = sys.stdin.buffer.read() if args.stdin else None
    env = pairs(args.env_exec, "--exec-env")
    if args.json:
        result = await sb.exec(command, cwd=args.cwd, env=env, stdin=stdin, timeout=args.timeout)
        emit(True, result_dict(result), "")
        return result.exit_code
    exit_code = 1
    async for event in sb.exec_stream(
        command, cwd=args.cwd, env=env, stdin=stdin, timeout=args.timeout
    ):
        if event.kind == "stdout":
            sys.stdout.buffer.write(event.data)
            sys.stdout.flush()
        elif event.kind == "stderr":
            sys.stderr.buffer.write(event.data)
            sys.stderr.flush()
        else:
            exit_code = event.exit_code if event.exit_code is not None else 1
    return exit_code


async def connect(args: argparse.Namespace, sandbox_id: str) -> Sandbox:
    """A handle on ``sandbox_id``, found on whichever provider holds it."""
    backend, info = await lookup.find(sandbox_id, args.provider, options(args))
    return Sandbox(backend, info)


async def cmd_create(args: argparse.Namespace) -> int:
    """``create``: print the new sandbox's id (or its info with ``--json``)."""
    sb = await _create(args)
    await sb.close()
    emit(args.json, info_dict(sb.info), sb.id)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    """``run``: create, run one command, destroy; the command's exit status."""
    _command(args)  # a missing command is an error before anything is created
    async with await _create(args) as sb:
        return await _run_command(sb, args)


async def cmd_exec(args: argparse.Namespace) -> int:
    """``exec``: run a command in an existing sandbox; the command's exit status."""
    _command(args)
    sb = await connect(args, args.sandbox_id)
    try:
        return await _run_command(sb, args)
    finally:
        await sb.close()


async def cmd_ls(args: argparse.Namespace) -> int:
    """``ls``: sandboxes of every reachable provider (or of ``--provider``)."""
    infos, search = await lookup.list_all(
        args.provider, options(args), pairs(args.label, "--label")
    )
    emit(
        args.json, [info_dict(i) for i in infos], "\n".join(map(info_row, infos)) or "no sandboxes"
    )
    if search.unreachable and not args.json:
        error_line(f"not reached: {search.summary()}")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    """``rm``: destroy each sandbox named; an id no reachable provider knows is an error."""
    destroyed: list[str] = []
    failed: list[SandboxError] = []
    for sandbox_id in args.sandbox_ids:
        try:
            sb = await connect(args, sandbox_id)
        except SandboxError as exc:
            failed.append(exc)
            report(exc, as_json=args.json)
            continue
        try:
            await sb.destroy()
        finally:
            await sb.close()
        destroyed.append(sandbox_id)
    emit(args.json, {"destroyed": destroyed}, "\n".join(destroyed))
    return status_of(failed[0]) if failed else 0


async def cmd_sweep(args: argparse.Namespace) -> int:
    """``sweep``: destroy the provider's expired managed sandboxes."""
    removed = await Sandbox.sweep(provider=args.provider, options=options(args))
    emit(args.json, {"removed": removed}, f"removed {len(removed)} expired sandbox(es)")
    return 0


async def cmd_providers(args: argparse.Namespace) -> int:
    """``providers``: known providers, whether installed, which one config selects."""
    try:
        configured = resolve(args.provider, options(args)).provider
    except SandboxError:
        configured = None
    installed = registry.available()
    rows = []
    for name in registry.known_names():
        known = registry.KNOWN_PROVIDERS.get(name)
        rows.append(
            {
                "name": name,
                "installed": name in installed,
                "default": name == configured,
                "install": known.install_hint if known else None,
            }
        )
    lines = [
        f"{'*' if r['default'] else ' '} {r['name']:<10} "
        + ("installed" if r["installed"] else f"not installed: {r['install']}")
        for r in rows
    ]
    emit(args.json, rows, "\n".join(lines) + "\n(* = the provider your configuration selects)")
    return 0


async def cmd_doctor(args: argparse.Namespace) -> int:
    """``doctor``: check a provider's prerequisites; 1 when a check fails."""
    provider = args.name or args.provider
    checks: list[dict[str, Any]] = []
    backend: BaseBackend | None = None
    try:
        resolved = resolve(provider, options(args))
        checks.append(
            {
                "name": "config",
                "ok": True,
                "detail": f"provider {resolved.provider!r}"
                + (f" from {resolved.source}" if resolved.source else ""),
            }
        )
        backend = resolved.make_backend()
        checks += [vars(d) for d in await backend.doctor()]
    except SandboxError as exc:
        checks.append({"name": "config", "ok": False, "detail": f"{exc.code}: {exc}"})
    finally:
        if backend is not None:
            await backend.aclose()
    ok = all(c["ok"] for c in checks)
    lines = [f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}" for c in checks]
    emit(args.json, {"ok": ok, "checks": checks}, "\n".join(lines))
    return 0 if ok else 1
