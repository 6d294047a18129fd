"""Tool definitions: an input model, the JSON schema derived from it, and the three renderings."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returns to the model.

    Attributes:
        content: the text the model reads (already cut to the toolkit's output budget).
        is_error: True when the call failed (bad input, bad path, timeout, denial, dead sandbox).
        truncated: True when ``content`` was cut to the budget.
        full_output_path: where the whole output was saved inside the sandbox, when it was cut.
    """

    content: str
    is_error: bool = False
    truncated: bool = False
    full_output_path: str | None = None


def clean_schema(model: type[BaseModel]) -> JsonDict:
    """The JSON schema of ``model`` as a model-facing tool schema.

    Pydantic's titles are dropped, ``$ref`` definitions inlined, and ``X | None`` fields shown as
    plain ``X`` (they are optional: absent or null both mean "use the default").
    """
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {
                **copy.deepcopy(defs.get(name, {})),
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            return walk(merged)
        out: JsonDict = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: walk(prop) for name, prop in value.items()}
                continue
            out[key] = walk(value)
        variants = out.get("anyOf")
        if isinstance(variants, list):
            non_null = [v for v in variants if v != {"type": "null"}]
            if len(non_null) == 1 and len(variants) == 2:
                del out["anyOf"]
                out = {**non_null[0], **out}
                if out.get("default", ...) is None:
                    del out["default"]
        return out

    schema: JsonDict = walk(raw)
    schema.setdefault("properties", {})
    schema["type"] = "object"
    return schema


def format_validation_error(tool: str, exc: ValidationError) -> str:
    """A short, model-readable account of what is wrong with a tool's input."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "input"
        problems.append(f"{where}: {err['msg']}")
    return f"invalid input for tool {tool!r}: " + "; ".join(problems)


Handler = Callable[[Any], Awaitable[ToolResult]]


@dataclass
class Tool:
    """One tool: a name, a description for the model, an input model and the code that runs it.

    ``handler`` receives the validated input model and returns a :class:`ToolResult`; the
    :class:`~agent_sandbox.tools.ToolKit` applies the output budget, policy and audit around it.
    """

    name: str
    description: str
    input_model: type[BaseModel]
    handler: Handler
    keep_tail: bool = False
    """When cutting to the budget, keep the end of the output as well as the start."""
    input_schema: JsonDict = field(init=False)

    def __post_init__(self) -> None:
        self.input_schema = clean_schema(self.input_model)

    def parse(self, arguments: Any) -> BaseModel:
        """Validate raw arguments. Raises ``pydantic.ValidationError``."""
        if not isinstance(arguments, dict):
            raise TypeError(
                f"input for tool {self.name!r} must be a JSON object, got {type(arguments).__name__}"
            )
        return self.input_model.model_validate(arguments)

    def anthropic(self) -> JsonDict:
        """The Anthropic Messages API tool definition (``tools=[...]``)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": copy.deepcopy(self.input_schema),
        }

    def openai(self) -> JsonDict:
        """The OpenAI Chat Completions function tool (``tools=[...]``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.input_schema),
            },
        }

    def openai_responses(self) -> JsonDict:
        """The OpenAI Responses API function tool (the flat shape)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.input_schema),
            "strict": False,
        }

    def mcp(self) -> JsonDict:
        """An MCP tool definition as a plain dict (``name``, ``description``, ``inputSchema``)."""
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": copy.deepcopy(self.input_schema),
        }
