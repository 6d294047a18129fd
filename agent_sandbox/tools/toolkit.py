"""The :class:`ToolKit`: the tools coding agents use, run in one sandbox."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
from pydantic import BaseModel, ValidationError

from ..errors import (
    CommandTimeout,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    PolicyDenied,
    SandboxError,
    SandboxNotFound,
)
from ..models import ExecResult
from . import _python
from ._glob import compile_glob, split_static_prefix
from ._inputs import BashInput, EditInput, GlobInput, GrepInput, ReadInput, WriteInput
from ._schema import JsonDict, Tool, ToolResult, format_validation_error
from ._shell import ShellState

if TYPE_CHECKING:
    from ..audit import AuditLog
    from ..policy import Policy
    from ..sandbox import Sandbox

log = logging.getLogger("agent_sandbox.tools")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OUTPUT_BUDGET = 30_000
DEFAULT_BASH_TIMEOUT_MS = 120_000
MAX_BASH_TIMEOUT_MS = 600_000
CAPTURE_LIMIT = 8 * 1024 * 1024
"""Bytes of a command's output kept in memory; beyond that the output is cut at the source."""
MAX_READ_BYTES = 16 * 1024 * 1024
"""Files larger than this are not loaded whole by ``read``: the lines asked for are cut out in the
sandbox."""
MAX_LINE_CHARS = 2_000
MAX_RESULTS = 1_000

FILE_TOOLS = frozenset({"read", "write", "edit", "glob", "grep"})
_CONTENT_FIELDS = {"write": ("content",), "edit": ("old_string", "new_string")}
"""Arguments holding file content: the audit log keeps their size and digest, not the text."""

_REALPATH = """
for p do
  r=$(realpath -m -- "$p" 2>/dev/null) ||
  r=$(python3 -c 'import os,sys; print(os.path.realpath(sys.argv[1]))' "$p" 2>/dev/null) ||
  r=$(readlink -f -- "$p" 2>/dev/null) || { echo "cannot resolve $p" >&2; exit 3; }
  [ -n "$r" ] || { echo "cannot resolve $p" >&2; exit 3; }
  printf '%s\\0' "$r"
done
"""

_GLOB_LIST = """
[ -e "$1" ] || exit 44
[ -d "$1" ] || exit 45
find "$1" -name .git -prune -o \\( -type f -o -type l \\) -print0
"""

_GREP = """
[ -e "$2" ] || exit 44
if command -v rg >/dev/null 2>&1; then
  exec rg --line-number --no-heading --with-filename --null --color never --hidden \\
    --no-ignore --glob '!.git' --no-messages -e "$1" -- "$2"
fi
grep -rnHIZ --exclude-dir=.git -s -e x -- /dev/null >/dev/null 2>&1
if [ $? -le 1 ]; then
  exec grep -rnHIEZ --exclude-dir=.git -s -e "$1" -- "$2"
fi
# a minimal grep (busybox): one file at a time, the NUL after the name added here
find "$2" -name .git -prune -o -type f -exec sh -c '
  pattern=$1; shift; rc=1
  for f do
    out=$(grep -nE -e "$pattern" -- "$f"); r=$?
    if [ $r -ge 2 ]; then rc=2; elif [ $r -eq 0 ]; then
      n=$(head -c 8192 "$f" | wc -c); t=$(head -c 8192 "$f" | tr -d "\\000" | wc -c)
      [ "$n" -eq "$t" ] || continue
      [ $rc -eq 1 ] && rc=0
      printf "%s\\n" "$out" | while IFS= read -r l; do printf "%s\\0%s\\n" "$f" "$l"; done
    fi
  done
  exit $rc' sh "$1" {} +
"""

BASH_DESCRIPTION = """Run a shell command in the sandbox and return its combined stdout and stderr.

The shell is persistent: the working directory, exported variables, shell variables and functions \
carry over from one call to the next. Set restart to true to get a fresh shell. Commands run \
non-interactively with no stdin; a command that runs longer than timeout_ms (default {default}, \
at most {maximum}) is \
killed and the shell restarted. Long output is cut, and the whole output is saved to a file whose \
path is given."""

READ_DESCRIPTION = """Read a text file from the sandbox, with line numbers (like cat -n).

Use view_range [start, end] (1-based, inclusive; end -1 = end of file) to read part of a long \
file. Binary files are not shown; their size is reported instead."""

WRITE_DESCRIPTION = """Create a file, or overwrite it, with the given content.

Parent directories are created as needed. To change part of an existing file, prefer edit."""

EDIT_DESCRIPTION = """Replace an exact string in a file.

old_string must match the file exactly (whitespace and indentation included) and occur exactly \
once, unless replace_all is true; otherwise the edit fails and says how many matches were \
found. Read the file first to copy the text exactly."""

