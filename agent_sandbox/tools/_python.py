"""Custom tools: a Python function whose body runs inside the sandbox.

The function's source (decorators and annotations stripped) and its JSON arguments go to
``python3`` in the sandbox on stdin; a small runner executes it there and sends back the return
value. The input schema comes from the function's signature and type hints through pydantic.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

RESULT_MARKER = "\n<<agent-sandbox-python-result>>"

# Runs inside the sandbox. Reads {"source", "function", "arguments"} from stdin.
RUNNER = """
import asyncio, contextlib, inspect, io, json, sys, traceback
request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
captured = io.StringIO()
try:
    namespace = {"__name__": "__agent_sandbox_tool__"}
    exec(compile(request["source"], "<tool " + request["function"] + ">", "exec"), namespace)
    with contextlib.redirect_stdout(captured):
        value = namespace[request["function"]](**request["arguments"])
        if inspect.isawaitable(value):
            async def _await(v):
                return await v
            value = asyncio.run(_await(value))
    reply = {"ok": True, "value": value, "stdout": captured.getvalue()}
except BaseException:
    reply = {"ok": False, "error": traceback.format_exc(), "stdout": captured.getvalue()}
try:
    text = json.dumps(reply, default=repr, ensure_ascii=False)
except Exception:
    reply["value"] = repr(reply.get("value"))
    text = json.dumps(reply, default=repr, ensure_ascii=False)
sys.stdout.flush()
sys.stdout.write(MARKER + text)
""".replace("MARKER", repr(RESULT_MARKER))

# argv: sh -c LAUNCHER RUNNER ; exit 127 with a message when there is no python3
LAUNCHER = (
    "command -v python3 >/dev/null 2>&1 || { echo 'python3 not found in the sandbox' >&2; "
    'exit 127; }; exec python3 -c "$0"'
)


def function_source(func: Callable[..., Any]) -> str:
    """The source of ``func`` as a standalone definition: decorators and annotations removed
    (the names they use need not exist in the sandbox)."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise TypeError(
            f"cannot get the source of {func!r}: custom tools must be functions defined in a file"
        ) from exc
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func.__name__:
            node.decorator_list = []
            node.returns = None
            arguments = node.args
            for arg in (
                *arguments.posonlyargs,
                *arguments.args,
                *arguments.kwonlyargs,
                arguments.vararg,
                arguments.kwarg,
            ):
                if arg is not None:
                    arg.annotation = None
            return ast.unparse(node)
    raise TypeError(f"cannot find the definition of {func.__name__} in its source")


_ARG_LINE = re.compile(r"^\s{2,}(\*{0,2}\w+)\s*(?:\([^)]*\))?:\s*(.*)$")


def _docstring_parts(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The description (everything before an ``Args:`` section) and per-argument descriptions."""
    doc = inspect.getdoc(func) or ""
    lines = doc.splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            if stripped and not line.startswith(" "):
                in_args = False
                if stripped.endswith(":"):
                    continue
            else:
                match = _ARG_LINE.match(line)
                if match and len(line) - len(line.lstrip()) <= 4:
                    current = match.group(1).lstrip("*")
                    params[current] = match.group(2).strip()
                elif current and stripped:
                    params[current] += " " + stripped
                continue
        if re.match(r"^(Returns|Raises|Yields|Examples?):$", stripped):
            break
        description.append(line)
    return "\n".join(description).strip(), params


def input_model_of(func: Callable[..., Any], name: str) -> tuple[type[BaseModel], str]:
    """A pydantic model of ``func``'s parameters and the tool description from its docstring."""
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    description, param_docs = _docstring_parts(func)
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"custom tool {name!r}: *args and **kwargs are not supported")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        doc = None if _described(annotation) else param_docs.get(param.name)
        fields[param.name] = (annotation, Field(default, description=doc) if doc else default)
    model = create_model(f"{name}_input", __config__=ConfigDict(extra="forbid"), **fields)
    return typing.cast(
        type[BaseModel], model
    ), description or f"Run the Python function {func.__name__}."


def _described(annotation: Any) -> bool:
    """True when an ``Annotated[..., Field(description=...)]`` already describes the parameter."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return False
    return any(isinstance(m, FieldInfo) and m.description for m in typing.get_args(annotation)[1:])


def request_payload(source: str, function: str, arguments: dict[str, Any]) -> bytes:
    """The stdin the runner reads."""
    return json.dumps(
        {"source": source, "function": function, "arguments": arguments}, ensure_ascii=False
    ).encode()


def parse_reply(stdout: str) -> dict[str, Any] | None:
    """The runner's reply from its stdout (the last marker wins), or None when missing."""
    index = stdout.rfind(RESULT_MARKER)
    if index < 0:
        return None
    try:
        reply = json.loads(stdout[index + len(RESULT_MARKER) :])
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def render_value(value: Any) -> str:
    """A tool's return value as text for the model."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=repr)
