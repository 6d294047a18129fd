"""The parser of the small POSIX shell inside :class:`~agent_sandbox.testing.FakeBackend`.

It runs no host process: :mod:`agent_sandbox.testing.fake` interprets the tree built here against
the fake's in-memory filesystem. Understood: quoting; ``$VAR``, ``${VAR:-x}`` and the other
parameter expansions, ``$(...)`` and backquotes, ``$((...))``; ``;`` ``&&`` ``||`` ``|`` ``&``;
redirections (``>``, ``>>``, ``<``, ``2>&1``, ``>&2``); ``( )`` and ``{ }`` groups, ``if``,
``while``, ``until``, ``for``, ``case`` and functions. Not supported (a syntax error, exit
status 2): here-documents, ``<<<``, arrays and other bash extensions.
"""

from __future__ import annotations

import re
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
    "parse",
]


class ShellSyntaxError(Exception):
    """The command line is not something the fake shell understands."""


@dataclass
class Word:
    """One shell word before expansion: a list of ``(kind, text)`` segments.

    Kinds: ``lit`` (single-quoted or escaped: taken as is), ``dq`` (double-quoted: expanded, not
    split), ``bare`` (expanded, split, globbed), ``cmd``/``dqcmd`` (command substitution, bare or
    quoted), ``arith`` (``$((...))``).
    """

    segments: list[tuple[str, str]] = field(default_factory=list)
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
    """``if``/``while``/``until``/``for``/``case``/``( )``/``{ }``/function, with redirections."""

    kind: str
    parts: list[ListNode]
    redirs: list[Redir] = field(default_factory=list)
    name: str = ""
    items: list[Word] | None = None
    patterns: list[list[Word]] = field(default_factory=list)


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


_OPERATORS = ("&&", "||", ">>", ">&", ";;", "<<", ";", "&", "|", "(", ")", "<", ">", "\n")
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
    "case",
    "esac",
    "{",
    "}",
    "!",
}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Token = tuple[str, object]  # ("op", str) | ("word", Word) | ("io", int)


def _matching(src: str, i: int, open_: str, close: str) -> int:
    """Index just past the ``close`` matching the ``open_`` at ``src[i]`` (quotes respected)."""
    depth = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            end = src.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            i = end + 1
            continue
        if c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellSyntaxError(f"unterminated {open_!r}")


def _substitution(src: str, i: int) -> tuple[str, str, int]:
    """At ``$(``, ``$((`` or a backquote: (kind, inner source, index after it)."""
    if src.startswith("$((", i):
        end = _matching(src, i + 1, "(", ")")
        if src[end - 2 : end] == "))":
            return "arith", src[i + 3 : end - 2], end
    if src.startswith("$(", i):
        end = _matching(src, i + 1, "(", ")")
        return "cmd", src[i + 2 : end - 1], end
    j = i + 1
    while j < len(src) and src[j] != "`":
        j += 2 if src[j] == "\\" else 1
    if j >= len(src):
        raise ShellSyntaxError("unterminated backquote")
    return "cmd", src[i + 1 : j].replace("\\`", "`"), j + 1


