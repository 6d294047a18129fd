"""Every shell script the core sends into sandboxes, in one place.

Each serves one named derived operation (see :mod:`agent_sandbox.derived`); a provider (or the
in-memory fake) that has the operation natively overrides the operation and never sees its
script. They are POSIX ``sh`` with coreutils or busybox tools; arguments travel as positional
parameters, never spliced into the text. Exit statuses with a meaning of their own:
"""

from __future__ import annotations

DENIED = 13
MISSING = 44
NOT_DIR = 45
IS_DIR = 46
NOT_REGULAR = 47
NO_TOOL = 48

STAT_FORMAT = "%F\t%s\t%a\t%Y\t%n"

# $@: paths. One stat line each (not following a final symlink).
STAT = f"""
for p do
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "$p" >&2; exit {MISSING}; fi
done
exec stat -c '{STAT_FORMAT}' -- "$@"
"""

# $1: a directory. One stat line per entry.
LIST = f"""
if [ ! -e "$1" ]; then exit {MISSING}; fi
if [ ! -d "$1" ]; then exit {NOT_DIR}; fi
find "$1" -mindepth 1 -maxdepth 1 -exec stat -c '{STAT_FORMAT}' -- {{}} +
"""

# $1: a path, $2: "-rf" or "-f".
REMOVE = f"""
[ -e "$1" ] || [ -L "$1" ] || exit {MISSING}
if [ "$2" = -f ] && [ -d "$1" ] && [ ! -L "$1" ]; then exit {IS_DIR}; fi
exec rm "$2" -- "$1"
"""

MKDIR = 'exec mkdir -p -- "$1"'

# $1: the directory to unpack the tar on stdin into (created if missing).
UNTAR = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'

# $1: a directory, written to stdout as a tar.
TAR = f'[ -d "$1" ] || exit {MISSING}; exec tar -c -f - -C "$1" .'

# $@: paths, each printed resolved (symlinks followed, missing tail kept), NUL-terminated.
REALPATH = f"""
for p do
  r=$(realpath -m -- "$p" 2>/dev/null) ||
  r=$(python3 -c 'import os,sys; print(os.path.realpath(sys.argv[1]))' "$p" 2>/dev/null) ||
  r=$(readlink -f -- "$p" 2>/dev/null) || {{ echo "cannot resolve $p" >&2; exit {NO_TOOL}; }}
  [ -n "$r" ] || {{ echo "cannot resolve $p" >&2; exit {NO_TOOL}; }}
  printf '%s\\0' "$r"
done
"""

# $1: a directory. Every file and symlink below it (.git skipped), NUL-terminated.
FIND = f"""
[ -e "$1" ] || exit {MISSING}
[ -d "$1" ] || exit {NOT_DIR}
exec find "$1" -name .git -prune -o \\( -type f -o -type l \\) -print0
"""

# $1: an extended regular expression, $2: a file or directory. "path NUL line:text" per match;
# binary files and .git skipped. Exit 1: no match; 2: a bad pattern (said on stderr).
GREP = f"""
[ -e "$2" ] || exit {MISSING}
if command -v rg >/dev/null 2>&1; then
  exec rg --line-number --no-heading --with-filename --null --color never --hidden \\
    --no-ignore --glob '!.git' --no-messages -e "$1" -- "$2"
fi
grep -rnHIZ --exclude-dir=.git -s -e x -- /dev/null >/dev/null 2>&1
if [ $? -le 1 ]; then
  exec grep -rnHIEZ --exclude-dir=.git -s -e "$1" -- "$2"
fi
# a minimal grep (busybox): one file at a time, the NUL after the name added here
find "$2" -name .git -prune -o -type f -exec sh -c '
  pattern=$1; shift; rc=1
  for f do
    out=$(grep -nE -e "$pattern" -- "$f"); r=$?
    if [ $r -ge 2 ]; then rc=2; elif [ $r -eq 0 ]; then
      n=$(head -c 8192 "$f" | wc -c); t=$(head -c 8192 "$f" | tr -d "\\000" | wc -c)
      [ "$n" -eq "$t" ] || continue
      [ $rc -eq 1 ] && rc=0
      printf "%s\\n" "$out" | while IFS= read -r l; do printf "%s\\0%s\\n" "$f" "$l"; done
    fi
  done
  exit $rc' sh "$1" {{}} +
"""

