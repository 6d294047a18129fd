# agent-sandbox's process runner. The Worker runs it inside the sandbox's container as
#   sh -c "$RUNNER" asb <command> <sandbox-id> [arguments...]
# in POSIX sh with coreutils, util-linux (setsid), grep, sed and awk.
#
# The bridge's own exec route reads a command's output as UTF-8 lines (bytes that are not UTF-8
# are replaced, a last line gains a newline), gives it no stdin and cannot kill it or follow it
# again. Here a command runs under a supervisor that writes its output to files, and `follow`
# prints those files as base64 lines -- plain ASCII, which passes the bridge's line pipe byte for
# byte: stdout chunks on stdout, stderr chunks on stderr. Lines starting with "!" are control
# lines (never base64); `follow` exits with the command's exit status. Each process has a directory
#   /tmp/.agent-sandbox/p/<ref>/  argv (NUL-separated), started, pid, out, err, in.N, status
# so any client can follow it again from any offset, feed or close its stdin, or kill it (a
# command's for a minute after its end, a background process's until the sandbox ends).
set -u
R=/tmp/.agent-sandbox
# One `follow` (one HTTP response) carries about this much output at most.
FOLLOW_BYTES=8388608
CHUNK=262144
cmd=${1:-}
sid=${2:-}
shift 2 2>/dev/null || exit 2

alive() { [ "$(cat "$R/sandbox" 2>/dev/null)" = "$sid" ]; }

size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# The pids to kill for process directory $1: its process group, every descendant of its pid,
# and every process carrying its mark (children that left the group with setsid).
tree() {
  pid=$(cat "$1/pid" 2>/dev/null) || return 0
  case $pid in '' | *[!0-9]*) return 0 ;; esac
  echo "-$pid"
  grep -s '^PPid:' /proc/[0-9]*/status |
    sed -n 's,^/proc/\([0-9]*\)/status:PPid:[[:space:]]*\([0-9]*\)$,\1 \2,p' |
    awk -v root="$pid" '{ kids[$2] = kids[$2] " " $1 }
      END { todo = root; while (todo != "") { n = split(todo, a, " "); todo = "";
        for (i = 1; i <= n; i++) { print a[i]; todo = todo kids[a[i]] } } }'
  grep -lzsx "AGENT_SANDBOX_PROC=${1##*/}" /proc/[0-9]*/environ | cut -d/ -f3
}

killtree() {
  for _ in 1 2 3; do
    # shellcheck disable=SC2046
    kill -KILL $(tree "$1" | sort -u) 2>/dev/null
  done
  return 0
}

# Copy stdin chunks in.0, in.1, ... to stdout as they arrive, until in.end says how many there
# are (or the process ended).
feed() {
  n=0
  while :; do
    if [ -e "$1/in.$n" ]; then
      cat "$1/in.$n" || return 0
      rm -f "$1/in.$n"
      n=$((n + 1))
    elif [ -e "$1/in.end" ] && [ "$(cat "$1/in.end")" -le "$n" ]; then
      return 0
    elif [ -e "$1/status" ]; then
      return 0
    else
      sleep 0.02
    fi
  done
}

# Run the command of process directory $1 and record how it ended.
supervise() {
  d=$1 timeout=$2 stdin=$3 nenv=$4
  shift 4
  if [ "$stdin" = 1 ]; then
    feed "$d" >"$d/in" 2>/dev/null &
    feeder=$!
    src=$d/in
  else
    feeder=
    src=/dev/null
  fi
  # env(1) sets the environment (any name) and runs the argv as it is: 127 or 126 with a
  # message when it cannot. A command whose name holds "=" goes through sh, or env(1) would
  # take it for a variable.
  total=$#
  i=0
  for a in "$@"; do
    if [ "$i" = "$nenv" ]; then
      case $a in *=*) set -- "$@" sh -c 'exec "$@"' sh ;; esac
    fi
    set -- "$@" "$a"
    i=$((i + 1))
  done
  shift "$total"
  setsid env "AGENT_SANDBOX_PROC=${d##*/}" "$@" <"$src" >"$d/out" 2>"$d/err" &
  pid=$!
  echo "$pid" >"$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
  watchdog=
  if [ "$timeout" -gt 0 ]; then
    (
      sleep "$timeout"
      killtree "$d"
    ) &
    watchdog=$!
  fi
  wait "$pid"
  code=$?
  echo "$code" >"$d/status.tmp" && mv "$d/status.tmp" "$d/status"
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  [ -n "$feeder" ] && kill "$feeder" 2>/dev/null
  rm -f "$d/in" "$d"/in.*
}

# Print the bytes of file $1 from offset $2 (at most $CHUNK) as one base64 line; `got` is how
# many there were.
chunk() {
  got=$(($(size "$1") - $2))
  [ "$got" -gt "$CHUNK" ] && got=$CHUNK
  if [ "$got" -gt 0 ]; then
    tail -c +$(($2 + 1)) "$1" | head -c "$got" | base64 -w0
    echo
  else
    got=0
  fi
}