GLOB_DESCRIPTION = """Find files by name with a glob pattern such as '**/*.py' or 'src/*.{ts,tsx}'.

Returns matching file paths, sorted. '.git' directories are skipped."""

GREP_DESCRIPTION = """Search file contents with a regular expression (extended syntax).

Returns matching lines as path:line_number:text, sorted by path and line. Binary files and '.git' \
directories are skipped."""


def _audited_arguments(name: str, arguments: Any) -> Any:
    """``arguments`` as the audit log records them: file content as ``{bytes, sha256}``."""
    fields = _CONTENT_FIELDS.get(name)
    if not fields or not isinstance(arguments, dict):
        return arguments
    out = dict(arguments)
    for key in fields:
        value = out.get(key)
        if isinstance(value, str):
            data = value.encode("utf-8", errors="surrogatepass")
            out[key] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


class ToolKit:
    """The tools a coding agent uses — ``bash``, ``read``, ``write``, ``edit``, ``glob``, ``grep`` —
    run in one sandbox, plus any custom Python tools you register.

    Args:
        sandbox: the :class:`~agent_sandbox.Sandbox` the tools act on.
        workdir: when set, the file tools (read, write, edit, glob, grep) are confined to this
            directory: paths are resolved inside the sandbox (symlinks and ``..`` included) and
            refused when they land outside it. Relative paths and bash's first working directory
            start here; bash creates it when missing. ``bash`` itself is not confined by path, only by the sandbox.
        output_budget: most characters of output returned to the model per call; the rest is
            cut with a note naming the file in the sandbox that holds the whole output.
        policy: a :class:`~agent_sandbox.policy.Policy` asked before every call; a denial is an
            ``is_error`` result.
        audit: an :class:`~agent_sandbox.audit.AuditLog` that records every call.
        outputs_dir: directory in the sandbox where cut outputs are saved in full (default
            ``agent-sandbox-outputs`` under the sandbox's ``$TMPDIR``, else ``/tmp``).
        state_dir: directory in the sandbox where the persistent shell keeps its state (default
            ``agent-sandbox-shell`` under ``$TMPDIR``, else ``/tmp``).
        default_timeout_ms: bash's timeout when a call gives none; ``max_timeout_ms`` caps it.
        max_read_bytes: files larger than this are not loaded whole by ``read``; the lines asked
            for are selected in the sandbox instead.

    Every call goes through :meth:`run`, which never raises for a failed call: bad input, bad
    paths, timeouts, denials and a dead sandbox all come back as ``ToolResult(is_error=True)``.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        workdir: str | None = None,
        output_budget: int = DEFAULT_OUTPUT_BUDGET,
        policy: Policy | None = None,
        audit: AuditLog | None = None,
        outputs_dir: str | None = None,
        state_dir: str | None = None,
        default_timeout_ms: int = DEFAULT_BASH_TIMEOUT_MS,
        max_timeout_ms: int = MAX_BASH_TIMEOUT_MS,
        max_read_bytes: int = MAX_READ_BYTES,
    ) -> None:
        if output_budget < 200:
            raise ValueError("output_budget must be at least 200 characters")
        self.sandbox = sandbox
        self.workdir = _absolute(workdir, sandbox.info.workdir) if workdir else None
        self.output_budget = output_budget
        self.policy = policy
        self.audit = audit
        self.outputs_dir = (outputs_dir.rstrip("/") or "/") if outputs_dir else None
        self.default_timeout_ms = default_timeout_ms
        self.max_timeout_ms = max_timeout_ms
        self.max_read_bytes = max_read_bytes
        self._shell = ShellState(state_dir)
        self._shell_lock = anyio.Lock()
        self._root: str | None = None
        self._workdir_ready = False
        self._saved = 0
        self._tools: dict[str, Tool] = {}
        for tool in (
            Tool(
                "bash",
                BASH_DESCRIPTION.format(default=default_timeout_ms, maximum=max_timeout_ms),
                BashInput,
                self._bash,
                keep_tail=True,
            ),
            Tool("read", READ_DESCRIPTION, ReadInput, self._read),
            Tool("write", WRITE_DESCRIPTION, WriteInput, self._write),
            Tool("edit", EDIT_DESCRIPTION, EditInput, self._edit),
            Tool("glob", GLOB_DESCRIPTION, GlobInput, self._glob),
            Tool("grep", GREP_DESCRIPTION, GrepInput, self._grep),
        ):
            self._tools[tool.name] = tool

    # -- the tool set -----------------------------------------------------------------------

    @property
    def tools(self) -> list[Tool]:
        """The registered tools, built-in first."""
        return list(self._tools.values())

    @property
    def names(self) -> list[str]:
        """Names of the registered tools."""
        return list(self._tools)

    def get(self, name: str) -> Tool:
        """The tool called ``name``. Raises ``KeyError``."""
        return self._tools[name]

    def add_tool(self, tool: Tool, *, replace: bool = False) -> Tool:
        """Register a :class:`Tool` (a host-side handler). Raises ``ValueError`` on a name clash."""
        if tool.name in self._tools and not replace:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def remove_tool(self, name: str) -> None:
        """Unregister a tool (built-in ones included). Raises ``KeyError``."""
        del self._tools[name]

    def _select(self, names: Iterable[str] | None) -> list[Tool]:
        if names is None:
            return self.tools
        return [self._tools[name] for name in names]

    def anthropic_tools(self, names: Iterable[str] | None = None) -> list[JsonDict]:
        """Tool definitions for the Anthropic Messages API: ``{name, description, input_schema}``."""
        return [tool.anthropic() for tool in self._select(names)]

    def openai_tools(self, names: Iterable[str] | None = None) -> list[JsonDict]:
        """Tool definitions for OpenAI Chat Completions: ``{type: "function", function: {...}}``."""
        return [tool.openai() for tool in self._select(names)]

    def openai_responses_tools(self, names: Iterable[str] | None = None) -> list[JsonDict]:
        """Tool definitions for the OpenAI Responses API (flat ``{type, name, parameters}``)."""
        return [tool.openai_responses() for tool in self._select(names)]

    def mcp_tools(self, names: Iterable[str] | None = None) -> list[JsonDict]:
        """MCP tool definitions as plain dicts: ``{name, description, inputSchema}``."""
        return [tool.mcp() for tool in self._select(names)]

    # -- custom tools -----------------------------------------------------------------------

    @overload
    def tool(self, func: F, /) -> F: ...

    @overload
    def tool(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator registering a Python function as a tool that runs *inside* the sandbox.

        Use as ``@toolkit.tool`` or ``@toolkit.tool(name=..., description=..., timeout=...)``.
        The input schema comes from the signature and type hints (via pydantic), the description
        from the docstring (an ``Args:`` section describes the parameters). The function travels
        as source: it must be self-contained (import what it needs inside its body) and take and
        return JSON-compatible values. A ``str`` return value is shown as is, anything else as
        JSON; what it prints is shown too. The sandbox needs ``python3``.
        The function itself is returned unchanged.
        """

        def register(target: F) -> F:
            self.register(target, name=name, description=description, timeout=timeout)
            return target

        return register(func) if func is not None else register

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Tool:
        """Register ``func`` as a sandboxed Python tool (see :meth:`tool`); return the :class:`Tool`.

        Raises ``TypeError`` when the function's source cannot be shipped (lambdas, builtins,
        ``*args``), ``ValueError`` on a name clash.
        """
        tool_name = name or func.__name__
        source = _python.function_source(func)
        model, doc = _python.input_model_of(func, tool_name)
        seconds = timeout if timeout is not None else self.default_timeout_ms / 1000

        async def handler(arguments: BaseModel) -> ToolResult:
            return await self._run_python(tool_name, source, func.__name__, arguments, seconds)

        return self.add_tool(Tool(tool_name, description or doc, model, handler))

    async def _run_python(
        self, name: str, source: str, function: str, arguments: BaseModel, seconds: float
    ) -> ToolResult:
        payload = _python.request_payload(source, function, arguments.model_dump(mode="json"))
        try:
            result = await self.sandbox.exec(
                ["sh", "-c", _python.LAUNCHER, _python.RUNNER],
                stdin=payload,
                timeout=seconds,
                cwd=await self._cwd(),
                output_limit=CAPTURE_LIMIT,
            )
        except CommandTimeout:
            return ToolResult(
                f"tool {name!r} timed out after {seconds:g} s and was killed", is_error=True
            )
        if result.exit_code == 127 and "python3 not found" in result.stderr:
            return ToolResult(
                f"tool {name!r} runs Python inside the sandbox, but the sandbox has no python3 "
                f"(image: {self.sandbox.info.image or 'provider default'}); use an image with "
                "Python 3 installed",
                is_error=True,
            )
        reply = _python.parse_reply(result.stdout)
        if reply is None:
            detail = (result.stderr or result.stdout).strip() or f"exit status {result.exit_code}"
            return ToolResult(f"tool {name!r} failed in the sandbox: {detail}", is_error=True)
        before = result.stdout[: result.stdout.rfind(_python.RESULT_MARKER)]
        printed = before + str(reply.get("stdout") or "")
        if not reply.get("ok"):
            error = str(reply.get("error") or "unknown error")
            return ToolResult((printed + error).strip(), is_error=True)
        value = _python.render_value(reply.get("value"))
        text = printed + value if printed and value else printed or value
        return ToolResult(text if text else "(no output)")

    # -- running calls ----------------------------------------------------------------------

    async def run(
        self, name: str, input: Mapping[str, Any] | None, *, call_id: str | None = None
    ) -> ToolResult:
        """Run one tool call and return the result for the model.

        Never raises for a failed call: an unknown tool, input that does not match the schema,
        a path outside the workdir, a timeout, a policy denial or a dead sandbox all come back as
        ``ToolResult(is_error=True)`` with a message the model can act on. Output longer than the
        budget is cut with a note; the whole output is saved in the sandbox and the note names
        the file. Cancellation propagates.

        ``call_id`` (the model's tool-use id) goes to the policy and the audit log; one is
        generated when omitted.
        """
        arguments: Any = dict(input) if isinstance(input, Mapping) else input
        if arguments is None:
            arguments = {}
        call_id = call_id or new_call_id()
        if self.audit is None:
            result, _ = await self._run(name, arguments, call_id)
            return result
        with self.audit.span(
            "tool_call",
            tool=name,
            call_id=call_id,
            sandbox_id=self.sandbox.id,
            provider=self.sandbox.provider,
            arguments=_audited_arguments(name, arguments),
        ) as record:
            result, decision = await self._run(name, arguments, call_id)
            record.decision = decision
            summary: dict[str, Any] = {"is_error": result.is_error, "chars": len(result.content)}
            if result.truncated:
                summary["truncated"] = True
                summary["full_output_path"] = result.full_output_path
            record.result = summary
        return result

    async def _run(self, name: str, arguments: Any, call_id: str | None) -> tuple[ToolResult, str]:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools)
            return ToolResult(f"unknown tool {name!r}; available tools: {known}", True), "deny"
        if self.policy is not None or self._sandbox_policy() is not None:
            try:
                denial = self._check_policy(tool, arguments, call_id)
            except Exception as exc:  # a broken policy denies rather than lets through
                log.exception("policy check of %s failed", name)
                denial = f"the policy check failed ({type(exc).__name__}: {exc})"
            if denial is not None:
                return ToolResult(f"denied by policy: {denial}", is_error=True), "deny"
        try:
            parsed = tool.parse(arguments)
        except ValidationError as exc:
            return ToolResult(format_validation_error(name, exc), is_error=True), "allow"
        except TypeError as exc:
            return ToolResult(str(exc), is_error=True), "allow"
        try:
            result = await tool.handler(parsed)
        except SandboxNotFound as exc:
            result = ToolResult(f"the sandbox is gone ({exc}); the tool cannot run", True)
        except PolicyDenied as exc:  # raised by a policy-enforcing backend under the toolkit
            message = str(exc)
            if not message.startswith("denied by policy"):
                message = f"denied by policy: {message}"
            result = ToolResult(message, is_error=True)
        except SandboxError as exc:
            result = ToolResult(f"{name} failed: {exc} [{exc.code}]", is_error=True)
        except Exception as exc:
            log.exception("tool %s failed", name)
            result = ToolResult(f"{name} failed: {type(exc).__name__}: {exc}", is_error=True)
        return await self._fit(tool, result, call_id), "allow"

    def _check_policy(self, tool: Tool, arguments: Any, call_id: str | None) -> str | None:
        from ..policy import Action

        command = path = None
        if isinstance(arguments, dict):
            if tool.name == "bash" and isinstance(arguments.get("command"), str):
                command = arguments["command"]
            if tool.name in FILE_TOOLS:
                raw = arguments.get("file_path", arguments.get("path"))
                pattern = arguments.get("pattern")
                if tool.name == "glob" and isinstance(pattern, str):
                    raw, _ = _glob_search(raw if isinstance(raw, str) else None, pattern)
                if isinstance(raw, str) and raw and "\x00" not in raw:
                    path = _absolute(raw, self._base)
                elif raw is None and tool.name in ("glob", "grep"):
                    path = self._base
        action = Action(
            op="tool_call",
            tool=tool.name,
            call_id=call_id,
            input=arguments,
            sandbox_id=self.sandbox.id,
            command=command,
            path=path,
        )
        decision = self.policy.decide(action) if self.policy is not None else None
        if decision is not None and not decision.allowed:
            return decision.reason or "no reason given"
        guard = self._sandbox_policy()
        if command is not None and guard is not None:
            # The shell gets the command on its stdin, out of the sandbox policy's sight:
            # ask it here about the command itself, as it would for an exec.
            verdict = guard.decide(
                Action(
                    op="exec",
                    sandbox_id=self.sandbox.id,
                    input={"command": command},
                    command=command,
                )
            )
            if not verdict.allowed:
                return verdict.reason or "no reason given"
        return None

    def _sandbox_policy(self) -> Policy | None:
        """The policy the sandbox itself was given (``Sandbox.create(policy=...)``), if any."""
        from ..audit import AuditingBackend

        backend = self.sandbox.backend
        return backend.policy if isinstance(backend, AuditingBackend) else None

    async def _fit(self, tool: Tool, result: ToolResult, call_id: str | None) -> ToolResult:
        """Cut ``result`` to the output budget, saving the whole text in the sandbox first."""
        text = result.content
        if len(text) <= self.output_budget:
            return result
        saved: str | None = None
        self._saved += 1
        try:
            if self.outputs_dir is None:
                probe = await self.sandbox.exec('printf %s "${TMPDIR:-/tmp}"', timeout=30)
                self.outputs_dir = (
                    probe.stdout.strip().rstrip("/") or "/tmp"
                ) + "/agent-sandbox-outputs"
            target = f"{self.outputs_dir}/{tool.name}-{self._shell.token}-{self._saved:04d}.txt"
            await self.sandbox.write_file(target, text)
            saved = target
        except Exception as exc:  # the cut still happens; the note says the save failed
            log.warning("could not save the full output of %s: %s", tool.name, exc)
        if saved is None:
            where = "the full output could not be saved in the sandbox"
        elif self.workdir is not None and not saved.startswith(self.workdir.rstrip("/") + "/"):
            # the confined file tools cannot reach it; bash can
            where = f"the full output was saved to {saved} (read it with grep/sed/tail in bash)"
        else:
            where = (
                f"the full output was saved to {saved} (read it with the read tool's "
                "view_range, or with grep/sed/tail in bash)"
            )
        total = len(text)
        if tool.keep_tail:

            def note(cut: int) -> str:
                return f"\n\n[... {cut} of {total} characters cut from the middle; {where} ...]\n\n"

        else:

            def note(cut: int) -> str:
                return f"\n\n[... {cut} of {total} characters cut from the end; {where}]"

        # the note's length with the widest number bounds the room left for output
        room = max(self.output_budget - len(note(total)), 0)
        if tool.keep_tail:
            head_size = room * 2 // 5
            head, tail = (
                text[:head_size],
                text[total - (room - head_size) :] if room > head_size else "",
            )
            content = head + note(total - len(head) - len(tail)) + tail
        else:
            head = text[:room]
            content = head + note(total - len(head))
        return ToolResult(content, result.is_error, truncated=True, full_output_path=saved)

    # -- Anthropic and OpenAI glue ----------------------------------------------------------

    async def handle_anthropic(self, block: Any) -> JsonDict:
        """Run an Anthropic ``tool_use`` block (SDK object or dict) and return the matching
        ``tool_result`` content block, ready to go in the next user message."""
        tool_use_id = str(_field(block, "id"))
        name = _field(block, "name")
        arguments = _field(block, "input")
        result = await self.run(str(name), _as_input(arguments), call_id=tool_use_id)
        return {
            "type": "tool_result",
            "tool_use_id": tool_use_id,
            "content": result.content,
            "is_error": result.is_error,
        }

    async def handle_openai(self, tool_call: Any) -> JsonDict:
        """Run an OpenAI tool call and return the message that answers it.

        A Chat Completions tool call (``{id, function: {name, arguments}}``, SDK object or dict)
        gives ``{"role": "tool", "tool_call_id": ..., "content": ...}``; a Responses API
        ``function_call`` item (``{call_id, name, arguments}``) gives a
        ``{"type": "function_call_output", "call_id": ..., "output": ...}`` item.
        Arguments that are not valid JSON produce an error result, not an exception.
        """
        function = _field(tool_call, "function", None)
        if function is not None:
            call_id = str(_field(tool_call, "id"))
            name = _field(function, "name")
            raw = _field(function, "arguments", "{}")
        else:
            call_id = str(_field(tool_call, "call_id"))
            name = _field(tool_call, "name")
            raw = _field(tool_call, "arguments", "{}")
        arguments: Any
        try:
            arguments = json.loads(raw) if isinstance(raw, (str, bytes)) and raw else (raw or {})
        except ValueError as exc:
            content = f"the arguments of {name!r} are not valid JSON: {exc}"
            result = ToolResult(content, is_error=True)
        else:
            result = await self.run(str(name), _as_input(arguments), call_id=call_id)
        if function is not None:
            return {"role": "tool", "tool_call_id": call_id, "content": result.content}
        return {"type": "function_call_output", "call_id": call_id, "output": result.content}

    # -- paths ------------------------------------------------------------------------------

    @property
    def _base(self) -> str:
        return self.workdir or self.sandbox.info.workdir

    async def _cwd(self) -> str | None:
        """The directory commands start in: the workdir (created on first use), else the
        sandbox's default."""
        if self.workdir is not None and not self._workdir_ready:
            await self.sandbox.mkdir(self.workdir)
            self._workdir_ready = True
        return self.workdir

    async def _realpaths(self, *paths: str) -> list[str]:
        result = await self.sandbox.exec(["sh", "-c", _REALPATH, "sh", *paths], timeout=60)
        if not result.ok:
            raise InvalidPath(
                f"cannot resolve {', '.join(paths)}: {result.stderr.strip()}",
                sandbox_id=self.sandbox.id,
            )
        return result.stdout.split("\0")[: len(paths)]

    async def _resolve(self, raw: str) -> str:
        """The absolute path a file tool acts on; inside the workdir when one is set."""
        if not raw or "\x00" in raw:
            raise InvalidPath(f"invalid path: {raw!r}")
        joined = raw if raw.startswith("/") else posixpath.join(self._base, raw)
        if self.workdir is None:
            return _absolute(raw, self._base)
        if self._root is None:
            root, real = await self._realpaths(self.workdir, joined)
            self._root = root
        else:
            (real,) = await self._realpaths(joined)
        root = self._root
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise InvalidPath(
                f"{raw} resolves to {real}, outside the working directory {self.workdir}; "
                "the file tools only act inside it"
            )
        return real

    # -- built-in tools ---------------------------------------------------------------------

    async def _bash(self, args: BashInput) -> ToolResult:
        async with self._shell_lock:
            notes: list[str] = []
            if args.restart:
                self._shell.restart()
                notes.append("The shell was restarted.")
            if args.command is None or not args.command.strip():
                if args.restart:
                    return ToolResult(" ".join(notes))
                return ToolResult("no command given (pass command, or restart: true)", True)
            timeout_ms = args.timeout_ms or self.default_timeout_ms
            if timeout_ms > self.max_timeout_ms:
                notes.append(f"[timeout_ms lowered to the maximum, {self.max_timeout_ms}]")
                timeout_ms = self.max_timeout_ms
            try:
                has_stdin = self.sandbox.backend.capabilities.stdin
                result = await self.sandbox.exec(
                    self._shell.argv(None if has_stdin else args.command),
                    stdin=args.command if has_stdin else None,
                    timeout=timeout_ms / 1000,
                    cwd=await self._cwd(),
                    output_limit=CAPTURE_LIMIT,
                )
            except CommandTimeout as exc:
                self._shell.restart()
                partial = exc.stdout.decode("utf-8", errors="replace")
                message = (
                    f"[the command timed out after {timeout_ms} ms and was killed; the shell was "
                    "restarted, so the working directory and variables are reset]"
                )
                return ToolResult((partial + "\n" + message) if partial else message, True)
            return ToolResult(_shell_output(result, notes))

    async def _read(self, args: ReadInput) -> ToolResult:
        path = await self._resolve(args.file_path)
        try:
            info = await self.sandbox.stat(path)
        except FileNotFound:
            return ToolResult(f"file not found: {path}", is_error=True)
        if info.type == "dir":
            return ToolResult(
                f"{path} is a directory, not a file; use glob, or ls in bash, to list it", True
            )
        if info.type == "file" and info.size > self.max_read_bytes:
            return await self._read_large(path, info.size, args.view_range)
        try:
            data = await self.sandbox.read_file(path)
        except FileNotFound:
            return ToolResult(f"file not found: {path}", is_error=True)
        except IsADirectory:
            return ToolResult(
                f"{path} is a directory, not a file; use glob, or ls in bash, to list it", True
            )
        except PermissionDenied as exc:
            return ToolResult(f"permission denied reading {path}: {exc}", is_error=True)
        text = _text_or_none(data)
        if text is None:
            return ToolResult(
                f"{path} is a binary file ({len(data)} bytes); its content is not shown. Inspect "
                "it with bash (file, xxd | head, ...)."
            )
        if not text:
            return ToolResult(f"{path} is empty (0 bytes).")
        lines = text.splitlines()
        start, end = 1, len(lines)
        if args.view_range is not None:
            start = args.view_range[0]
            end = len(lines) if args.view_range[1] == -1 else min(args.view_range[1], len(lines))
            if start > len(lines):
                return ToolResult(
                    f"view_range starts at line {start}, but {path} has {len(lines)} lines", True
                )
        body = "\n".join(
            f"{number:6}\t{_cut_line(line)}"
            for number, line in enumerate(lines[start - 1 : end], start=start)
        )
        if args.view_range is not None and (start > 1 or end < len(lines)):
            body = f"[lines {start}-{end} of {len(lines)}]\n" + body
        return ToolResult(body)

    async def _read_large(self, path: str, size: int, view_range: list[int] | None) -> ToolResult:
        """Show part of a file too large to load whole: ``sed`` picks the lines in the sandbox
        and at most one budget's worth of bytes travels back."""
        start, end = view_range if view_range is not None else (1, -1)
        script = f"{start},$p" if end == -1 else f"{start},{end}p;{end}q"
        limit = self.output_budget
        result = await self.sandbox.exec(
            ["sh", "-c", 'sed -n "$1" "$2" | head -c "$3"', "sh", script, path, str(limit)],
            timeout=120,
            output_limit=limit,
        )
        if not result.ok and not result.stdout_bytes:
            detail = result.stderr.strip() or f"exit status {result.exit_code}"
            return ToolResult(f"cannot read {path}: {detail}", is_error=True)
        data = result.stdout_bytes
        if b"\x00" in data[:8192]:
            return ToolResult(f"{path} is a binary file ({size} bytes); its content is not shown.")
        if not data:
            return ToolResult(f"view_range starts at line {start}, past the end of {path}", True)
        lines = data.decode("utf-8", errors="replace").splitlines()
        whole = len(data) < limit  # everything asked for arrived
        if not whole and len(lines) > 1:
            lines = lines[:-1]  # the last line may be cut mid-way
        shown: list[str] = []
        room = self.output_budget - 300 - len(path)
        for number, line in enumerate(lines, start=start):
            row = f"{number:6}\t{_cut_line(line)}"
            if shown and room - len(row) - 1 < 0:
                whole = False
                break
            shown.append(row)
            room -= len(row) + 1
        last = start + len(shown) - 1
        body = "\n".join(shown)
        header = f"[{path} is {size} bytes, too large to read whole; lines {start}-{last}"
        if not whole:
            header += f"; continue with view_range [{last + 1}, ...]"
        return ToolResult(header + "]\n" + body)

    async def _write(self, args: WriteInput) -> ToolResult:
        path = await self._resolve(args.file_path)
        try:
            await self.sandbox.write_file(path, args.content)
        except IsADirectory:
            return ToolResult(f"{path} is a directory; cannot write a file there", True)
        except PermissionDenied as exc:
            return ToolResult(f"permission denied writing {path}: {exc}", is_error=True)
        size = len(args.content.encode())
        lines = args.content.count("\n") + (
            0 if args.content.endswith("\n") or not args.content else 1
        )
        return ToolResult(f"wrote {size} bytes ({lines} lines) to {path}")

    async def _edit(self, args: EditInput) -> ToolResult:
        path = await self._resolve(args.file_path)
        if not args.old_string:
            return ToolResult("old_string is empty; give the exact text to replace", True)
        if args.old_string == args.new_string:
            return ToolResult("old_string and new_string are identical; nothing to change", True)
        try:
            data = await self.sandbox.read_file(path)
        except FileNotFound:
            return ToolResult(f"file not found: {path} (use write to create a file)", True)
        except IsADirectory:
            return ToolResult(f"{path} is a directory, not a file", is_error=True)
        text = _text_or_none(data)
        if text is None:
            return ToolResult(f"{path} is a binary file ({len(data)} bytes); cannot edit it", True)
        count = text.count(args.old_string)
        if count == 0:
            return ToolResult(
                f"old_string was not found in {path}; no change made. It must match exactly, "
                "whitespace and indentation included: read the file and copy the text.",
                is_error=True,
            )
        if count > 1 and not args.replace_all:
            return ToolResult(
                f"old_string occurs {count} times in {path}; no change made. Include more "
                "surrounding context to make it unique, or set replace_all to true.",
                is_error=True,
            )
        first = text.index(args.old_string)
        new_text = text.replace(args.old_string, args.new_string, -1 if args.replace_all else 1)
        await self.sandbox.write_file(path, new_text)
        line = text.count("\n", 0, first) + 1
        snippet = _snippet(new_text, line, args.new_string.count("\n") + 1)
        what = f"{count} occurrences" if count > 1 else "1 occurrence"
        return ToolResult(f"edited {path}: replaced {what}.\n{snippet}")

    async def _glob(self, args: GlobInput) -> ToolResult:
        if not args.pattern.strip():
            return ToolResult("empty pattern", is_error=True)
        base_raw, pattern = _glob_search(args.path, args.pattern)
        base = await self._resolve(base_raw)
        result = await self.sandbox.exec(
            ["sh", "-c", _GLOB_LIST, "sh", base], timeout=120, output_limit=CAPTURE_LIMIT
        )
        if result.exit_code == 44:
            return ToolResult(f"directory not found: {base}", is_error=True)
        if result.exit_code == 45:
            return ToolResult(f"{base} is not a directory", is_error=True)
        regex = compile_glob(pattern)
        prefix = base.rstrip("/") + "/"
        matches = sorted(
            found
            for found in result.stdout.split("\0")
            if found.startswith(prefix) and regex.match(found[len(prefix) :])
        )
        if not matches:
            return ToolResult(f"no files match {args.pattern!r} in {base}")
        shown = matches[:MAX_RESULTS]
        text = "\n".join(shown)
        if len(matches) > MAX_RESULTS:
            text += f"\n[{len(matches) - MAX_RESULTS} more matches not shown; narrow the pattern]"
        elif result.stdout_truncated:
            text += "\n[the file listing was too long and was cut; results may be incomplete]"
        return ToolResult(text)

    async def _grep(self, args: GrepInput) -> ToolResult:
        if not args.pattern:
            return ToolResult("empty pattern", is_error=True)
        target = await self._resolve(args.path or ".")
        result = await self.sandbox.exec(
            ["sh", "-c", _GREP, "sh", args.pattern, target], timeout=120, output_limit=CAPTURE_LIMIT
        )
        if result.exit_code == 44:
            return ToolResult(f"path not found: {target}", is_error=True)
        if not result.stdout_bytes:
            # no-match is exit 1 with a quiet stderr; a bad pattern says why on stderr
            if result.exit_code == 0 or (result.exit_code == 1 and not result.stderr.strip()):
                return ToolResult(f"no matches for {args.pattern!r} in {target}")
            detail = result.stderr.strip() or f"exit status {result.exit_code}"
            return ToolResult(f"grep failed: {detail}", is_error=True)
        rows: list[tuple[str, int, str]] = []
        for record in result.stdout.split("\n"):
            if "\0" not in record:
                continue
            name, rest = record.split("\0", 1)
            number, _, line = rest.partition(":")
            if number.isdigit():
                rows.append((name, int(number), line))
        rows.sort(key=lambda row: (row[0], row[1]))
        shown = rows[:MAX_RESULTS]
        text = "\n".join(f"{name}:{number}:{_cut_line(line, 500)}" for name, number, line in shown)
        if len(rows) > MAX_RESULTS:
            text += (
                f"\n[{len(rows) - MAX_RESULTS} more matching lines not shown; narrow the search]"
            )
        elif result.stdout_truncated:
            text += "\n[the search output was too long and was cut; results may be incomplete]"
        return ToolResult(text)


