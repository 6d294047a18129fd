"""Allow or deny an operation before it runs.

A :class:`Policy` looks at an :class:`Action` — a tool call, a command, a file access, a create or
destroy — and returns a :class:`Decision`. Rules are checked in a fixed order and the first denial
wins: denied tools, denied command patterns, denied paths, then the allow lists (tools, paths),
then the ``check`` callable for anything the rules cannot express. A denial's ``reason`` names the
rule that fired, so an agent reading it (and a person reading the audit log) knows why.

Example::

    policy = Policy(
        deny_tools=["write"],
        deny_commands=[r"\\brm\\s+-rf\\s+/", r"curl .*\\|\\s*sh"],
        allow_paths=["/workspace"],
    )
    policy.decide(Action(op="exec", command="rm -rf /")).allowed  # False

Path rules see the path as given, normalised once by :func:`normalize_path` (``.``, ``..`` and
repeated slashes folded away, ``//etc`` is ``/etc``); they cannot see symlinks inside the
sandbox, so confine file tools to a working directory as well where that matters.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArgumentTypeError, ConfigError, PolicyDenied

__all__ = ["Action", "Decision", "Policy", "PolicyDenied", "normalize_path"]

_RULES = ("allow_tools", "deny_tools", "deny_commands", "allow_paths", "deny_paths")


def normalize_path(path: str) -> str:
    """``path`` as every path rule compares it: ``.`` and ``..`` folded, repeated slashes
    collapsed — a leading ``//`` too, which POSIX leaves implementation-defined and Linux
    treats as ``/``."""
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


@dataclass(frozen=True)
class Action:
    """One operation awaiting a decision.

    Attributes:
        op: ``"create"``, ``"connect"``, ``"exec"``, ``"read_file"``, ``"write_file"``,
            ``"list_dir"``, ``"stat"``, ``"remove"``, ``"mkdir"``, ``"upload"``, ``"download"``,
            ``"destroy"``, ``"tool_call"``, ...
        sandbox_id: the sandbox concerned, when there is one yet.
        tool: the tool name of a ``tool_call``.
        call_id: the model's tool-call id, when known.
        input: the tool input or the operation's arguments.
        command: the command of an ``exec`` (or of a ``bash`` tool call): a shell string or argv.
        path: the absolute path a file operation touches.
    """

    op: str
    sandbox_id: str | None = None
    tool: str | None = None
    call_id: str | None = None
    input: Mapping[str, Any] | None = None
    command: str | Sequence[str] | None = None
    path: str | None = None

    @property
    def command_text(self) -> str | None:
        """The command as one string: a shell string as is, argv joined with spaces.

        Falls back to ``input["command"]`` when no ``command`` was given.
        """
        command: Any = self.command
        if command is None and self.input is not None:
            command = self.input.get("command")
        if isinstance(command, str):
            return command
        if isinstance(command, Sequence) and all(isinstance(a, str) for a in command):
            return " ".join(command)
        return None

    @property
    def target_path(self) -> str | None:
        """The path, normalised; falls back to ``input["file_path"]`` or ``input["path"]``."""
        path: Any = self.path
        if path is None and self.input is not None:
            path = self.input.get("file_path", self.input.get("path"))
        if not isinstance(path, str) or not path:
            return None
        return normalize_path(path)


@dataclass(frozen=True)
class Decision:
    """The answer of a policy: ``allowed``, and why not (the rule that denied) when not."""

    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)

Check = Callable[[Action], "Decision | bool | None"]


@dataclass(frozen=True)
class Policy:
    """Rules deciding allow/deny; the default policy allows everything.

    Args:
        allow_tools: when given, only these tool names (``fnmatch`` patterns) may be called.
        deny_tools: tool names (``fnmatch`` patterns) that may never be called.
        deny_commands: regular expressions searched (``re.search``) in the command of an exec or
            a ``bash`` tool call — the shell string as is, or the argv joined with spaces.
        allow_paths: when given, file operations must touch a path matching one of these globs.
        deny_paths: globs no file operation may touch.
        check: a callable for anything else: returns a :class:`Decision`, ``True``/``False``, or
            ``None`` for "no opinion" (allowed). It runs only when no rule denied.

    Glob rules: ``*`` matches across ``/`` (``fnmatch``), and a pattern also covers everything
    below it, so ``"/workspace"`` allows ``/workspace/src/a.py``. Paths are compared after
    normalisation, so ``/workspace/../etc/passwd`` is ``/etc/passwd``; a relative path matches
    only relative patterns.

    Raises:
        ConfigError: an invalid regular expression in ``deny_commands`` (a ``ValueError``).
        ArgumentTypeError: a rule given as one string instead of a list of them.
    """

    allow_tools: Iterable[str] | None = None
    deny_tools: Iterable[str] = ()
    deny_commands: Iterable[str | re.Pattern[str]] = ()
    allow_paths: Iterable[str] | None = None
    deny_paths: Iterable[str] = ()
    check: Check | None = None
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Freeze the iterables so a generator argument is not consumed by the first decision.
        set_ = object.__setattr__
        for rule in _RULES:
            value = getattr(self, rule)
            if isinstance(value, (str, bytes)):
                raise ArgumentTypeError(
                    f"policy rule {rule} must be a list of patterns, not one string: "
                    f"{rule}=[{value!r}]"
                )
        if self.allow_tools is not None:
            set_(self, "allow_tools", tuple(self.allow_tools))
        set_(self, "deny_tools", tuple(self.deny_tools))
        if self.allow_paths is not None:
            set_(self, "allow_paths", tuple(self.allow_paths))
        set_(self, "deny_paths", tuple(self.deny_paths))
        patterns = []
        for pattern in self.deny_commands:
            try:
                patterns.append(pattern if isinstance(pattern, re.Pattern) else re.compile(pattern))
            except re.error as exc:
                raise ConfigError(f"invalid deny_commands pattern {pattern!r}: {exc}") from exc
        set_(self, "deny_commands", tuple(p.pattern for p in patterns))
        set_(self, "_compiled", tuple(patterns))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build a policy from plain data (e.g. a parsed TOML or JSON file).

        Keys: ``allow_tools``, ``deny_tools``, ``deny_commands``, ``allow_paths``, ``deny_paths``.
        Raises ``ConfigError`` (a ``ValueError``) naming an unknown key or a malformed value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a policy must be a table of rules, not {type(data).__name__}")
        unknown = sorted(str(key) for key in set(data) - set(_RULES))
        if unknown:
            raise ConfigError(
                f"unknown policy key(s): {', '.join(unknown)} (known: {', '.join(_RULES)})"
            )
        kwargs: dict[str, Any] = {}
        for key in set(_RULES) & set(data):
            value = data[key]
            if (
                isinstance(value, str)
                or not isinstance(value, (list, tuple))
                or not all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(f"policy key {key!r} must be a list of strings, got {value!r}")
            kwargs[key] = list(value)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Read a policy from a JSON file, or a TOML file (``.toml``; the rules at the top or
        in a ``[policy]`` table).

        Raises ``ConfigError`` naming the file: unreadable, not JSON/TOML, or invalid rules.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot read the policy file {path}: {reason}") from exc
        try:
            if path.suffix == ".toml":
                import tomllib

                data: Any = tomllib.loads(text)
                data = data.get("policy", data)
            else:
                data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise ConfigError(f"the policy file {path} is not valid {kind}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"the policy file {path}: {exc}") from exc

    def decide(self, action: Action) -> Decision:
        """Allow or deny ``action``; the first rule that denies gives the reason."""
        tool = action.tool
        if tool is not None:
            for pattern in self.deny_tools:
                if fnmatch.fnmatchcase(tool, pattern):
                    return Decision(False, f"tool {tool!r} is denied (deny_tools: {pattern!r})")
        command = action.command_text
        if command is not None:
            for regex in self._compiled:
                if regex.search(command):
                    return Decision(
                        False,
                        f"command matches a denied pattern (deny_commands: {regex.pattern!r})",
                    )
        path = action.target_path
        if path is not None:
            for pattern in self.deny_paths:
                if _path_matches(path, pattern):
                    return Decision(False, f"path {path!r} is denied (deny_paths: {pattern!r})")
        if (
            tool is not None
            and self.allow_tools is not None
            and not any(fnmatch.fnmatchcase(tool, p) for p in self.allow_tools)
        ):
            return Decision(False, f"tool {tool!r} is not in allow_tools")
        if (
            path is not None
            and self.allow_paths is not None
            and not any(_path_matches(path, p) for p in self.allow_paths)
        ):
            return Decision(False, f"path {path!r} is outside allow_paths")
        if self.check is not None:
            verdict = self.check(action)
            if isinstance(verdict, Decision):
                if not verdict.allowed and not verdict.reason:
                    return Decision(False, "denied by the policy's check")
                return verdict
            if verdict is False:
                return Decision(False, "denied by the policy's check")
            if verdict is not None and verdict is not True:
                raise TypeError(
                    f"a policy check must return Decision, bool or None, not {type(verdict).__name__}"
                )
        return ALLOW

    def enforce(self, action: Action, *, provider: str | None = None) -> None:
        """Raise :class:`~agent_sandbox.errors.PolicyDenied` when ``action`` is denied."""
        decision = self.decide(action)
        if not decision.allowed:
            raise PolicyDenied(
                f"denied by policy: {decision.reason}",
                provider=provider,
                op=action.op,
                sandbox_id=action.sandbox_id,
            )


def _path_matches(path: str, pattern: str) -> bool:
    pattern = normalize_path(pattern) if pattern else pattern
    if fnmatch.fnmatchcase(path, pattern):
        return True
    # A pattern covers what lies below it: "/workspace" covers "/workspace/a/b".
    below = "/*" if pattern != "/" else "*"
    return fnmatch.fnmatchcase(path, pattern + below)