# Output of process $1 from offsets $2 (stdout) and $3 (stderr) on, for at most $4 seconds and
# about $5 bytes: then "!more", and the client follows again from where it got to.
follow() {
  d=$R/p/$1 out=$2 err=$3 budget=$5
  end=$(($(date +%s) + $4))
  idle=0.01
  while :; do
    ended=0
    [ -e "$d/status" ] && ended=1
    chunk "$d/out" "$out"
    out=$((out + got))
    moved=$got
    chunk "$d/err" "$err" >&2
    err=$((err + got))
    if [ $((moved + got)) -gt 0 ]; then
      budget=$((budget - moved - got))
      if [ "$budget" -le 0 ]; then
        echo '!more'
        exit 0
      fi
      idle=0.01
      continue
    fi
    if [ "$ended" = 1 ]; then
      exit "$(cat "$d/status")"
    fi
    if [ "$(date +%s)" -ge "$end" ]; then
      echo '!more'
      exit 0
    fi
    sleep "$idle"
    case $idle in 0.01) idle=0.02 ;; 0.02) idle=0.05 ;; *) idle=0.1 ;; esac
  done
}

case $cmd in
init)
  mkdir -p "$R/p" && printf '%s\n' "$sid" >"$R/sandbox.tmp" && mv "$R/sandbox.tmp" "$R/sandbox" &&
    echo '!ok'
  ;;

start)
  # start <sid> <seconds> <ref> <detached 0|1> <timeout-seconds|0> <stdin 0|1> <cwd|-> <n-env>
  #       [NAME=VALUE...] <argv...>   (<seconds>: how long to follow it in this response)
  alive || { echo '!gone'; exit 0; }
  seconds=$1 ref=$2 detached=$3 timeout=$4 stdin=$5 cwd=$6 nenv=$7
  shift 7
  d=$R/p/$ref
  [ -e "$d/pid" ] && { echo '!exists'; exit 0; }
  # A command's directory outlives it by a minute (a client whose stream broke follows again),
  # a background process's until the sandbox ends.
  find "$R/p" -mindepth 2 -maxdepth 2 -name status -mmin +1 2>/dev/null | while read -r f; do
    [ -e "${f%/status}/detached" ] || rm -rf "${f%/status}"
  done
  if [ "$cwd" != - ] && ! cd "$cwd" 2>/dev/null; then
    echo '!cwd'
    exit 0
  fi
  mkdir -p "$d" && : >"$d/out" && : >"$d/err" && date +%s >"$d/started" || exit 1
  [ "$detached" = 1 ] && : >"$d/detached"
  i=0
  for a in "$@"; do
    i=$((i + 1))
    [ "$i" -gt "$nenv" ] && printf '%s\0' "$a"
  done >"$d/argv"
  [ "$stdin" = 1 ] && { mkfifo "$d/in" || exit 1; }
  # exec, not a redirection of the call: sh would keep a copy of the Worker's pipes open
  (
    exec </dev/null >/dev/null 2>&1
    supervise "$d" "$timeout" "$stdin" "$nenv" "$@"
  ) &
  while [ ! -e "$d/pid" ]; do sleep 0.005; done
  echo '!started'
  follow "$ref" 0 0 "$seconds" "$FOLLOW_BYTES"
  ;;

follow)
  # follow <sid> <seconds> <ref> <stdout-offset> <stderr-offset>
  alive || { echo '!gone'; exit 0; }
  [ -e "$R/p/$2/pid" ] || { echo '!nosuch'; exit 0; }
  echo '!following'
  follow "$2" "$3" "$4" "$1" "$FOLLOW_BYTES"
  ;;

kill)
  alive || { echo '!gone'; exit 0; }
  d=$R/p/$1
  [ -e "$d/pid" ] || { echo '!nosuch'; exit 0; }
  [ -e "$d/status" ] || killtree "$d"
  echo '!ok'
  ;;

push)
  # push <sid> <ref> <staged chunk file name|-> <close 0|1>: append stdin, in order.
  alive || { echo '!gone'; exit 0; }
  d=$R/p/$1 staged=$2 close=$3
  mkdir -p "$d"
  until mkdir "$d/in.lock" 2>/dev/null; do sleep 0.005; done
  if [ -e "$d/status" ]; then
    reply='!ended'
  elif [ -e "$d/in.end" ]; then
    reply='!closed'
  else
    n=$(cat "$d/in.count" 2>/dev/null || echo 0)
    if [ "$staged" != - ]; then
      mv "$d/$staged" "$d/in.$n" && n=$((n + 1)) && echo "$n" >"$d/in.count"
    fi
    [ "$close" = 1 ] && echo "$n" >"$d/in.end"
    reply='!ok'
  fi
  rmdir "$d/in.lock"
  [ "$staged" != - ] && rm -f "$d/$staged"
  echo "$reply"
  ;;

list)
  # One line per process started detached: !proc <ref> <exit status|-> <started> <argv base64>
  alive || { echo '!gone'; exit 0; }
  for d in "$R"/p/*/; do
    d=${d%/}
    [ -e "$d/pid" ] && [ -e "$d/detached" ] || continue
    printf '!proc %s %s %s %s\n' "${d##*/}" "$(cat "$d/status" 2>/dev/null || echo -)" \
      "$(cat "$d/started" 2>/dev/null || echo 0)" "$(base64 -w0 <"$d/argv")"
  done
  echo '!ok'
  ;;

*)
  echo '!usage'
  exit 2
  ;;
esac
