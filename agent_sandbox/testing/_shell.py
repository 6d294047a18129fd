"""The parser of :class:`~agent_sandbox.testing.FakeBackend`'s shell: sh syntax into a small tree.

Understood: simple commands with ``NAME=value`` prefixes and redirections (``<``, ``>``, ``>>``,
``n>&m``, here-documents ``<<WORD``); pipelines (with ``!``), ``&&``, ``||``, ``;``, ``&`` and
newlines; ``{ }``, ``( )``, ``if``/``elif``/``else``, ``while``, ``until``, ``for``, functions,
``#`` comments; words with ``'...'``, ``"..."``, backslashes, ``$name``, ``${name}``,
``${name op word}`` (``:-`` ``-`` ``:=`` ``=`` ``:+`` ``+`` ``#`` ``##`` ``%`` ``%%``, and
``${#name}``), ``$(...)``, backquotes and globs. Anything else (``case``, ``$((...))``, bash
extensions) is a :class:`ShellSyntaxError` naming what is missing or unsupported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Part = tuple[str, Any, bool]
"""``(kind, value, quoted)``: ``s`` literal text, ``v`` a parameter ``(name, op, word)``, ``c``
a command substitution (a :data:`Script`)."""
Word = list[Part]


@dataclass
class Redir:
    fd: int
    op: str  # "<" ">" ">>" ">&" "<&" "<<"
    target: Word


@dataclass
class Simple:
    assigns: list[tuple[str, Word]] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    redirs: list[Redir] = field(default_factory=list)


@dataclass
class Compound:
    kind: str  # group, subshell, if, while, until, for, function
    parts: list[Any]  # scripts (if: cond, body, cond, body..., [else]); function: [command]
    name: str = ""  # the for loop's variable, the function's name
    items: list[Word] | None = None  # for: the words after "in" (None: "$@")
    redirs: list[Redir] = field(default_factory=list)


Command = Simple | Compound
Pipeline = tuple[bool, list[Command]]
AndOr = list[tuple[str, Pipeline]]  # ("", first), ("&&" or "||", next)...
Script = list[tuple[AndOr, bool]]  # (and-or list, runs in the background)


class ShellSyntaxError(Exception):
    """The text is not something the fake shell understands."""


class Incomplete(ShellSyntaxError):
    """The text ends inside a construct: more lines may complete it."""


_META = " \t\n;&|()<>"
_STOP = {"then", "elif", "else", "fi", "do", "done", "}"}
_KEYWORD = re.compile(
    r"(if|then|elif|else|fi|while|until|do|done|for|in|case|esac|[{}!])(?=[\s;&|()<>]|$)"
)
_PLAIN = re.compile(r"[^ \t\n;&|()<>'\"\\$`]+")
_REDIR = re.compile(r"(\d?)(<<-?|>>|>&|<&|>\|?|<)")
_PARAM = re.compile(
    r"\$(?:([A-Za-z_]\w*|[0-9@*#?$!-])|\{(#?)([A-Za-z_]\w*|[0-9]+|[@*#?$!-])(:?[-=+?]|%%?|##?)?)"
)
_FUNCTION = re.compile(r"([A-Za-z_]\w*)[ \t]*\([ \t]*\)")


def parse(src: str) -> Script:
    """The tree of ``src``. Raises :class:`Incomplete` when it ends too early."""
    parser = _Parser(src)
    script = parser.script()
    if parser.heredocs:
        raise Incomplete("syntax error: a here-document's body expected")
    if parser.i < len(src):
        raise parser.error(f"unexpected {src[parser.i : parser.i + 10]!r}")
    return script


class _Parser:
    def __init__(self, src: str) -> None:
        self.s, self.i = src, 0
        self.heredocs: list[tuple[Redir, str, bool]] = []

    def error(self, message: str) -> ShellSyntaxError:
        kind = Incomplete if self.i >= len(self.s) else ShellSyntaxError
        return kind(f"syntax error: {message}")

    def blank(self, newlines: bool = False) -> None:
        s = self.s
        while self.i < len(s):
            if s[self.i] in " \t" or s.startswith("\\\n", self.i):
                self.i += 1 if s[self.i] != "\\" else 2
            elif s[self.i] == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            elif s[self.i] == "\n" and newlines:
                self.newline()
            else:
                break

    def newline(self) -> None:
        """Past a newline, and past the bodies of the here-documents opened on its line."""
        self.i += 1
        for redir, delimiter, expand in self.heredocs:
            lines = []
            while True:
                if self.i >= len(self.s):
                    raise Incomplete(f"syntax error: here-document without {delimiter!r}")
                end = self.s.find("\n", self.i) % (len(self.s) + 1)
                line, self.i = self.s[self.i : end], end + 1
                if line.lstrip("\t" if redir.op == "<<-" else "") == delimiter:
                    break
                lines.append(line.lstrip("\t") if redir.op == "<<-" else line)
            body = "".join(line + "\n" for line in lines)
            redir.target = _Parser(body).quoted(None) if expand else [("s", body, True)]
        self.heredocs = []

    def peek(self) -> str:
        self.blank()
        for op in ("&&", "||", ";;", ";", "&", "|", "(", ")", "\n"):
            if self.s.startswith(op, self.i):
                return op
        return ""

    def keyword(self) -> str:
        self.blank()
        m = _KEYWORD.match(self.s, self.i)
        return m.group(1) if m else ""

    def expect(self, word: str) -> None:
        self.blank(newlines=True)
        if self.keyword() != word and self.peek() != word:
            raise self.error(f"{word!r} expected")
        self.i += len(word)

    def script(self) -> Script:
        items: Script = []
        while True:
            self.blank(newlines=True)
            if self.i >= len(self.s) or self.keyword() in _STOP or self.peek() == ")":
                return items
            and_or = self.and_or()
            sep = self.peek()
            items.append((and_or, sep == "&"))
            if sep == "\n":
                self.newline()
            elif sep in (";", "&"):
                self.i += 1
            else:
                return items

    def and_or(self) -> AndOr:
        items: AndOr = [("", self.pipeline())]
        while (op := self.peek()) in ("&&", "||"):
            self.i += 2
            self.blank(newlines=True)
            items.append((op, self.pipeline()))
        return items

    def pipeline(self) -> Pipeline:
        negate = self.keyword() == "!"
        self.i += negate
        commands = [self.command()]
        while self.peek() == "|":
            self.i += 1
            self.blank(newlines=True)
            commands.append(self.command())
        return negate, commands

    def command(self) -> Command:
        kw, start = self.keyword(), self.i
        if kw in ("{", "if", "while", "until", "for"):
            self.i += len(kw)
        if kw == "{":
            node = Compound("group", [self.script()])
            self.expect("}")
        elif self.peek() == "(":
            self.i += 1
            node = Compound("subshell", [self.script()])
            self.expect(")")
        elif kw == "if":
            parts = [self.script()]
            while True:
                self.expect("then")
                parts.append(self.script())
                nxt = self.keyword()
                self.i += len(nxt) if nxt in ("elif", "else") else 0
                if nxt == "elif":
                    parts.append(self.script())
                    continue
                if nxt == "else":
                    parts.append(self.script())
                self.expect("fi")
                break
            node = Compound("if", parts)
        elif kw in ("while", "until"):
            cond = self.script()
            self.expect("do")
            node = Compound(kw, [cond, self.script()])
            self.expect("done")
        elif kw == "for":
            self.blank()
            name = re.compile(r"[A-Za-z_]\w*").match(self.s, self.i)
            if name is None:
                raise self.error("a variable name after 'for' expected")
            self.i = name.end()
            self.blank(newlines=True)
            items = None
            if self.keyword() == "in":
                self.i += 2
                items = []
                while self.peek() not in (";", "\n") and self.i < len(self.s):
                    if not (item := self.word()):
                        raise self.error("a word expected")
                    items.append(item)
            if self.peek() in (";", "\n"):
                self.i += 1
            self.expect("do")
            node = Compound("for", [self.script()], name.group(), items)
            self.expect("done")
        elif kw in _STOP or kw == "case":
            raise self.error(f"unexpected {kw!r}" if kw != "case" else "'case' is not supported")
        elif m := _FUNCTION.match(self.s, start):
            self.i = m.end()
            self.blank(newlines=True)
            return Compound("function", [self.command()], m.group(1))
        else:
            return self.simple()
        while redir := self.redir():
            node.redirs.append(redir)
        return node

    def simple(self) -> Simple:
        cmd = Simple()
        while True:
            self.blank()
            if redir := self.redir():
                cmd.redirs.append(redir)
                continue
            if self.i >= len(self.s) or self.s[self.i] in _META:
                break
            m = re.compile(r"([A-Za-z_]\w*)=").match(self.s, self.i)
            if m and not cmd.words:
                self.i = m.end()
                cmd.assigns.append((m.group(1), self.word()))
            else:
                cmd.words.append(self.word())
        if not (cmd.words or cmd.assigns or cmd.redirs):
            raise self.error("a command expected")
        return cmd

    def redir(self) -> Redir | None:
        self.blank()
        m = _REDIR.match(self.s, self.i)
        if m is None:
            return None
        self.i = m.end()
        op = m.group(2).rstrip("|")
        fd = int(m.group(1) or (0 if op[0] == "<" else 1))
        self.blank()
        start = self.i
        target = self.word()
        if not target:
            raise self.error(f"a target for {op!r} expected")
        redir = Redir(fd, op, target)
        if op.startswith("<<"):
            text = "".join(str(v) for _, v, _ in target)
            self.heredocs.append((redir, text, not re.search("['\"\\\\]", self.s[start : self.i])))
        return redir

    def word(self) -> Word:
        parts: Word = []
        s = self.s
        while self.i < len(s) and s[self.i] not in _META:
            c = s[self.i]
            if c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    raise Incomplete("syntax error: unterminated quote")
                parts.append(("s", s[self.i + 1 : end], True))
                self.i = end + 1
            elif c == '"':
                self.i += 1
                parts += self.quoted('"')
            elif c == "\\":
                if s.startswith("\\\n", self.i) or self.i + 1 == len(s):
                    self.i += 2
                    continue
                parts.append(("s", s[self.i + 1], True))
                self.i += 2
            elif c in "$`":
                parts.append(self.dollar(False))
            else:
                m = _PLAIN.match(s, self.i)
                assert m is not None
                parts.append(("s", m.group(), False))
                self.i = m.end()
        return parts

    def quoted(self, close: str | None) -> Word:
        """Double-quoted text up to ``close`` (``None``: the end, for a here-document)."""
        parts: Word = []
        text, s = "", self.s
        while True:
            if self.i >= len(s):
                if close is None:
                    break
                raise Incomplete(f"syntax error: unterminated {close!r}")
            c = s[self.i]
            if c == close:
                self.i += 1
                break
            if c == "\\" and s[self.i + 1 : self.i + 2] in ("$", "`", "\\", "\n", close or "$"):
                text += s[self.i + 1].strip("\n")
                self.i += 2
            elif c in "$`" and (
                c == "`" or _PARAM.match(s, self.i) or s[self.i + 1 : self.i + 2] == "("
            ):
                parts += [("s", text, True)] if text else []
                parts.append(self.dollar(True))
                text = ""
            else:
                text += c
                self.i += 1
        return [*parts, ("s", text, True)] if text or not parts else parts

    def dollar(self, quoted: bool) -> Part:
        s = self.s
        if s[self.i] == "`":
            end = s.find("`", self.i + 1)
            if end < 0:
                raise Incomplete("syntax error: unterminated '`'")
            inner, self.i = s[self.i + 1 : end], end + 1
            return ("c", parse(inner), quoted)
        if s.startswith("$((", self.i):
            raise self.error("arithmetic expansion $((...)) is not supported")
        if s.startswith("$(", self.i):
            self.i += 2
            body = self.script()
            self.expect(")")
            return ("c", body, quoted)
        m = _PARAM.match(s, self.i)
        if m is None:
            self.i += 1
            return ("s", "$", quoted)
        self.i = m.end()
        if m.group(1):
            return ("v", (m.group(1), "", None), quoted)
        op, arg = m.group(4) or ("len" if m.group(2) else ""), None
        if m.group(4):
            arg = self.quoted("}")
        elif s.startswith("}", self.i):
            self.i += 1
        else:
            raise self.error("bad substitution")
        return ("v", (m.group(3), op, arg), quoted)
