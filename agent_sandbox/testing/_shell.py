"""The parser of :class:`~agent_sandbox.testing.FakeBackend`'s shell: sh syntax into a small tree.

The syntax it understands is listed in ``FakeBackend``'s docstring; anything else is a
:class:`ShellSyntaxError` saying what is not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Part = tuple[str, Any, bool]
"""``(kind, value, quoted)``: ``s`` text, ``v`` a parameter ``(name, op, word)``, ``c`` a
command substitution (a :data:`Script`)."""
Word = list[Part]


@dataclass
class Redir:
    fd: int
    op: str  # < > >> >& <&
    target: Word


@dataclass
class Command:
    kind: str  # simple, group, subshell, if, while, until, for
    words: list[Word] = field(default_factory=list)  # simple: argv; for: the items
    assigns: list[tuple[str, Word]] = field(default_factory=list)
    parts: list[Script] = field(default_factory=list)  # if: cond, body, [cond, body...][, else]
    name: str = ""  # for: the variable
    redirs: list[Redir] = field(default_factory=list)
    each_arg: bool = False  # for without "in": the positional parameters


Pipeline = tuple[bool, list[Command]]  # (negated, commands)
AndOr = list[tuple[str, Pipeline]]  # ("", first), ("&&" or "||", next)...
Script = list[tuple[AndOr, bool]]  # (and-or list, runs in the background)


class ShellSyntaxError(Exception):
    """The text is not something the fake shell understands."""


class Incomplete(ShellSyntaxError):
    """The text ends inside a construct: more lines may complete it."""


_META = " \t\n;&|()<>"
_STOP = ("then", "elif", "else", "fi", "do", "done", "}")
_KEYWORD = re.compile(
    r"(if|then|elif|else|fi|while|until|do|done|for|in|case|esac|[{}!])(?=[\s;&|()<>]|$)"
)
_BLANK = (re.compile(r"[ \t]+|\\\n|#[^\n]*"), re.compile(r"[ \t\n]+|\\\n|#[^\n]*"))
_PLAIN = re.compile(r"[^ \t\n;&|()<>'\"\\$`]+")
_ASSIGN = re.compile(r"([A-Za-z_]\w*)=")
_REDIR = re.compile(r"(\d?)(>>|>&|<&|<<|>|<)")
_PARAM = re.compile(
    r"\$(?:([A-Za-z_]\w*|[0-9@*#?$!-])|\{([A-Za-z_]\w*|[0-9]+|[@*#?$!-])(:?[-=+])?)"
)


def parse(src: str) -> Script:
    """The tree of ``src``. Raises :class:`Incomplete` when it ends too early."""
    parser = _Parser(src)
    try:
        script = parser.script()
    except RecursionError:  # pure Python down here: the stack unwinds cleanly
        raise ShellSyntaxError("syntax error: nested too deeply") from None
    if parser.i < len(src):
        raise parser.error(f"unexpected {src[parser.i : parser.i + 10]!r}")
    return script


class _Parser:
    def __init__(self, src: str) -> None:
        self.s, self.i = src, 0

    def error(self, message: str) -> ShellSyntaxError:
        return (Incomplete if self.i >= len(self.s) else ShellSyntaxError)(
            f"syntax error: {message}"
        )

    def blank(self, newlines: bool = False) -> str:
        """Past blanks and comments (and newlines): the next character, ``""`` at the end."""
        while m := _BLANK[newlines].match(self.s, self.i):
            self.i = m.end()
        return self.s[self.i : self.i + 1]

    def op(self, *ops: str) -> str:
        """The first of ``ops`` found next (``&`` is not the start of ``&&``, ``(`` not of
        ``((``, but ``))`` closes twice), passed; ``""`` if none."""
        self.blank()
        for op in ops:
            doubled = op != ")" and self.s.startswith(op + op, self.i)
            if self.s.startswith(op, self.i) and not doubled:
                self.i += len(op)
                return op
        return ""

    def keyword(self) -> str:
        self.blank(newlines=True)
        m = _KEYWORD.match(self.s, self.i)
        return m.group(1) if m else ""

    def expect(self, word: str) -> None:
        if self.keyword() == word:
            self.i += len(word)
        elif not (word == ")" and self.op(")")):
            raise self.error(f"{word!r} expected")

    def script(self) -> Script:
        items: Script = []
        while self.keyword() not in _STOP and self.blank(newlines=True) not in ("", ")"):
            and_or = self.and_or()
            sep = self.op(";", "&") or self.blank()
            items.append((and_or, sep == "&"))
            if sep not in (";", "&", "\n"):
                break
        return items

    def and_or(self) -> AndOr:
        items: AndOr = [("", self.pipeline())]
        while op := self.op("&&", "||"):
            items.append((op, self.pipeline()))
        return items

    def pipeline(self) -> Pipeline:
        negate = self.keyword() == "!"
        self.i += negate
        commands = [self.command()]
        while self.op("|"):
            commands.append(self.command())
        return negate, commands

    def command(self) -> Command:
        kw = self.keyword()
        self.i += len(kw) if kw in ("{", "if", "while", "until", "for") else 0
        if kw == "{":
            node = Command("group", parts=[self.script()])
            self.expect("}")
        elif self.op("("):
            node = Command("subshell", parts=[self.script()])
            self.expect(")")
        elif kw == "if":
            node = Command("if")
            while True:
                node.parts.append(self.script())
                self.expect("then")
                node.parts.append(self.script())
                if (kw := self.keyword()) not in ("elif", "else"):
                    break
                self.i += 4
                if kw == "else":
                    node.parts.append(self.script())
                    break
            self.expect("fi")
        elif kw in ("while", "until"):
            node = Command(kw, parts=[self.script()])
            self.expect("do")
            node.parts.append(self.script())
            self.expect("done")
        elif kw == "for":
            if not (m := re.compile(r"[ \t]*([A-Za-z_]\w*)").match(self.s, self.i)):
                raise self.error("a name after 'for' expected")
            self.i = m.end()
            node = Command("for", name=m.group(1), each_arg=self.keyword() != "in")
            self.i += 0 if node.each_arg else 2
            while not node.each_arg and self.blank() not in ("", ";", "\n") and (w := self.word()):
                node.words.append(w)
            self.op(";")
            self.expect("do")
            node.parts.append(self.script())
            self.expect("done")
        elif kw:
            raise self.error(f"{kw!r} is not supported" if kw == "case" else f"unexpected {kw!r}")
        else:
            return self.simple()
        while redir := self.redir():
            node.redirs.append(redir)
        return node

    def simple(self) -> Command:
        node = Command("simple")
        while True:
            if redir := self.redir():
                node.redirs.append(redir)
            elif self.blank() in _META:
                break
            elif (m := _ASSIGN.match(self.s, self.i)) and not node.words:
                self.i = m.end()
                node.assigns.append((m.group(1), self.word()))
            else:
                node.words.append(self.word())
        if not (node.words or node.assigns or node.redirs):
            raise self.error("a command expected")
        return node

    def redir(self) -> Redir | None:
        self.blank()
        if not (m := _REDIR.match(self.s, self.i)):
            return None
        if m.group(2) == "<<":
            raise self.error("here-documents are not supported")
        self.i = m.end()
        self.blank()
        if not (target := self.word()):
            raise self.error(f"a target for {m.group(2)!r} expected")
        return Redir(int(m.group(1) or m.group(2)[0] == ">"), m.group(2), target)

    def word(self) -> Word:
        parts: Word = []
        while (c := self.s[self.i : self.i + 1]) and c not in _META:
            if c == "'":
                if (end := self.s.find("'", self.i + 1)) < 0:
                    raise Incomplete("syntax error: unterminated quote")
                parts.append(("s", self.s[self.i + 1 : end], True))
                self.i = end + 1
            elif c == '"':
                self.i += 1
                parts += self.quoted('"')
            elif c == "\\":
                parts.append(("s", self.s[self.i + 1 : self.i + 2].strip("\n"), True))
                self.i += 2
            elif c == "$":
                parts.append(self.dollar(False))
            elif c == "`":
                raise self.error("`...` is not supported: use $(...)")
            else:
                m = _PLAIN.match(self.s, self.i)
                assert m is not None
                parts.append(("s", m.group(), False))
                self.i = m.end()
        return parts

    def quoted(self, close: str) -> Word:
        """The parts of a double-quoted text (or ``${name:-word}``'s word) up to ``close``."""
        parts: Word = []
        text = ""
        while (c := self.s[self.i : self.i + 1]) != close:
            if not c:
                raise Incomplete(f"syntax error: unterminated {close!r}")
            if c == "\\" and self.s[self.i + 1 : self.i + 2] in ("$", "`", "\\", "\n", close):
                text += self.s[self.i + 1].strip("\n")
                self.i += 2
            elif c == "$" and (_PARAM.match(self.s, self.i) or self.s.startswith("$(", self.i)):
                parts += [("s", text, True)] if text else []
                parts.append(self.dollar(True))
                text = ""
            elif c == "`":
                raise self.error("`...` is not supported: use $(...)")
            else:
                text += c
                self.i += 1
        self.i += 1
        return [*parts, ("s", text, True)] if text or not parts else parts

    def dollar(self, quoted: bool) -> Part:
        if self.s.startswith("$((", self.i):
            raise self.error("$((...)) is not supported")
        if self.s.startswith("$(", self.i):
            self.i += 2
            body = self.script()
            self.expect(")")
            return ("c", body, quoted)
        if not (m := _PARAM.match(self.s, self.i)):
            self.i += 1
            return ("s", "$", quoted)
        self.i = m.end()
        op = m.group(3) or ""
        arg = self.quoted("}") if op else None
        if m.group(2) and not op:
            if not self.s.startswith("}", self.i):
                raise self.error("bad substitution")
            self.i += 1
        return ("v", (m.group(1) or m.group(2), op, arg), quoted)
