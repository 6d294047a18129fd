"""A small POSIX-shell interpreter for :class:`~agent_sandbox.testing.FakeBackend`.

It runs no host process: every command is interpreted here, against the fake's in-memory
filesystem. It understands what agent code and the conformance suite usually send: quoting,
``$VAR``/``${VAR:-x}``/``$$``/``$?``/``$!``/``$@`` expansion, ``;`` ``&&`` ``||`` ``|`` ``&``,
redirections (``>``, ``>>``, ``<``, ``2>&1``, ``>&2``), ``( )`` and ``{ }`` groups, ``if``, ``while``,
``until`` and ``for``. Not supported (a parse error, exit status 2): command substitution,
globbing, here-documents, functions and ``case``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "AndOr",
    "Compound",
    "ListNode",
    "Pipeline",
    "Redir",
    "ShellSyntaxError",
    "Simple",
    "Word",
    "expand_text",
    "parse",
]


class ShellSyntaxError(Exception):
    """The command line is not something the fake shell understands."""


# A word is a list of segments: (expand, text). ``expand`` False for single-quoted or escaped
# text. ``quoted`` records whether any part was quoted (reserved words must be bare).
@dataclass
class Word:
    """One shell word before expansion."""

    segments: list[tuple[bool, str]] = field(default_factory=list)
    quoted: bool = False

    @property
    def raw(self) -> str:
        """The text with quotes removed and nothing expanded."""
        return "".join(text for _, text in self.segments)


@dataclass
class Redir:
    """``fd op target``: op is ``>``, ``>>``, ``<`` or ``>&`` (target then a descriptor number)."""

    fd: int
    op: str
    target: Word


@dataclass
class Simple:
    """``NAME=value ... word ... redirections``."""

    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirs: list[Redir]


@dataclass
class Compound:
    """``if``/``while``/``until``/``for``/``( )``/``{ }`` with its redirections."""

    kind: str
    parts: list[ListNode]
    redirs: list[Redir] = field(default_factory=list)
    name: str = ""
    items: list[Word] | None = None


Command = Simple | Compound


@dataclass
class Pipeline:
    """``[!] cmd | cmd | ...``."""

    commands: list[Command]
    negate: bool = False


@dataclass
class AndOr:
    """``pipeline (&& | ||) pipeline ...``."""

    first: Pipeline
    rest: list[tuple[str, Pipeline]]


@dataclass
class ListNode:
    """A sequence of and-or lists, each run in the foreground or (``&``) in the background."""

    items: list[tuple[AndOr, bool]]


_OPERATORS = ("&&", "||", ">>", ">&", ";;", ";", "&", "|", "(", ")", "<", ">", "\n")
_RESERVED = {
    "if",
    "then",
    "elif",
    "else",
    "fi",
    "while",
    "until",
    "do",
    "done",
    "for",
    "in",
    "{",
    "}",
    "!",
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Token = tuple[str, object]  # ("op", str) | ("word", Word) | ("io", int)


def _tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(src)
    word: Word | None = None
    buf: list[str] = []
    buf_expand = True

    def flush_seg(expand: bool) -> None:
        nonlocal buf
        if buf and word is not None:
            word.segments.append((expand, "".join(buf)))
        buf = []

    def end_word() -> None:
        nonlocal word
        if word is not None:
            flush_seg(buf_expand)
            tokens.append(("word", word))
            word = None

    while i < n:
        c = src[i]
        if word is None and c in " \t":
            i += 1
            continue
        if word is None and c == "#":
            while i < n and src[i] != "\n":
                i += 1
            continue
        if c in " \t":
            end_word()
            i += 1
            continue
        if c == "\\" and i + 1 < n and src[i + 1] == "\n":
            i += 2
            continue
        op = next((o for o in _OPERATORS if src.startswith(o, i)), None)
        if op is not None:
            if (
                word is not None
                and op in ("<", ">", ">>", ">&")
                and not word.quoted
                and len(word.segments) == 0
                and "".join(buf).isdigit()
            ):
                fd = int("".join(buf))
                buf = []
                word = None
                tokens.append(("io", fd))
            else:
                end_word()
            if op == ";;":
                raise ShellSyntaxError("'case' is not supported by the fake shell")
            tokens.append(("op", op))
            i += len(op)
            continue
        if word is None:
            word = Word()
            buf_expand = True
        if c == "'":
            flush_seg(buf_expand)
            end = src.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            word.segments.append((False, src[i + 1 : end]))
            word.quoted = True
            i = end + 1
            continue
        if c == '"':
            flush_seg(buf_expand)
            word.quoted = True
            i += 1
            part: list[str] = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated double quote")
                d = src[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                    if src[i + 1] != "\n":
                        # keep escaped $ from expanding: close the part, add a literal segment
                        word.segments.append((True, "".join(part)))
                        part = []
                        word.segments.append((False, src[i + 1]))
                    i += 2
                    continue
                if d == "`" or src.startswith("$(", i):
                    raise ShellSyntaxError(
                        "command substitution is not supported by the fake shell"
                    )
                part.append(d)
                i += 1
            word.segments.append((True, "".join(part)))
            continue
        if c == "\\":
            flush_seg(buf_expand)
            if i + 1 < n:
                word.segments.append((False, src[i + 1]))
                word.quoted = True
            i += 2
            continue
        if c == "`" or src.startswith("$(", i):
            raise ShellSyntaxError("command substitution is not supported by the fake shell")
        if c == "$" and src.startswith("${", i):
            end = src.find("}", i)
            if end < 0:
                raise ShellSyntaxError("unterminated ${")
            buf.append(src[i : end + 1])
            i = end + 1
            continue
        buf.append(c)
        i += 1
    end_word()
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def peek_reserved(self) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "word":
            w = tok[1]
            assert isinstance(w, Word)
            if not w.quoted and w.raw in _RESERVED:
                return w.raw
        return None

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] in ops

    def take_op(self, op: str) -> None:
        if not self.is_op(op):
            raise ShellSyntaxError(f"expected {op!r} near {self._where()}")
        self.pos += 1

    def take_reserved(self, name: str) -> None:
        if self.peek_reserved() != name:
            raise ShellSyntaxError(f"expected {name!r} near {self._where()}")
        self.pos += 1

    def _where(self) -> str:
        tok = self.peek()
        if tok is None:
            return "end of input"
        return repr(tok[1].raw if isinstance(tok[1], Word) else tok[1])

    def skip_newlines(self) -> None:
        while self.is_op("\n"):
            self.pos += 1

    def parse_list(self, stop: set[str]) -> ListNode:
        items: list[tuple[AndOr, bool]] = []
        while True:
            self.skip_newlines()
            tok = self.peek()
            if tok is None or self.is_op(")") or (self.peek_reserved() in stop):
                break
            node = self.parse_and_or()
            background = False
            if self.is_op("&"):
                self.pos += 1
                background = True
            elif self.is_op(";", "\n"):
                self.pos += 1
            else:
                tok = self.peek()
                if tok is not None and not self.is_op(")") and self.peek_reserved() not in stop:
                    raise ShellSyntaxError(f"syntax error near {self._where()}")
            items.append((node, background))
        return ListNode(items)

    def parse_and_or(self) -> AndOr:
        first = self.parse_pipeline()
        rest: list[tuple[str, Pipeline]] = []
        while self.is_op("&&", "||"):
            tok = self.peek()
            assert tok is not None
            self.pos += 1
            self.skip_newlines()
            rest.append((str(tok[1]), self.parse_pipeline()))
        return AndOr(first, rest)

    def parse_pipeline(self) -> Pipeline:
        negate = False
        if self.peek_reserved() == "!":
            self.pos += 1
            negate = True
        commands = [self.parse_command()]
        while self.is_op("|"):
            self.pos += 1
            self.skip_newlines()
            commands.append(self.parse_command())
        return Pipeline(commands, negate)

    def parse_redirs(self, redirs: list[Redir]) -> bool:
        tok = self.peek()
        fd: int | None = None
        if tok is not None and tok[0] == "io":
            fd = int(tok[1])  # type: ignore[call-overload]
            self.pos += 1
            tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in ("<", ">", ">>", ">&"):
            op = str(tok[1])
            self.pos += 1
            target = self.peek()
            if target is None or target[0] != "word":
                raise ShellSyntaxError(f"missing target after {op!r}")
            self.pos += 1
            assert isinstance(target[1], Word)
            default = 0 if op == "<" else 1
            redirs.append(Redir(default if fd is None else fd, op, target[1]))
            return True
        if fd is not None:
            raise ShellSyntaxError("descriptor number without a redirection")
        return False

    def parse_command(self) -> Command:
        reserved = self.peek_reserved()
        if self.is_op("("):
            self.pos += 1
            body = self.parse_list(set())
            self.take_op(")")
            return self._finish(Compound("subshell", [body]))
        if reserved == "{":
            self.pos += 1
            body = self.parse_list({"}"})
            self.take_reserved("}")
            return self._finish(Compound("group", [body]))
        if reserved == "if":
            self.pos += 1
            parts = [self.parse_list({"then"})]
            self.take_reserved("then")
            parts.append(self.parse_list({"elif", "else", "fi"}))
            while self.peek_reserved() == "elif":
                self.pos += 1
                parts.append(self.parse_list({"then"}))
                self.take_reserved("then")
                parts.append(self.parse_list({"elif", "else", "fi"}))
            if self.peek_reserved() == "else":
                self.pos += 1
                parts.append(self.parse_list({"fi"}))
            self.take_reserved("fi")
            return self._finish(Compound("if", parts))
        if reserved in ("while", "until"):
            self.pos += 1
            cond = self.parse_list({"do"})
            self.take_reserved("do")
            body = self.parse_list({"done"})
            self.take_reserved("done")
            return self._finish(Compound(reserved, [cond, body]))
        if reserved == "for":
            self.pos += 1
            tok = self.peek()
            if tok is None or tok[0] != "word":
                raise ShellSyntaxError("expected a name after 'for'")
            assert isinstance(tok[1], Word)
            name = tok[1].raw
            self.pos += 1
            items: list[Word] | None = None
            self.skip_newlines()
            if self.peek_reserved() == "in":
                self.pos += 1
                items = []
                while (tok := self.peek()) is not None and tok[0] == "word":
                    if self.peek_reserved() == "do":
                        break
                    assert isinstance(tok[1], Word)
                    items.append(tok[1])
                    self.pos += 1
            if self.is_op(";", "\n"):
                self.pos += 1
            self.skip_newlines()
            self.take_reserved("do")
            body = self.parse_list({"done"})
            self.take_reserved("done")
            return self._finish(Compound("for", [body], name=name, items=items))
        if reserved is not None and reserved not in ("{", "}", "!", "in"):
            raise ShellSyntaxError(f"unexpected {reserved!r}")
        assigns: list[tuple[str, Word]] = []
        words: list[Word] = []
        redirs: list[Redir] = []
        while True:
            if self.parse_redirs(redirs):
                continue
            tok = self.peek()
            if tok is None or tok[0] != "word":
                break
            w = tok[1]
            assert isinstance(w, Word)
            if not words and w.segments and w.segments[0][0]:
                head = w.segments[0][1]
                m = _NAME.match(head)
                if m and head[m.end() : m.end() + 1] == "=":
                    rest = Word([(True, head[m.end() + 1 :]), *w.segments[1:]], w.quoted)
                    assigns.append((m.group(), rest))
                    self.pos += 1
                    continue
            words.append(w)
            self.pos += 1
        if not words and not assigns and not redirs:
            raise ShellSyntaxError(f"syntax error near {self._where()}")
        return Simple(assigns, words, redirs)

    def _finish(self, node: Compound) -> Compound:
        while self.parse_redirs(node.redirs):
            pass
        return node


def parse(src: str) -> ListNode:
    """Parse a command line. Raises :class:`ShellSyntaxError`."""
    parser = _Parser(_tokenize(src))
    node = parser.parse_list(set())
    if parser.peek() is not None:
        raise ShellSyntaxError(f"syntax error near {parser._where()}")
    return node


_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9$?!#@*]))")


def expand_text(text: str, lookup: Callable[[str], str | None]) -> str:
    """Replace ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and special parameters."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            inner = m.group(1)
            name, sep, default = inner.partition(":-")
            value = lookup(name)
            if sep:
                return value if value else default
            return value or ""
        return lookup(m.group(2)) or ""

    return _VAR.sub(repl, text)
