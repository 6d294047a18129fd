"""Exit statuses and the one-line report of an error.

The conventions of ``timeout(1)`` and ``docker run``: a command's own status passes through;
2 is a usage error (the command line or the configuration is wrong); 124 a command that ran past
its timeout; 125 a failure of agent-sandbox itself or of the provider.
"""

from __future__ import annotations

import json
import sys

from ..errors import CommandTimeout, ConfigError, InvalidPath, ProviderNotInstalled, SandboxError
from .output import error_line

USAGE = 2
TIMEOUT = 124
FAILURE = 125
INTERRUPTED = 130

_USAGE_ERRORS = (ConfigError, InvalidPath, ProviderNotInstalled)


def status_of(exc: SandboxError) -> int:
    """The exit status that reports ``exc``."""
    if isinstance(exc, CommandTimeout):
        return TIMEOUT
    if isinstance(exc, _USAGE_ERRORS):
        return USAGE
    return FAILURE


def report(exc: SandboxError, *, as_json: bool) -> None:
    """``exc`` on stderr: one line of text, or one JSON object with ``--json``."""
    if as_json:
        print(json.dumps({"error": exc.to_dict()}), file=sys.stderr)
    else:
        error_line(f"{exc.code}: {exc}")
