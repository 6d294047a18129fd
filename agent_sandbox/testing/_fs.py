"""The in-memory filesystem of a :class:`~agent_sandbox.testing.FakeBackend` sandbox."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from ..errors import FileNotFound, FileTooLarge, InvalidPath, IsADirectory
from ..models import FileInfo

CHUNK = 64 * 1024


@dataclass
class Node:
    kind: Literal["file", "dir", "null", "zero"]
    mode: int
    mtime: float = field(default_factory=time.time)
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, Node] = field(default_factory=dict)


def _zeros() -> Iterator[bytes]:
    zeros = bytes(CHUNK)
    while True:
        yield zeros


def new_dir(mode: int = 0o755) -> Node:
    return Node("dir", mode)


class FS:
    """One sandbox's filesystem. Paths are absolute and normalised by the caller."""

    def __init__(self, workdir: str) -> None:
        self.root = new_dir()
        for d in ("/tmp", "/dev", "/etc", "/home", workdir):
            self.mkdir(d)
        dev = self.root.children["dev"]
        dev.children["null"] = Node("null", 0o666)
        dev.children["zero"] = Node("zero", 0o666)

    @staticmethod
    def parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def lookup(self, path: str) -> Node:
        node = self.root
        walked = ""
        for part in self.parts(path):
            if node.kind != "dir":
                raise InvalidPath(f"not a directory: {walked}")
            walked += "/" + part
            child = node.children.get(part)
            if child is None:
                raise FileNotFound(f"no such file or directory: {path}")
            node = child
        return node

    def get(self, path: str) -> Node | None:
        try:
            return self.lookup(path)
        except (FileNotFound, InvalidPath):
            return None

    def mkdir(self, path: str) -> Node:
        node = self.root
        for part in self.parts(path):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = new_dir()
                node.mtime = time.time()
            elif child.kind != "dir":
                raise InvalidPath(f"not a directory: {path}")
            node = child
        return node

    def parent_of(self, path: str, *, create: bool) -> tuple[Node, str]:
        parent, name = posixpath.split(path)
        if not name:
            raise IsADirectory(f"is a directory: {path}")
        if create:
            return self.mkdir(parent), name
        node = self.lookup(parent)
        if node.kind != "dir":
            raise InvalidPath(f"not a directory: {parent}")
        return node, name

    def write(
        self, path: str, data: bytes, *, append: bool = False, create_parents: bool = False
    ) -> None:
        parent, name = self.parent_of(path, create=create_parents)
        node = parent.children.get(name)
        if node is None:
            node = parent.children[name] = Node("file", 0o644)
            parent.mtime = time.time()
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "file":
            if append:
                node.data += data
            else:
                node.data = bytearray(data)
            node.mtime = time.time()

    def read(self, path: str) -> bytes:
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "zero":
            raise InvalidPath(f"cannot read all of an endless device: {path}")
        return bytes(node.data)

    def read_regular(self, path: str, max_bytes: int) -> bytes:
        """A regular file's content, as ``read_file`` gives it (devices refused, bounded)."""
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind != "file":
            raise InvalidPath(f"read_file {path}: not a regular file (a device)")
        if len(node.data) > max_bytes:
            raise FileTooLarge(f"read_file {path}: larger than max_bytes={max_bytes}")
        return bytes(node.data)

    def chunks(self, path: str) -> Iterator[bytes]:
        """The content of a file in pieces (endless for ``/dev/zero``). Checks eagerly."""
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "zero":
            return _zeros()
        view = bytes(node.data)
        return (view[start : start + CHUNK] for start in range(0, len(view), CHUNK))

    def remove(self, path: str, *, recursive: bool) -> None:
        parent, name = self.parent_of(path, create=False)
        node = parent.children.get(name)
        if node is None:
            raise FileNotFound(f"no such file or directory: {path}")
        if node.kind == "dir" and node.children and not recursive:
            raise IsADirectory(f"directory not empty: {path}")
        del parent.children[name]
        parent.mtime = time.time()

    def info(self, path: str, node: Node) -> FileInfo:
        kind: Literal["file", "dir", "other"] = (
            "file" if node.kind == "file" else "dir" if node.kind == "dir" else "other"
        )
        return FileInfo(
            path=path,
            name=posixpath.basename(path) or "/",
            type=kind,
            size=len(node.data) if node.kind == "file" else 0,
            mode=node.mode,
            mtime=node.mtime,
        )