# -- helpers -----------------------------------------------------------------------------------


def _glob_search(path: str | None, pattern: str) -> tuple[str, str]:
    """Where a glob searches and what it matches there: the pattern's literal leading
    directories (absolute or ``..`` ones included) move the search base, so the policy and the
    workdir check see the directory actually listed."""
    pattern = pattern.strip()
    static, rest = split_static_prefix(pattern)
    if pattern.startswith("/"):
        return static or "/", rest
    base = path or "."
    return (posixpath.join(base, static), rest) if static else (base, pattern)


def _absolute(path: str, base: str) -> str:
    joined = posixpath.normpath(posixpath.join(base, path))
    return "/" + joined.lstrip("/")


def _field(obj: Any, name: str, default: Any = ...) -> Any:
    if isinstance(obj, Mapping):
        if default is ...:
            return obj[name]
        return obj.get(name, default)
    if default is ...:
        return getattr(obj, name)
    return getattr(obj, name, default)


def _as_input(arguments: Any) -> Any:
    if isinstance(arguments, BaseModel):
        return arguments.model_dump()
    return arguments


def _text_or_none(data: bytes) -> str | None:
    """``data`` as text, or None when it looks binary (a NUL byte, or not UTF-8)."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _cut_line(line: str, limit: int = MAX_LINE_CHARS) -> str:
    if len(line) <= limit:
        return line
    return line[:limit] + f"... [line cut: {len(line)} characters]"


def _snippet(text: str, line: int, span: int, context: int = 3) -> str:
    lines = text.splitlines()
    first = max(line - context, 1)
    last = min(line + span - 1 + context, len(lines))
    return "\n".join(
        f"{number:6}\t{_cut_line(lines[number - 1])}" for number in range(first, last + 1)
    )


def _shell_output(result: ExecResult, notes: list[str]) -> str:
    output = result.stdout
    parts = [*notes]
    if output:
        parts.append(output.rstrip("\n"))
    if result.stdout_truncated:
        parts.append(
            f"[output beyond {CAPTURE_LIMIT} bytes was discarded at the source; redirect it to a "
            "file to keep it all]"
        )
    if result.exit_code != 0:
        parts.append(f"[exit code: {result.exit_code}]")
    if not output and result.exit_code == 0:
        parts.append("(no output)")
    return "\n".join(parts)


def new_call_id() -> str:
    """A fresh call id for callers that have none."""
    return "call_" + uuid.uuid4().hex[:16]
