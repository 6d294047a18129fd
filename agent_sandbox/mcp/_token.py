"""The MCP HTTP server's bearer token: read from a file or the environment, never the command
line (``/proc/PID/cmdline`` shows argv to every local user), and generated into a file only
its owner can read when none exists yet."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..errors import ConfigError

TOKEN_ENV = "AGENT_SANDBOX_MCP_TOKEN"
"""The environment variable read when no ``--token-file`` or ``--token-env`` is given."""


def default_token_file() -> Path:
    """``$XDG_STATE_HOME/agent-sandbox/mcp-token``, else ``~/.local/state/agent-sandbox/mcp-token``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "agent-sandbox" / "mcp-token"


def read_token_file(path: Path) -> str:
    """The token in ``path``. Raises ``ConfigError`` when the file is empty, not ours, or
    readable or writable by group or others (as ssh refuses a shared private key)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the token file {path} is not a regular file")
        if st.st_uid != os.getuid():
            raise ConfigError(f"the token file {path} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"the token file {path} is accessible to other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        token = os.read(fd, 64 * 1024).decode("utf-8", errors="strict").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the token file {path} is not UTF-8 text") from exc
    finally:
        os.close(fd)
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, generating one (mode 0600, folder 0700) when the file does not
    exist. Returns the token and whether it was just created."""
    try:
        return read_token_file(path), False
    except ConfigError:
        if path.exists() or path.is_symlink():
            raise
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another server created it meanwhile
        return read_token_file(path), False
    except OSError as exc:
        raise ConfigError(f"cannot create the token file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token, True
