"""The persistent shell behind the ``bash`` tool, built only on the contract's ``exec``.

The contract has no long-running processes, so the shell's state lives in the sandbox: every call
runs a fresh ``bash`` (``sh`` when the image has no bash) that first restores the previous call's
working directory, variables and functions from a state directory, then runs the command, and on
exit writes its state back. ``cd``, ``export`` and plain assignments therefore carry over between
calls on every provider. A restart (asked for, or after a timeout) moves to a new, empty state
directory.
"""

from __future__ import annotations

import uuid

# Variables a shell manages itself, never restored.
_SKIP = (
    "BASH*|COLUMNS|COMP_*|DIRSTACK|EPOCHREALTIME|EPOCHSECONDS|EUID|FUNCNAME|GROUPS|HISTCMD|"
    "HOSTNAME|HOSTTYPE|IFS|LINENO|LINES|MACHTYPE|OPTERR|OPTIND|OSTYPE|PIPESTATUS|PPID|PS4|PWD|"
    "RANDOM|SECONDS|SHELLOPTS|SHLVL|SRANDOM|UID|_|__as_*"
)

# $1: base of the state directories ("" = $TMPDIR or /tmp), $2: this shell's name. The command
# arrives on stdin (no ARG_MAX limit), or as $3 for providers without stdin.
WRAPPER = f"""
__as_dir=${{1:-${{TMPDIR:-/tmp}}/agent-sandbox-shell}}/$2
if [ "$#" -ge 3 ]; then __as_cmd=$3; else __as_cmd=$(cat; echo .); __as_cmd=${{__as_cmd%.}}; fi
exec </dev/null 2>&1
[ -d "$__as_dir" ] || mkdir -p "$__as_dir" || exit 125
if [ -f "$__as_dir/vars" ]; then . "$__as_dir/vars" >/dev/null 2>&1; fi
if [ -f "$__as_dir/cwd" ]; then
  __as_cwd=$(cat "$__as_dir/cwd")
  cd -- "$__as_cwd" 2>/dev/null || echo "[agent-sandbox: the previous working directory $__as_cwd is gone; now in $(pwd)]" >&2
fi
__as_save() {{
  __as_rc=$?
  pwd > "$__as_dir/cwd.new" 2>/dev/null && mv -f "$__as_dir/cwd.new" "$__as_dir/cwd"
  if [ -n "${{BASH_VERSION:-}}" ]; then
    __as_keep=
    for __as_v in $(compgen -v); do
      case $__as_v in {_SKIP}) ;; *) __as_keep="$__as_keep $__as_v" ;; esac
    done
    {{ declare -p $__as_keep; declare -f; }} > "$__as_dir/vars.new" 2>/dev/null
  else
    export -p > "$__as_dir/vars.new" 2>/dev/null
  fi
  mv -f "$__as_dir/vars.new" "$__as_dir/vars" 2>/dev/null
  return $__as_rc
}}
trap __as_save EXIT
unset __as_cwd
eval "$__as_cmd"
"""

# Picks bash when the image has it, else sh. argv: sh -c LAUNCHER sh WRAPPER STATE_DIR
LAUNCHER = (
    '__as_script=$1; shift; if command -v bash >/dev/null 2>&1; then exec bash -c "$__as_script" '
    'bash "$@"; fi; exec sh -c "$__as_script" sh "$@"'
)


class ShellState:
    """Where one toolkit's shell keeps its state, and its generation (bumped on restart)."""

    def __init__(self, base: str | None) -> None:
        self.base = "" if base is None else (base.rstrip("/") or "/")
        self.generation = 0
        self.token = uuid.uuid4().hex[:12]

    @property
    def name(self) -> str:
        """The state directory's name (under ``base``) of the current shell."""
        return f"{self.token}-{self.generation}"

    def restart(self) -> None:
        """Start a fresh shell: the next command sees no previous state."""
        self.generation += 1

    def argv(self, command: str | None = None) -> list[str]:
        """The argv that runs one command in this shell: sent on stdin, or given here."""
        tail = [] if command is None else [command]
        return ["sh", "-c", LAUNCHER, "sh", WRAPPER, self.base, self.name, *tail]
