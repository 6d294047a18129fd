"""Requests and responses checked against an OpenAPI 3.1 document (with ``jsonschema``).

An :class:`OpenApi` finds the operation of a method and a path, checks a request's parameters
(path, query, header) and JSON body against it, and a response's status and JSON body against
what the operation declares. Schemas are JSON Schema 2020-12, as OpenAPI 3.1 has them; ``$ref``s
resolve inside the document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


class SchemaViolation(ValueError):
    """A request or response does not match the document."""


@dataclass(frozen=True)
class Operation:
    """One operation of the document: its path template and its definition."""

    method: str
    template: str
    spec: dict[str, Any]
    params: dict[str, str]


class OpenApi:
    """An OpenAPI 3.1 document, loaded from ``path``."""

    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text())
        self.name = path.name
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
        self._routes: list[tuple[re.Pattern[str], str]] = []
        for template in self.doc["paths"]:
            pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            if template.endswith("{path}"):  # the bridge's file routes take the rest of the path
                pattern = pattern.replace("(?P<path>[^/]+)", "(?P<path>.+)")
            self._routes.append((re.compile(f"^{pattern}$"), template))

    def operation(self, method: str, path: str) -> Operation | None:
        """The operation serving ``method path``, or ``None``."""
        for pattern, template in self._routes:
            match = pattern.match(path)
            if match:
                spec = self.doc["paths"][template].get(method.lower())
                if spec is not None:
                    return Operation(method.lower(), template, spec, match.groupdict())
        return None

    def _validate(self, schema: dict[str, Any], value: Any, where: str) -> None:
        validator = Draft202012Validator(
            schema, registry=self._registry, format_checker=FormatChecker()
        )
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            at = "/".join(str(p) for p in first.absolute_path)
            raise SchemaViolation(f"{where}{'/' + at if at else ''}: {first.message}")

    def _schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its ``$ref``s pointing into the document."""
        text = json.dumps(schema).replace('"$ref": "#/', '"$ref": "urn:doc#/')
        resolved: dict[str, Any] = json.loads(text)
        return resolved

    def _deref(self, item: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in item:
            node: Any = self.doc
            for part in item["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            item = node
        return item

    def check_request(
        self,
        op: Operation,
        query: dict[str, str],
        headers: dict[str, str],
        content_type: str | None,
        body: bytes,
    ) -> None:
        """Raise :class:`SchemaViolation` when the request breaks the operation's rules."""
        lower = {k.lower(): v for k, v in headers.items()}
        for raw in op.spec.get("parameters", []):
            param = self._deref(raw)
            name, where = param["name"], param["in"]
            source = {"path": op.params, "query": query, "header": lower}[where]
            key = name.lower() if where == "header" else name
            if key not in source:
                if param.get("required"):
                    raise SchemaViolation(f"missing {where} parameter {name}")
                continue
            value: Any = source[key]
            schema = param.get("schema", {})
            if schema.get("type") == "integer":
                if not re.fullmatch(r"-?[0-9]+", value):
                    raise SchemaViolation(f"{where} parameter {name}: {value!r} is not an integer")
                value = int(value)
            self._validate(self._schema(schema), value, f"{where} parameter {name}")
        request_body = op.spec.get("requestBody")
        if request_body is None:
            return
        declared = request_body.get("content", {})
        if not body:
            if request_body.get("required"):
                raise SchemaViolation("the request body is required")
            return
        media = (content_type or "").split(";")[0].strip()
        if media not in declared:
            raise SchemaViolation(f"request body of type {media!r}; declared: {sorted(declared)}")
        if media == "application/json":
            try:
                value = json.loads(body)
            except ValueError as exc:
                raise SchemaViolation(f"the request body is not JSON: {exc}") from None
            self._validate(self._schema(declared[media]["schema"]), value, "request body")

    def check_response(self, op: Operation, status: int, content_type: str, body: bytes) -> None:
        """Raise :class:`SchemaViolation` when the response is not one the operation declares."""
        responses = op.spec.get("responses", {})
        declared = responses.get(str(status))
        if declared is None:
            raise SchemaViolation(
                f"status {status} is not declared (declared: {sorted(responses)})"
            )
        declared = self._deref(declared)
        content = declared.get("content")
        if not content:
            if body:
                raise SchemaViolation(f"status {status} declares no body, got {len(body)} bytes")
            return
        media = content_type.split(";")[0].strip()
        if media not in content:
            raise SchemaViolation(
                f"status {status}: content type {media!r}, declared {sorted(content)}"
            )
        if media == "application/json":
            self._validate(
                self._schema(content[media]["schema"]), json.loads(body), f"{status} response"
            )
