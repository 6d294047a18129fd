"""The :class:`ToolKit`: the tools coding agents use, run in one sandbox."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
from pydantic import BaseModel, ValidationError

from ..errors import (
    CommandTimeout,
    InvalidPath,
    PolicyDenied,
    SandboxError,
    SandboxNotFound,
)
from . import _python, bash, edit, glob, grep, read, write
from ._inputs import BashInput, EditInput, GlobInput, GrepInput, ReadInput, WriteInput
from ._schema import JsonDict, Tool, ToolResult, format_validation_error
from .bash import CAPTURE_LIMIT, Shell
from .read import MAX_READ_BYTES

if TYPE_CHECKING:
    from ..audit import AuditLog
    from ..policy import Policy
    from ..sandbox import Sandbox

log = logging.getLogger("agent_sandbox.tools")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OUTPUT_BUDGET = 30_000
DEFAULT_BASH_TIMEOUT_MS = 120_000
MAX_BASH_TIMEOUT_MS = 600_000

FILE_TOOLS = frozenset({"read", "write", "edit", "glob", "grep"})
_CONTENT_FIELDS = {"write": ("content",), "edit": ("old_string", "new_string")}
"""Arguments holding file content: the audit log keeps their size and digest, not the text."""


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
        self.shell = Shell(sandbox, state_dir)
        self.shell_lock = anyio.Lock()
        self._root: str | None = None
        self._workdir_ready = False
        self._saved = 0
        self._tools: dict[str, Tool] = {}
        bash_description = bash.DESCRIPTION.format(
            default=default_timeout_ms, maximum=max_timeout_ms
        )
        for tool in (
            Tool("bash", bash_description, BashInput, partial(bash.run, self), keep_tail=True),
            Tool("read", read.DESCRIPTION, ReadInput, partial(read.run, self)),
            Tool("write", write.DESCRIPTION, WriteInput, partial(write.run, self)),
            Tool("edit", edit.DESCRIPTION, EditInput, partial(edit.run, self)),
            Tool("glob", glob.DESCRIPTION, GlobInput, partial(glob.run, self)),
            Tool("grep", grep.DESCRIPTION, GrepInput, partial(grep.run, self)),
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
                cwd=await self.cwd(),
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
                    raw, _ = glob.search_base(raw if isinstance(raw, str) else None, pattern)
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
            target = f"{self.outputs_dir}/{tool.name}-{self.shell.token}-{self._saved:04d}.txt"
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

    async def cwd(self) -> str | None:
        """The directory commands start in: the workdir (created on first use), else the
        sandbox's default."""
        if self.workdir is not None and not self._workdir_ready:
            await self.sandbox.mkdir(self.workdir)
            self._workdir_ready = True
        return self.workdir

    async def resolve(self, raw: str) -> str:
        """The absolute path a file tool acts on; inside the workdir when one is set.

        Raises ``InvalidPath`` for a path that resolves outside the workdir."""
        if not raw or "\x00" in raw:
            raise InvalidPath(f"invalid path: {raw!r}")
        joined = raw if raw.startswith("/") else posixpath.join(self._base, raw)
        if self.workdir is None:
            return _absolute(raw, self._base)
        if self._root is None:
            self._root, real = await self.sandbox.backend.realpath(
                self.sandbox.id, [self.workdir, joined]
            )
        else:
            (real,) = await self.sandbox.backend.realpath(self.sandbox.id, [joined])
        root = self._root
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise InvalidPath(
                f"{raw} resolves to {real}, outside the working directory {self.workdir}; "
                "the file tools only act inside it"
            )
        return real

    async def aclose(self) -> None:
        """End the bash tool's shell process, if one runs (the sandbox stays)."""
        await self.shell.close()


# -- helpers -----------------------------------------------------------------------------------


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


def new_call_id() -> str:
    """A fresh call id for callers that have none."""
    return "call_" + uuid.uuid4().hex[:16]
