"""The small program every command runs under inside a Vercel sandbox, and its output's framing.

Vercel's command output channel carries text only ("the command output channel is UTF-8 only and
would otherwise corrupt binary files", ``@vercel/sandbox``'s ``sandbox-user.ts``), reports a
signal only as ``128 + N``, and signals only the process it started. So each command runs as
``RUNNER <deadline> <cwd> <kind> -- argv...``, where the runner is one of two programs that do the
same, line for line:

* the *command runner*, a small static x86_64 binary built from ``shim/shim.c`` with the package
  (Vercel's images are linux/amd64 only), uploaded once per sandbox to :data:`RUNNER_DIR`: an
  exec and a fork per command, about what the command alone costs;
* ``perl -e SHIM --`` (core Perl only, which every Vercel managed image has through
  ``perl-base``): where the runner could not be uploaded or started (a sandbox that removed it),
  at the cost of a Perl start per command.

Either

* changes to ``cwd`` (or reports ``f<hex message>`` and exits 2);
* makes itself a child subreaper (``prctl``), so everything the command starts, even through
  ``setsid`` and ``env -i``, stays its descendant, and not dumpable, so a command cannot write
  its lines through ``/proc``;
* runs the command with stdout and stderr on pipes and writes them to its own stdout as lines
  ``o<hex>`` and ``e<hex>`` as they come (stdin is the command's own);
* on SIGUSR1, or ``deadline`` seconds after it started (a backstop for a client that went away),
  SIGKILLs every descendant; those of another user (children of ``sudo``, which Vercel's images
  grant without a password) through ``sudo -n``, each checked by its start time first so a
  reused pid is never hit;
* ends with ``x<exit code> <signal>``.

Everything read back is hostile input: :func:`decode` checks every line.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from agent_sandbox.errors import FileNotFound, ProviderError
from agent_sandbox.process import Stream

SHIM = r"""
my ($limit, $cwd, $kind, $sep) = splice(@ARGV, 0, 4);
sub out { my $s = shift; my $o = 0;
  while ($o < length $s) { my $w = syswrite(STDOUT, $s, length($s) - $o, $o);
    if (!defined $w) { next if $! == 4; exit 141 } $o += $w } }
if (!chdir $cwd) { out("f" . unpack("H*", "$cwd: $!") . "\n"); exit 2 }
syscall(157, 36, 1, 0, 0, 0); syscall(157, 4, 0, 0, 0, 0);
pipe(my $or, my $ow) or die "pipe: $!"; pipe(my $er, my $ew) or die "pipe: $!";
my $pid = fork; die "fork: $!" unless defined $pid;
if (!$pid) {
  close $or; close $er;
  open(STDOUT, '>&', $ow) or die; open(STDERR, '>&', $ew) or die;
  close $ow; close $ew; setpgrp(0, 0);
  { exec { $ARGV[0] } @ARGV; }
  my $e = $! + 0;
  print STDERR "$ARGV[0]: " . ($e == 2 ? "command not found" : "$!") . "\n";
  exit($e == 2 ? 127 : 126);
}
close $ow; close $ew;
my $status;
$SIG{USR1} = $SIG{ALRM} = sub { killtree() };
alarm($limit) if $limit > 0;
sub reap { while ((my $p = waitpid(-1, 1)) > 0) { $status = $? if $p == $pid } }
my $sudo = 1;
my $rootkill = q{for (@ARGV) { my ($p, $t) = split /:/; open(my $f, "<", "/proc/$p/stat") or next;
  my $s = <$f>; kill 9, $p if $s =~ /^\d+ \(.*\) (.*)$/s && (split / /, $1)[19] eq $t }};