# $1 the file, $2 "size" (print its size) or the most bytes to print.
READ_FILE = f"""
p=$1
if [ -d "$p" ]; then exit {IS_DIR}; fi
if [ -e "$p" ]; then
  [ -f "$p" ] || exit {NOT_REGULAR}
  [ -r "$p" ] || exit {DENIED}
elif [ -L "$p" ]; then
  exit {MISSING}
else
  exec head -c 0 -- "$p"
fi
if [ "$2" = size ]; then exec stat -L -c %s -- "$p"; fi
exec head -c "$2" -- "$p"
"""

# $1 the file, $2 its directory, $3 "check" (print the file's mode, or "new") or "write" (stdin).
WRITE_FILE = f"""
p=$1
if [ -d "$p" ]; then exit {IS_DIR}; fi
if [ -e "$p" ]; then
  [ -f "$p" ] || exit {NOT_REGULAR}
  if [ "$3" = check ]; then
    [ -w "$p" ] || exit {DENIED}
    exec stat -L -c %a -- "$p"
  fi
else
  mkdir -p -- "$2" || exit 1
  if [ "$3" = check ]; then
    [ -w "$2" ] && [ -x "$2" ] || exit {DENIED}
    echo new
    exit 0
  fi
fi
exec cat > "$p"
"""

# $1: sed's line selection ("10,20p;20q" or "10,$p"), $2: the file, $3: most bytes to print.
READ_LINES = f"""
[ -e "$2" ] || exit {MISSING}
[ -d "$2" ] && exit {IS_DIR}
sed -n "$1" "$2" | head -c "$3"
"""

# -- the bash tool's shell -------------------------------------------------------------------

# A long-lived shell (providers that stream stdin): bash when the image has it, else sh;
# stderr joins stdout so the tool returns them interleaved, as a terminal shows them.
SHELL = (
    "exec 2>&1; if command -v bash >/dev/null 2>&1; then exec bash --noprofile --norc; fi; exec sh"
)


def shell_call(command: str, marker: str) -> bytes:
    """What ``SHELL``'s stdin gets for one call: the command, eval'ed from printf's octal
    escapes (no byte of it is ever read as our framing; through ``command``, a syntax error
    fails this call instead of ending the shell), with stdin from /dev/null, then a line
    ``<marker> <exit status>``. A working directory removed since the last call is reported
    and left for ``$HOME``."""
    escaped = "".join(f"\\{byte:03o}" for byte in command.encode("utf-8", "surrogateescape"))
    return (
        '[ -d "$PWD" ] || { __asb_gone=$PWD; cd -- "${HOME:-/}" 2>/dev/null || cd /; '
        'echo "[agent-sandbox: the previous working directory $__asb_gone is gone; now in $PWD]"; '
        "unset __asb_gone; }; "
        f"command eval \"$(printf '{escaped}')\" </dev/null 2>&1; "
        f"printf '\\n%s %d\\n' {marker} \"$?\"\n"
    ).encode()


# Where stdin cannot be streamed, each call is a fresh shell restoring the previous call's
# state from a directory in the sandbox (the command on stdin, or as $3).
# Variables a shell manages itself, never restored.
_SHELL_SKIP = (
    "BASH*|COLUMNS|COMP_*|DIRSTACK|EPOCHREALTIME|EPOCHSECONDS|EUID|FUNCNAME|GROUPS|HISTCMD|"
    "HOSTNAME|HOSTTYPE|IFS|LINENO|LINES|MACHTYPE|OPTERR|OPTIND|OSTYPE|PIPESTATUS|PPID|PS4|PWD|"
    "RANDOM|SECONDS|SHELLOPTS|SHLVL|SRANDOM|UID|_|__as_*"
)

# $1: base of the state directories ("" = $TMPDIR or /tmp), $2: this shell's name. The command
# arrives on stdin (no ARG_MAX limit), or as $3 for providers without stdin.
SHELL_WRAPPER = f"""
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
      case $__as_v in {_SHELL_SKIP}) ;; *) __as_keep="$__as_keep $__as_v" ;; esac
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
SHELL_LAUNCHER = (
    '__as_script=$1; shift; if command -v bash >/dev/null 2>&1; then exec bash -c "$__as_script" '
    'bash "$@"; fi; exec sh -c "$__as_script" sh "$@"'
)
