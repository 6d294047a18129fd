#!/usr/bin/python3
"""The fake Modal's ``modal-sandbox-fs-tools``: the in-sandbox program behind ``Sandbox.filesystem``.

Modal's SDK implements every ``sb.filesystem`` call as an exec of
``/__modal/.bin/modal-sandbox-fs-tools '<command JSON>'`` (``modal/sandbox/_filesystem.py``): one
JSON argument naming the operation (``modal/_utils/sandbox_fs_utils.py`` builds them and documents
that they match the ``Command`` enum of the vendor's Rust crate), the result on stdout (raw bytes
for ``ReadFile``, JSON for ``ListFiles``/``Stat``), the data to write on stdin for ``WriteFile``,
and on failure a JSON payload ``{"version", "error_kind", "message", "detail"}`` on stderr with a
non-zero exit, whose ``error_kind`` the SDK maps onto its ``SandboxFilesystem*Error`` classes.
The entry fields follow the SDK's ``modal.types.FileInfo`` and Modal's own test double of this
binary (modal-labs/modal-client, ``py/test/supports/mock_sandbox_fs_tools.py``).

It runs inside the sandbox as the sandbox's root, with the system's ``/usr/bin/python3``, and
only with the standard library.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import sys
from typing import Any, NoReturn

MAX_READ_BYTES = 5 * 1024**3
CHUNK = 256 * 1024


def fail(kind: str, message: str, detail: str | None = None) -> NoReturn:
    payload: dict[str, Any] = {"version": 1, "error_kind": kind, "message": message}
    if detail is not None:
        payload["detail"] = detail
    sys.stderr.write(json.dumps(payload))
    raise SystemExit(1)


def fail_os(exc: OSError) -> NoReturn:
    kinds = {
        errno.ENOENT: ("NotFound", "path does not exist"),
        errno.ENOTDIR: ("NotDirectory", "a component of the path is not a directory"),
        errno.EACCES: ("PermissionDenied", "permission denied"),
        errno.EPERM: ("PermissionDenied", "operation not permitted"),
        errno.EROFS: ("PermissionDenied", "read-only file system"),
        errno.EISDIR: ("IsDirectory", "expected a file path"),
        errno.ENOTEMPTY: ("DirectoryNotEmpty", "directory is not empty"),
        errno.EEXIST: ("PathAlreadyExists", "path already exists"),
    }
    kind, message = kinds.get(exc.errno or 0, ("Io", "I/O error"))
    fail(kind, message, detail=str(exc))


def entry(name: str, path: str, st: os.stat_result) -> dict[str, Any]:
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "directory"
    else:
        kind = "file"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    found: dict[str, Any] = {
        "name": name,
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": st.st_mode,
        "permissions": stat.filemode(st.st_mode),
        "owner": owner,
        "group": group,
        "modified_time": st.st_mtime,
    }
    if kind == "symlink":
        found["symlink_target"] = os.readlink(path)
    return found


def read_file(path: str) -> None:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            fail("IsDirectory", "expected a file path")
        if st.st_size > MAX_READ_BYTES:
            fail(
                "FileTooLarge", f"file is {st.st_size} bytes, over the {MAX_READ_BYTES} byte limit"
            )
        with open(path, "rb") as source:
            while chunk := source.read(CHUNK):
                sys.stdout.buffer.write(chunk)
    except OSError as exc:
        fail_os(exc)
    sys.stdout.buffer.flush()


def write_file(path: str) -> None:
    if os.path.isdir(path):
        fail("IsDirectory", "expected a file path")
    parent = os.path.dirname(path)
    try:
        if parent:
            if os.path.lexists(parent) and not os.path.isdir(parent):
                fail("AlreadyExists", "a component of the path is not a directory")
            os.makedirs(parent, exist_ok=True)
        # In place: a replaced file keeps its mode and owner.
        with open(path, "wb") as target:
            while chunk := sys.stdin.buffer.read(CHUNK):
                target.write(chunk)
    except OSError as exc:
        fail_os(exc)


def list_files(path: str) -> None:
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            fail("IsFile", "expected a directory path")
        names = sorted(os.listdir(path))
    except OSError as exc:
        fail_os(exc)
    found = []
    for name in names:
        full = os.path.join(path, name)
        try:
            found.append(entry(name, full, os.lstat(full)))
        except OSError:
            continue
    sys.stdout.write(json.dumps(found))


def make_directory(path: str, parents: bool) -> None:
    try:
        if parents:
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
    except FileExistsError:
        fail("PathAlreadyExists", "path already exists")
    except OSError as exc:
        fail_os(exc)


def remove(path: str, recursive: bool) -> None:
    try:
        if not os.path.lexists(path):
            fail("NotFound", "path does not exist")
        if os.path.islink(path) or not os.path.isdir(path):
            os.remove(path)
        elif recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    except OSError as exc:
        fail_os(exc)


def stat_path(path: str) -> None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        fail_os(exc)
    name = os.path.basename(path.rstrip("/")) or "/"
    sys.stdout.write(json.dumps(entry(name, path, st)))


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: modal-sandbox-fs-tools <command-json>")
    command = json.loads(argv[1])
    (name, args), *_ = command.items()
    path = args["path"]
    if name == "ReadFile":
        read_file(path)
    elif name == "WriteFile":
        write_file(path)
    elif name == "ListFiles":
        list_files(path)
    elif name == "MakeDirectory":
        make_directory(path, bool(args.get("parents", True)))
    elif name == "Remove":
        remove(path, bool(args.get("recursive", False)))
    elif name == "Stat":
        stat_path(path)
    else:
        fail("NotSupported", f"this fake does not implement {name}")


if __name__ == "__main__":
    main(sys.argv)