sub killtree {
  for (1 .. 50) {
    my (%kids, %born);
    opendir(my $d, "/proc") or return;
    for my $p (grep { /^\d+$/ } readdir $d) {
      open(my $f, "<", "/proc/$p/stat") or next; my $s = <$f>; close $f;
      next unless defined $s && $s =~ /^\d+ \(.*\) (.*)$/s;
      my @f = split / /, $1; push @{$kids{$f[1]}}, $p; $born{$p} = $f[19];
    }
    closedir $d;
    my (@todo, @victims) = ($$);
    while (@todo) { my $p = shift @todo; for my $c (@{$kids{$p} || []}) { push @victims, $c; push @todo, $c } }
    last unless @victims;
    my @denied = grep { !kill("KILL", $_) && $! == 1 } @victims;
    $sudo = !system("sudo", "-n", $^X, "-e", $rootkill, map { "$_:$born{$_}" } @denied) if @denied && $sudo;
    reap(); select(undef, undef, undef, 0.02);
  }
}
my %fh = (fileno($or) => [$or, "o"], fileno($er) => [$er, "e"]);
while (%fh) {
  my $rin = ""; vec($rin, $_, 1) = 1 for keys %fh;
  my $n = select(my $rout = $rin, undef, undef, 1);
  reap();
  next if $n <= 0;
  for my $fd (keys %fh) {
    next unless vec($rout, $fd, 1);
    my ($h, $t) = @{$fh{$fd}};
    my $r = sysread($h, my $buf, 65536);
    if (!defined $r) { next if $! == 4; delete $fh{$fd}; next }
    if (!$r) { delete $fh{$fd}; next }
    out($t . unpack("H*", $buf) . "\n");
  }
}
until (defined $status) { my $p = waitpid($pid, 0); $status = $? if $p == $pid; last if $p < 0 }
my ($code, $sig) = ($status >> 8, $status & 127);
out("x$code $sig\n");
exit($sig ? 128 + $sig : $code);
"""

KILL_SIGNAL = 10
"""SIGUSR1: what ``kill`` sends the shim, which then kills the command's whole tree."""


RUNNER_DIR = "/tmp/.agent-sandbox"
"""Where the command runner is uploaded in a sandbox (a hidden directory of ``/tmp``, which every
image lets its user write)."""
_RUNNER = re.compile(re.escape(RUNNER_DIR) + r"/shim-[0-9a-f]{16}")


@functools.cache
def runner() -> tuple[str, bytes] | None:
    """The command runner's path in a sandbox (named by its content) and its bytes; ``None``
    when this installation has none (a build without its hook): commands then run under Perl."""
    try:
        data = (resources.files(__package__) / "_bin" / "shim-x86_64").read_bytes()
    except OSError:
        return None
    return f"{RUNNER_DIR}/shim-{hashlib.sha256(data).hexdigest()[:16]}", data


def wrap(
    argv: list[str], cwd: str, kind: str, deadline: int, runner: str | None = None
) -> tuple[str, list[str]]:
    """The command and arguments Vercel runs for ``argv``: under the command runner at path
    ``runner``, else under Perl."""
    args = [str(deadline), cwd, kind, "--", *argv]
    if runner is not None:
        return runner, args
    return "perl", ["-e", SHIM, "--", *args]


def unwrap(name: str, args: list[str]) -> tuple[str, list[str]] | None:
    """``(kind, argv)`` of a command either runner runs, else ``None``."""
    if name == "perl" and args[:3] == ["-e", SHIM, "--"]:
        args = args[3:]
    elif not _RUNNER.fullmatch(name):
        return None
    if len(args) < 4 or args[3] != "--":
        return None
    return args[2], args[4:]


@dataclass(frozen=True)
class Status:
    """The command's end, as the shim reported it."""

    exit_code: int
    signal: int | None


MAX_LINE = 2 * 65536 + 2
"""The longest line the shim writes (a 64 KiB read, hex-encoded, its tag and newline)."""


def decode(line: str) -> tuple[Stream, bytes] | Status:
    """One shim line: a chunk of output or the status. Raises ``ProviderError`` for anything
    else, ``FileNotFound`` for a missing working directory."""
    kind, body = line[:1], line[1:-1]
    try:
        if len(line) > MAX_LINE or not line.endswith("\n"):
            raise ValueError("too long, or cut short")
        if kind == "o":
            return "stdout", bytes.fromhex(body)
        if kind == "e":
            return "stderr", bytes.fromhex(body)
        if kind == "x":
            code, sig = body.split(" ")
            return Status(int(code), int(sig) or None)
        if kind == "f":
            message = bytes.fromhex(body).decode(errors="replace")
            raise FileNotFound(f"working directory: {message[:300]}")
    except ValueError:
        pass
    raise ProviderError(f"unreadable output from the sandbox: {line[:80]!r}")
