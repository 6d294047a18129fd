"""The in-memory filesystem of a :class:`~agent_sandbox.testing.FakeBackend` sandbox."""

from __future__ import annotations

import posixpath
import time
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


class FS:
    """One sandbox's filesystem (no symlinks). Paths are absolute and normalised."""

    def __init__(self, workdir: str) -> None:
        self.root = Node("dir", 0o755)
        for path in ("/tmp", "/dev", "/etc", "/home", "/root", workdir):
            self.mkdir(path)
        dev = self.root.children["dev"].children
        dev["null"], dev["zero"] = Node("null", 0o666), Node("zero", 0o666)

    def lookup(self, path: str) -> Node:
        """Raises ``FileNotFound``, ``InvalidPath`` (a file on the way)."""
        node = self.root
        for part in filter(None, path.split("/")):
            if node.kind != "dir":
                raise InvalidPath(f"{path}: Not a directory")
            child = node.children.get(part)
            if child is None:
                raise FileNotFound(f"{path}: No such file or directory")
            node = child
        return node

    def get(self, path: str) -> Node | None:
        try:
            return self.lookup(path)
        except (FileNotFound, InvalidPath):
            return None

    def mkdir(self, path: str) -> Node:
        """The directory at ``path``, made with its missing parents."""
        node = self.root
        for part in filter(None, path.split("/")):
            if part not in node.children:
                node.children[part] = Node("dir", 0o755)
                node.mtime = time.time()
            node = node.children[part]
            if node.kind != "dir":
                raise InvalidPath(f"{path}: Not a directory")
        return node

    def write(
        self, path: str, data: bytes, *, append: bool = False, create_parents: bool = False
    ) -> None:
        """Create, replace or extend a file (an existing one keeps its mode)."""
        parent_path, name = posixpath.split(path)
        parent = self.mkdir(parent_path) if create_parents else self.lookup(parent_path)
        if not name or parent.kind != "dir":
            raise (IsADirectory if not name else InvalidPath)(f"{path}: cannot write here")
        node = parent.children.get(name)
        if node is None:
            node = parent.children[name] = Node("file", 0o644)
            parent.mtime = time.time()
        if node.kind == "dir":
            raise IsADirectory(f"{path}: Is a directory")
        if node.kind == "file":
            if append:
                node.data += data
            else:
                node.data = bytearray(data)
            node.mtime = time.time()

    def read(self, path: str, max_bytes: int | None = None) -> bytes:
        """A file's content. Raises ``IsADirectory``; with ``max_bytes`` (``read_file``'s
        rules) ``InvalidPath`` for a device and ``FileTooLarge`` past it."""
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"{path}: Is a directory")
        if node.kind != "file" and (max_bytes is not None or node.kind == "zero"):
            raise InvalidPath(f"read_file {path}: not a regular file (a device)")
        if max_bytes is not None and len(node.data) > max_bytes:
            raise FileTooLarge(f"read_file {path}: larger than max_bytes={max_bytes}")
        return bytes(node.data)

    def remove(self, path: str, *, recursive: bool) -> None:
        parent_path, name = posixpath.split(path)
        parent = self.lookup(parent_path)
        node = parent.children.get(name) if parent.kind == "dir" else None
        if node is None:
            raise FileNotFound(f"{path}: No such file or directory")
        if node.kind == "dir" and not recursive:
            raise IsADirectory(f"{path}: Is a directory")
        del parent.children[name]
        parent.mtime = time.time()

    def info(self, path: str) -> FileInfo:
        node = self.lookup(path)
        kind = node.kind if node.kind in ("file", "dir") else "other"
        size = len(node.data) if node.kind == "file" else 0
        name = posixpath.basename(path) or "/"
        return FileInfo(
            path=path, name=name, type=kind, size=size, mode=node.mode, mtime=node.mtime
        )
