"""The ``agent-sandbox`` command: create, run, copy, list, destroy and sweep sandboxes.

Human output by default; ``--json`` for scripts. Sandbox-side paths in ``cp`` are written
``SANDBOX_ID:PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from . import registry
from .backend import BaseBackend
from .config import resolve
from .errors import ConfigError, SandboxError
from .models import ExecResult, SandboxInfo, SandboxSpec
from .sandbox import Sandbox


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    result = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must be KEY=VALUE, got {item!r}")
        result[key] = value
    return result


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(_pairs(args.option, "--option"))


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif human:
        print(human)


def _info_dict(info: SandboxInfo) -> dict[str, Any]:
    return info.model_dump(mode="json")


def _result_dict(result: ExecResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "duration_s": round(result.duration_s, 4),
    }


def _spec(args: argparse.Namespace) -> SandboxSpec:
    fields: dict[str, Any] = {
        "env": _pairs(args.env, "--env"),
        "labels": _pairs(args.label, "--label"),
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


async def _run_command(sb: Sandbox, args: argparse.Namespace) -> int:
    stdin = sys.stdin.buffer.read() if args.stdin else None
    command = _command(args)
    if args.json:
        result = await sb.exec(
            command,
            cwd=args.cwd,
            env=_pairs(args.env_exec, "--env"),
            stdin=stdin,
            timeout=args.timeout,
        )
        _print(args, _result_dict(result), "")
        return result.exit_code
    exit_code = 1
    async for event in sb.exec_stream(
        command, cwd=args.cwd, env=_pairs(args.env_exec, "--env"), stdin=stdin, timeout=args.timeout
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


async def cmd_create(args: argparse.Namespace) -> int:
    sb = await Sandbox.create(_spec(args), provider=args.provider, options=_options(args))
    await sb.close()
    _print(args, _info_dict(sb.info), sb.id)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    async with await Sandbox.create(
        _spec(args), provider=args.provider, options=_options(args)
    ) as sb:
        return await _run_command(sb, args)


async def cmd_exec(args: argparse.Namespace) -> int:
    sb = await Sandbox.connect(args.sandbox_id, provider=args.provider, options=_options(args))
    try:
        return await _run_command(sb, args)
    finally:
        await sb.close()


def _split_remote(value: str) -> tuple[str | None, str]:
    head, sep, tail = value.partition(":")
    if sep and head and "/" not in head and not os.path.exists(value):
        return head, tail or "."
    return None, value


async def cmd_cp(args: argparse.Namespace) -> int:
    src_id, src = _split_remote(args.src)
    dst_id, dst = _split_remote(args.dst)
    if (src_id is None) == (dst_id is None):
        raise ConfigError("cp needs exactly one side written SANDBOX_ID:PATH")
    sandbox_id = src_id or dst_id
    assert sandbox_id is not None
    sb = await Sandbox.connect(sandbox_id, provider=args.provider, options=_options(args))
    try:
        if dst_id is not None:  # upload
            local = Path(src)
            if await anyio.Path(local).is_dir():
                await sb.upload(local, dst)
            else:
                data = await anyio.Path(local).read_bytes()
                target = dst.rstrip("/") + "/" + local.name if dst.endswith("/") else dst
                await sb.write_file(target, data)
            _print(args, {"copied": str(local), "to": f"{sandbox_id}:{dst}"}, "")
        else:  # download
            info = await sb.stat(src)
            if info.type == "dir":
                await sb.download(src, dst)
            else:
                target_path = Path(dst)
                if await anyio.Path(target_path).is_dir():
                    target_path = target_path / info.name
                await anyio.Path(target_path).write_bytes(await sb.read_file(src))
            _print(args, {"copied": f"{sandbox_id}:{src}", "to": dst}, "")
    finally:
        await sb.close()
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    infos = await Sandbox.list(
        _pairs(args.label, "--label"), provider=args.provider, options=_options(args)
    )
    rows = [
        f"{i.id}\t{i.state}\t{i.image or '-'}\texpires {i.expires_at.isoformat() if i.expires_at else '-'}"
        for i in infos
    ]
    _print(args, [_info_dict(i) for i in infos], "\n".join(rows) or "no sandboxes")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    resolved = resolve(args.provider, _options(args))
    backend = resolved.make_backend()
    try:
        for sandbox_id in args.sandbox_ids:
            await backend.destroy(sandbox_id)
    finally:
        await backend.aclose()
    _print(args, {"destroyed": args.sandbox_ids}, "\n".join(args.sandbox_ids))
    return 0


async def cmd_sweep(args: argparse.Namespace) -> int:
    removed = await Sandbox.sweep(provider=args.provider, options=_options(args))
    _print(args, {"removed": removed}, f"removed {len(removed)} expired sandbox(es)")
    return 0


async def cmd_providers(args: argparse.Namespace) -> int:
    try:
        configured = resolve(args.provider, _options(args)).provider
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
    _print(args, rows, "\n".join(lines) + "\n(* = the provider your configuration selects)")
    return 0


async def cmd_doctor(args: argparse.Namespace) -> int:
    provider = args.name or args.provider
    checks: list[dict[str, Any]] = []
    backend: BaseBackend | None = None
    try:
        resolved = resolve(provider, _options(args))
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
    _print(args, {"ok": ok, "checks": checks}, "\n".join(lines))
    return 0 if ok else 1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", "-p", help="provider name (default: from config, else local)")
    parser.add_argument(
        "--option", "-o", action="append", metavar="KEY=VALUE", help="provider option"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image")
    parser.add_argument("--cpus", type=float)
    parser.add_argument("--memory-mib", type=int, dest="memory_mib")
    parser.add_argument("--workdir")
    parser.add_argument("--ttl", type=float, help="seconds before the sandbox ends itself")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="sandbox environment")
    parser.add_argument("--network", choices=["none", "open"], default="open")


def _exec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cwd")
    parser.add_argument("--timeout", type=float, help="seconds; kills the command's process tree")
    parser.add_argument("--exec-env", action="append", dest="env_exec", metavar="KEY=VALUE")
    parser.add_argument(
        "--stdin", action="store_true", help="feed this process's stdin to the command"
    )
    parser.add_argument("--shell", "-c", metavar="STRING", help="run STRING with sh -c")
    parser.epilog = "The command's argv goes after --, e.g.: agent-sandbox exec ID -- ls -la"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agent-sandbox``."""
    parser = argparse.ArgumentParser(prog="agent-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="create a sandbox and print its id")
    _common(p)
    _spec_args(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("run", help="create a sandbox, run one command in it, destroy it")
    _common(p)
    _spec_args(p)
    _exec_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("exec", help="run a command in an existing sandbox")
    _common(p)
    p.add_argument("sandbox_id")
    _exec_args(p)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("cp", help="copy a file or tree in or out: cp SRC ID:DST | cp ID:SRC DST")
    _common(p)
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("ls", help="list sandboxes")
    _common(p)
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("rm", help="destroy sandboxes")
    _common(p)
    p.add_argument("sandbox_ids", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("sweep", help="destroy managed sandboxes whose TTL has passed")
    _common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("providers", help="which providers are installed and configured")
    _common(p)
    p.set_defaults(func=cmd_providers)

    p = sub.add_parser("doctor", help="check a provider's prerequisites")
    _common(p)
    p.add_argument("name", nargs="?", help="provider to check (default: the configured one)")
    p.set_defaults(func=cmd_doctor)

    sub.add_parser(
        "mcp",
        help="serve a sandbox's tools over MCP (see: agent-sandbox mcp --help)",
        add_help=False,
    )
    audit = sub.add_parser(
        "audit", help="audit log tools (see: agent-sandbox audit verify --help)", add_help=False
    )
    audit.set_defaults(func=None)
    return parser


def _delegate(argv: list[str]) -> int | None:
    """Sub-commands with parsers of their own (they need optional extras)."""
    if argv[:1] == ["mcp"]:
        try:
            from .mcp.server import main as mcp_main
        except ImportError as exc:
            print(
                f'agent-sandbox mcp needs the MCP extra ({exc}): pip install "agent-sandbox[mcp]"',
                file=sys.stderr,
            )
            return 2
        return mcp_main(argv[1:])
    if argv[:2] == ["audit", "verify"]:
        from .audit import verify_main

        return verify_main(argv[2:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``agent-sandbox``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegate(args_list)
    if delegated is not None:
        return delegated
    parser = build_parser()
    # Everything after the first `--` is the command's argv, never our options.
    split = args_list.index("--") if "--" in args_list else len(args_list)
    args = parser.parse_args(args_list[:split])
    args.argv = args_list[split + 1 :]
    if args.argv and args.command not in ("run", "exec"):
        parser.error(f"'--' and a command go only with run and exec, not {args.command}")
    if getattr(args, "func", None) is None:
        parser.error(
            f"unknown use of {args.command!r}; try: agent-sandbox {args.command} verify FILE"
        )
    try:
        code: int = anyio.run(args.func, args)
    except SandboxError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.to_dict()}), file=sys.stderr)
        else:
            print(f"agent-sandbox: {exc.code}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
