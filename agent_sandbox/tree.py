"""Killing a command's whole process tree from inside a sandbox, for providers whose API signals
one process only (E2B's envd, Daytona's sessions).

A provider runs each command under :data:`SUPERVISE`, a POSIX ``sh`` script that puts a mark
(``AGENT_SANDBOX_PROC=<ref>``) in the command's environment, runs it as its child, and once it
has ended exits with its status at once, leaving :data:`REAP` behind in the background to kill
whatever the command left carrying the mark (only when a process it did not see before the
command, a glob of /proc, is alive: most commands leave nothing, and pay no fork for it). The reaper holds none of the command's pipes, so a
vendor that waits for the output pipes to close (envd does) ends the command as soon as the
command and what held its output are gone, and a background child holding the output does not
keep it open. :data:`KILL` ends a command's tree on demand: every descendant of the supervisor (found by parent pid, so children that clear
their environment with ``env -i`` or ``sudo`` die too) and every process carrying the mark (so
daemons that ``setsid`` away and were reparented die too). Each process is stopped as it is
found, so none can fork away while the tree is walked, then all are killed. A process that both
left the tree and cleared its environment escapes; run the kill as root to reach processes that
changed user.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .models import ExecOptions, ProcessInfo

if TYPE_CHECKING:
    from .backend import BaseBackend

MARK = "AGENT_SANDBOX_PROC"
"""The environment variable marking every process of one command."""
RECORDS = "/tmp/.agent-sandbox"
"""Where :data:`SUPERVISE` keeps the records of detached processes (argv, exit status)."""
REF = re.compile(r"asb-[0-9a-f]{16}")
"""The refs :func:`new_ref` makes (anything else named in a sandbox is not ours)."""

# $1: the records directory. One line per record: ref, start time, status ("-" while it runs,
# or when it was killed with its supervisor), argv (NUL-separated) in base64.
_LIST_RECORDS = """cd "$1" 2>/dev/null || exit 0
for f in asb-*.argv; do [ -f "$f" ] || continue; r=${f%.argv}
echo "$r $(stat -c %Y "$f") $(cat "$r.exit" 2>/dev/null || echo -) $(base64 -w0 < "$f")"; done"""


def new_ref() -> str:
    """A fresh ref for a command (its mark's value, its record's name)."""
    return "asb-" + secrets.token_hex(8)


async def records(backend: BaseBackend, sandbox_id: str) -> list[ProcessInfo]:
    """What :data:`SUPERVISE` recorded in :data:`RECORDS` (one command in the sandbox): a
    process whose status is not recorded is reported running (the caller knows better). The
    records are written inside the sandbox: a malformed one is skipped."""
    argv = ["sh", "-c", _LIST_RECORDS, "records", RECORDS]
    result = await backend.exec(sandbox_id, argv, ExecOptions(output_limit=1 << 22))
    found = []
    for line in result.stdout.splitlines():
        ref, started, status, blob = [*line.split(" "), "", "", ""][:4]
        if not (REF.fullmatch(ref) and started.isdigit() and (status == "-" or status.isdigit())):
            continue
        code = None if status == "-" else int(status)
        try:
            command = base64.b64decode(blob, validate=True).decode(errors="replace")
            when = datetime.fromtimestamp(int(started), timezone.utc)
        except (ValueError, OverflowError, OSError):  # bad base64, a time out of range
            continue
        if code is None or code <= 255:
            found.append(ProcessInfo(ref=ref, command=tuple(command.split("\0")[:-1]),
                                     running=code is None, exit_code=code, started_at=when))  # fmt: skip
    return found


REAP = (
    f'set -- $(grep -lzxF -- "{MARK}=$m" /proc/[0-9]*/environ 2>/dev/null); '
    'for f do p=${f#/proc/}; kill -9 "${p%/environ}" 2>/dev/null; done'
)
"""Shell commands killing every process whose environment carries the mark ``$m`` (one grep
over /proc). Run it in the background holding none of the command's pipes: close or redirect
them in the shell itself first (a forked child holds them until its own redirections run)."""

# $1: the mark's value; $2: a directory for the command's record ("" for none), $3: the
# record's name. Then the command's argv. With a record directory, the argv is written
# NUL-separated to "$2/$3.argv" (its mtime: when the command started) and, once it has ended,
# its status to "$2/$3.exit". Exits with the command's status (128 + N for signal N) as soon as
# it has ended, with :data:`REAP` left running in the background if a process that was not
# there before the command is alive.
SUPERVISE = f"""
m=$1 d=$2 r=$3
shift 3
if [ -n "$d" ]; then
  mkdir -p -m 1777 "$d" 2>/dev/null
  printf '%s\\0' "$@" > "$d/$r.argv"
fi
b=" "; for p in /proc/[0-9]*; do b="$b$p "; done
{MARK}=$m "$@"
s=$?
[ -z "$d" ] || echo "$s" > "$d/$r.exit"
exec </dev/null >/dev/null 2>&1
for p in /proc/[0-9]*; do case "$b" in *" $p "*) ;; *) {{ {REAP}; }} & break ;; esac; done
exit "$s"
"""

# $1: the mark's value; $2: the supervisor's pid (it survives, to report the status).
KILL = f"""
top=$2
found=" $(grep -lzxF -- "{MARK}=$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | tr '\\n' ' ')"
for p in $found; do kill -STOP "$p" 2>/dev/null; done
while :; do
  more=
  for d in /proc/[0-9]*; do
    p=${{d#/proc/}}
    case "$found" in *" $p "*) continue ;; esac
    read -r st < "$d/stat" 2>/dev/null || continue
    set -- ${{st##*) }}
    case "$found $top " in
      *" $2 "*) found="$found$p "; kill -STOP "$p" 2>/dev/null; more=1 ;;
    esac
  done
  [ -n "$more" ] || break
done
for p in $found; do [ "$p" = "$top" ] || kill -KILL "$p" 2>/dev/null; done
true
"""