def _tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(src)
    word: Word | None = None
    buf: list[str] = []

    def flush() -> None:
        nonlocal buf
        if buf and word is not None:
            word.segments.append(("bare", "".join(buf)))
        buf = []

    def end_word() -> None:
        nonlocal word
        if word is not None:
            flush()
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
            if op == "<<":
                raise ShellSyntaxError("here-documents are not supported by the fake shell")
            if (
                word is not None
                and op in ("<", ">", ">>", ">&")
                and not word.segments
                and "".join(buf).isdigit()
            ):
                fd = int("".join(buf))
                buf = []
                word = None
                tokens.append(("io", fd))
            else:
                end_word()
            tokens.append(("op", op))
            i += len(op)
            continue
        if word is None:
            word = Word()
        if c == "'":
            flush()
            end = src.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            word.segments.append(("lit", src[i + 1 : end]))
            word.quoted = True
            i = end + 1
            continue
        if c == '"':
            flush()
            word.quoted = True
            i += 1
            part: list[str] = []
            dq = word

            def flush_dq(dq: Word = dq, part: list[str] = part) -> None:
                if part:
                    dq.segments.append(("dq", "".join(part)))
                    part.clear()

            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated double quote")
                d = src[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                    flush_dq()
                    if src[i + 1] != "\n":
                        word.segments.append(("lit", src[i + 1]))
                    i += 2
                    continue
                if d == "`" or src.startswith("$(", i):
                    flush_dq()
                    kind, inner, i = _substitution(src, i)
                    word.segments.append(("arith" if kind == "arith" else "dqcmd", inner))
                    continue
                if src.startswith("${", i):
                    end = _matching(src, i + 1, "{", "}")
                    part.append(src[i:end])
                    i = end
                    continue
                part.append(d)
                i += 1
            flush_dq()
            if not word.segments or word.segments[-1][0] not in ("dq", "lit"):
                word.segments.append(("dq", ""))  # "" is an (empty) word of its own
            continue
        if c == "\\":
            flush()
            if i + 1 < n:
                word.segments.append(("lit", src[i + 1]))
                word.quoted = True
            i += 2
            continue
        if c == "`" or src.startswith("$(", i):
            flush()
            kind, inner, i = _substitution(src, i)
            word.segments.append((kind, inner))
            continue
        if src.startswith("${", i):
            end = _matching(src, i + 1, "{", "}")
            buf.append(src[i:end])
            i = end
            continue
        buf.append(c)
        i += 1
    end_word()
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, ahead: int = 0) -> Token | None:
        at = self.pos + ahead
        return self.tokens[at] if at < len(self.tokens) else None

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
            raise ShellSyntaxError(f"expected {op!r} near {self.where()}")
        self.pos += 1

    def take_reserved(self, name: str) -> None:
        if self.peek_reserved() != name:
            raise ShellSyntaxError(f"expected {name!r} near {self.where()}")
        self.pos += 1

    def where(self) -> str:
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
            if self.peek() is None or self.is_op(")", ";;") or self.peek_reserved() in stop:
                break
            node = self.parse_and_or()
            background = False
            if self.is_op("&"):
                self.pos += 1
                background = True
            elif self.is_op(";", "\n"):
                self.pos += 1
            elif (
                self.peek() is not None
                and not self.is_op(")", ";;")
                and self.peek_reserved() not in stop
            ):
                raise ShellSyntaxError(f"syntax error near {self.where()}")
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
            assert isinstance(tok[1], int)
            fd = tok[1]
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

    def word_token(self) -> Word:
        tok = self.peek()
        if tok is None or tok[0] != "word":
            raise ShellSyntaxError(f"expected a word near {self.where()}")
        self.pos += 1
        assert isinstance(tok[1], Word)
        return tok[1]

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
            name = self.word_token().raw
            items: list[Word] | None = None
            self.skip_newlines()
            if self.peek_reserved() == "in":
                self.pos += 1
                items = []
                while (tok := self.peek()) is not None and tok[0] == "word":
                    items.append(self.word_token())
            if self.is_op(";", "\n"):
                self.pos += 1
            self.skip_newlines()
            self.take_reserved("do")
            body = self.parse_list({"done"})
            self.take_reserved("done")
            return self._finish(Compound("for", [body], name=name, items=items))
        if reserved == "case":
            self.pos += 1
            subject = self.word_token()
            self.skip_newlines()
            self.take_reserved("in")
            node = Compound("case", [], items=[subject])
            while True:
                self.skip_newlines()
                if self.peek_reserved() == "esac":
                    self.pos += 1
                    break
                if self.is_op("("):
                    self.pos += 1
                patterns = [self.word_token()]
                while self.is_op("|"):
                    self.pos += 1
                    patterns.append(self.word_token())
                self.take_op(")")
                node.patterns.append(patterns)
                node.parts.append(self.parse_list({"esac"}))
                if self.is_op(";;"):
                    self.pos += 1
            return self._finish(node)
        if reserved is not None and reserved not in ("{", "}", "!", "in"):
            raise ShellSyntaxError(f"syntax error near {reserved!r}")
        tok, after, closing = self.peek(), self.peek(1), self.peek(2)
        if (
            tok is not None
            and tok[0] == "word"
            and after == ("op", "(")
            and closing == ("op", ")")
            and isinstance(tok[1], Word)
            and not tok[1].quoted
            and NAME.fullmatch(tok[1].raw)
        ):
            self.pos += 3
            self.skip_newlines()
            function_body = self.parse_command()
            wrapped = ListNode([(AndOr(Pipeline([function_body]), []), False)])
            return Compound("function", [wrapped], name=tok[1].raw)
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
            if not words and w.segments and w.segments[0][0] == "bare":
                head = w.segments[0][1]
                m = NAME.match(head)
                if m and head[m.end() : m.end() + 1] == "=":
                    rest = [("bare", head[m.end() + 1 :]), *w.segments[1:]]
                    assigns.append((m.group(), Word(rest, w.quoted)))
                    self.pos += 1
                    continue
            words.append(w)
            self.pos += 1
        if not words and not assigns and not redirs:
            raise ShellSyntaxError(f"syntax error near {self.where()}")
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
        raise ShellSyntaxError(f"syntax error near {parser.where()}")
    return node
