"""FakeBackend's own behaviour: scripted commands, its shell, streams, worlds, expiry.

(The conformance suite runs against it in test_fake_conformance.py.)
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sandbox import (
    CommandTimeout,
    FileNotFound,
    Sandbox,
    SandboxNotFound,
    StdinClosed,
    Unsupported,
)
from agent_sandbox.testing import CommandContext, FakeBackend, FakeOptions

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def sb(backend: FakeBackend) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(backend=backend, env={"SPEC": "s"})
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


async def run(sb: Sandbox, command: str | list[str], **kw: object) -> tuple[int, str, str]:
    r = await sb.exec(command, **kw)  # type: ignore[arg-type]
    return r.exit_code, r.stdout, r.stderr


# -- scripted commands ------------------------------------------------------------------------


async def test_register_async_and_sync_commands(backend: FakeBackend, sb: Sandbox) -> None:
    seen: list[CommandContext] = []

    async def git(ctx: CommandContext) -> int:
        seen.append(ctx)
        await ctx.write_stdout(f"args={ctx.argv[1:]} stdin={await ctx.read_stdin()!r}\n")
        await ctx.write_stderr("warning\n")
        ctx.write_file("out/made.txt", ctx.read_file("../in.txt") + b"!")
        return 4

    backend.register_command("git", git)
    backend.register_command("quiet", lambda ctx: None)
    await sb.write_file("in.txt", b"data")
    await sb.mkdir("sub")
    code, out, err = await run(sb, "cd sub && echo hi | FOO=bar git commit -m 'a b'")
    assert (code, out, err) == (4, "args=['commit', '-m', 'a b'] stdin=b'hi\\n'\n", "warning\n")
    assert seen[0].env["FOO"] == "bar"
    assert seen[0].env["SPEC"] == "s"
    assert seen[0].cwd == sb.path("sub")
    assert seen[0].sandbox_id == sb.id
    assert await sb.read_file("sub/out/made.txt") == b"data!"
    assert (await run(sb, ["quiet"]))[0] == 0
    assert (await run(sb, "quiet && echo ok"))[1] == "ok\n"


async def test_registered_command_overrides_a_utility(backend: FakeBackend, sb: Sandbox) -> None:
    async def fake_cat(ctx: CommandContext) -> int:
        await ctx.write_stdout("scripted\n")
        return 0

    backend.register_command("cat", fake_cat)
    assert (await run(sb, "cat nothing"))[1] == "scripted\n"
    assert (await run(sb, "command -v cat"))[1] == "/usr/bin/cat\n"


async def test_a_scripted_command_reads_streamed_stdin(backend: FakeBackend, sb: Sandbox) -> None:
    async def upper(ctx: CommandContext) -> None:
        await ctx.write_stdout((await ctx.read_stdin()).upper())

    backend.register_command("upper", upper)
    async with await sb.start("upper", stdin=True) as proc:
        await proc.write_stdin("abc\n")
        await proc.write_stdin(b"def\n")
        await proc.close_stdin()
        assert (await proc.wait()).stdout == "ABC\nDEF\n"
        with pytest.raises(StdinClosed):
            await proc.write_stdin("late")


async def test_a_bug_in_a_scripted_command_reaches_the_caller(
    backend: FakeBackend, sb: Sandbox
) -> None:
    def broken(ctx: CommandContext) -> int:
        raise KeyError("bug")

    backend.register_command("broken", broken)
    with pytest.raises(KeyError):
        await sb.exec("echo x | broken")


async def test_unknown_command(sb: Sandbox) -> None:
    code, out, err = await run(sb, "no-such-tool --flag")
    assert (code, out) == (127, "")
    assert "no-such-tool: command not found" in err
    assert (await run(sb, ["no-such-tool"]))[0] == 127
    assert (await run(sb, "./missing.sh"))[0] == 127
    assert (await run(sb, "bash -c true"))[0] == 127  # sh only


async def test_there_is_no_network(sb: Sandbox) -> None:
    for command in ("nc -w 1 127.0.0.1 80", "wget -O - http://example.com", "curl example.com"):
        code, out, err = await run(sb, command)
        assert (code, out) == (1, "")
        assert "network is unreachable" in err


# -- the shell --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo 'single $X' \"double $SPEC\" bare\\ space", "single $X double s bare space\n"),
        ('X=1; Y="$X 2"; echo "$Y" ${Z:-dflt} ${X}', "1 2 dflt 1\n"),
        ("false; echo $?; true && echo yes || echo no", "1\nyes\n"),
        (
            "false || echo rescued; false && echo never; ! false && echo negated",
            "rescued\nnegated\n",
        ),
        ("printf 'a\\nb\\nc\\n' | wc -l", "3\n"),
        ("echo one > f; echo two >> f; cat < f", "one\ntwo\n"),
        ("cat missing 2>/dev/null; echo $?", "1\n"),
        ("(echo sub 1>&2) 2>&1", "sub\n"),
        ("echo $(echo $(echo in)); (cd /; (pwd))", "in\n/\n"),
        ("if [ -d /tmp ]; then echo dir; elif true; then echo no; else echo no; fi", "dir\n"),
        ("if [ -f /tmp ]; then echo no; elif false; then echo no; else echo else; fi", "else\n"),
        ("i=x; while [ $i != xxx ]; do echo $i; i=${i}x; done", "x\nxx\n"),
        ("n=x; until [ $n = xxx ]; do n=${n}x; done; echo $n", "xxx\n"),
        ("for w in a 'b c'; do printf '<%s>' \"$w\"; done; echo", "<a><b c>\n"),
        ("cd /tmp; (cd /; pwd); pwd; echo $PWD", "/\n/tmp\n/tmp\n"),
        ("V=out; (V=in; exit 3); echo $? $V", "3 out\n"),
        ("{ echo a; echo b; } > g; cat g", "a\nb\n"),
        ("sh -c 'echo $0 $1 $# \"$@\"' name x 'y z'", "name x 2 x y z\n"),
        ("printf '%s-%d|' a 1 b 2; echo", "a-1|b-2|\n"),
        ("printf '%5s|%-3s|%03d|%x|%%|%b\\n' ab c 7 255 'x\\ty'", "   ab|c  |007|ff|%|x\ty\n"),
        ("echo -n no-newline; echo", "no-newline\n"),
        ("printf '1\\n2\\n3\\n' | head -n 2; printf abc | head -c 1; echo", "1\n2\na\n"),
        ("head -c 5 /dev/zero | wc -c; cat /dev/null", "5\n"),
        ("printf 'a b\\nc\\n' | wc; printf 'a b\\nc\\n' | wc -w", "2 3 6\n3\n"),
        ("mkdir -p a/b && touch a/b/c && [ -f a/b/c ] && ls a/b && rm -r a && ls", "c\n"),
        ("touch .hidden x; ls; ls -a; ls -A", "x\n.\n..\n.hidden\nx\n.hidden\nx\n"),
        (
            "command -v cat; command -v cd; command -v nope || echo missing",
            "/usr/bin/cat\ncd\nmissing\n",
        ),
        ("A=1 sh -c 'echo $A'; echo ${A:-unset}", "1\nunset\n"),
        ("env -i B=2 sh -c 'echo $B $SPEC.'", "2 .\n"),
        ("export E=1; sh -c 'echo $E'; unset E; sh -c 'echo ${E:-gone}'", "1\ngone\n"),
        (
            "echo abc | sha256sum",
            "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb  -\n",
        ),
        ("echo first | { read a; echo got $a; }", "got first\n"),
        # read takes one line even when more arrive at once, and a line without end is cut
        ("{ sleep 0.1; printf 'a\\nb\\n'; } | { read x; read y; echo \"$x|$y\"; }", "a|b\n"),
        ("read x < /dev/zero; echo $?", "1\n"),
        ("printf 'a b c\\n' | { read x y; echo \"$y|$x\"; }", "b c|a\n"),
        ("printf '  lead  \\n' | { IFS= read -r l; echo \"[$l]\"; }", "[  lead  ]\n"),
        ("# a comment\necho after-comment # trailing", "after-comment\n"),
        ("/bin/echo via-path", "via-path\n"),
        ('x=$(echo "a  b"); echo "$x" $(printf "%s" c)$(echo d)', "a  b cd\n"),
        ("x=$(false); echo $?; x=$(true); echo $?", "1\n0\n"),
        ("echo ${unset-dflt} ${unset:+alt} ${e:=set}; echo $e ${e:+alt}", "dflt set\nset alt\n"),
        (
            'w="one two  three"; for x in $w; do printf "<%s>" "$x"; done; echo',
            "<one><two><three>\n",
        ),
        ('w="one two"; for x in "$w"; do printf "<%s>" "$x"; done; echo', "<one two>\n"),
        ("touch a.txt; echo *.txt", "*.txt\n"),  # no pathname expansion
        ("exec 2>&1; echo to-err >&2", "to-err\n"),
        (
            "[ a = a ] && [ 1 -lt 2 ] && [ -n x ] && [ -z '' ] && [ ! -e nope ] && test -e /tmp && echo ok",
            "ok\n",
        ),
        ("id -u; id -un; pwd", "0\nroot\n/workspace\n"),
    ],
)
async def test_shell_subset(sb: Sandbox, script: str, expected: str) -> None:
    code, out, err = await run(sb, script)
    assert (out, err) == (expected, "")
    assert code == 0


async def test_scripts_from_files(sb: Sandbox) -> None:
    await sb.write_file("s.sh", '#!/bin/sh\necho "script $1"; exit 9\n')
    assert await run(sb, "sh s.sh arg") == (9, "script arg\n", "")
    assert (await run(sb, ["./s.sh", "x"]))[0] == 126  # not executable
    assert (await sb.exec(["chmod", "+x", "s.sh"])).ok
    assert await run(sb, ["./s.sh", "x"]) == (9, "script x\n", "")
    assert (await run(sb, "sh missing.sh"))[0] == 2


async def test_chmod(sb: Sandbox) -> None:
    assert (await sb.exec("touch f; chmod 640 f; chmod u+x,o+r f; [ -x f ]")).ok
    assert (await sb.stat("f")).mode == 0o744
    assert (await sb.exec("chmod a-w,g=x f")).ok
    assert (await sb.stat("f")).mode == 0o514


async def test_unsupported_syntax_is_a_clear_error(sb: Sandbox) -> None:
    for script, message in [
        ("case x in x) echo;; esac", "'case' is not supported"),
        ("echo $((1 + 2))", "$((...)) is not supported"),
        ("if true; then echo", "'fi' expected"),
        ("cat <<EOF\nbody\nEOF", "here-documents are not supported"),
        ("echo `date`", "use $(...)"),
        ("f() { echo; }", "unexpected"),
        ("echo 'open", "unterminated"),
        ("echo ${x/a/b}", "bad substitution"),
        ("echo ${x#a}", "bad substitution"),
    ]:
        code, _, err = await run(sb, script)
        assert code == 2, script
        assert message in err, script


async def test_file_errors_inside_commands(sb: Sandbox) -> None:
    code, _, err = await run(sb, "cat nope")
    assert code == 1
    assert "nope: No such file or directory" in err
    await sb.mkdir("d")
    assert (await run(sb, "cat d"))[0] == 1
    assert (await run(sb, "echo x > no/such/dir/file"))[0] == 1
    assert (await run(sb, "mkdir d"))[0] == 1
    assert (await run(sb, "rm d"))[0] == 1
    assert (await run(sb, "rm -f nope; echo $?"))[1] == "0\n"
    assert (await run(sb, "cd nowhere"))[0] == 2
    with pytest.raises(FileNotFound):
        await sb.exec("pwd", cwd="/no/such")


async def test_pipelines_stream_and_end_early(sb: Sandbox) -> None:
    # An endless writer ends (SIGPIPE) once its reader is done; nothing is held whole.
    assert await run(sb, "while true; do echo y; done | head -n 2") == (0, "y\ny\n", "")
    tracemalloc.start()
    try:
        r = await sb.exec("head -c 30000000 /dev/zero | wc -c")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.stdout == "30000000\n"
    assert peak < 5_000_000, f"a pipe held {peak} bytes"
    r = await sb.exec("sh -c 'while true; do echo y; done' | head -n 1; echo ${?}")
    assert r.stdout == "y\n0\n"


async def test_the_script_of_a_stdin_shell_arrives_as_it_comes(sb: Sandbox) -> None:
    async with await sb.start("sh", stdin=True) as proc:
        await proc.write_stdin("x=1; if true\n")
        await proc.write_stdin("then echo in-if $x\nfi\n")
        seen = b""
        async for event in proc:
            seen += event.data
            if b"in-if 1\n" in seen:
                break
        await proc.write_stdin('while read line; do echo "got $line"; done\none\ntwo\n')
        await proc.close_stdin()
        result = await proc.wait()
    assert result.stdout.endswith("got one\ngot two\n")


async def test_background_jobs_wait_and_kill(sb: Sandbox) -> None:
    code, out, _ = await run(sb, "sleep 0.1 & p=$!; wait $p; echo waited; kill -0 $p || echo gone")
    assert (code, out) == (0, "waited\ngone\n")
    code, out, _ = await run(sb, "sleep 30 & kill $!; wait $!; echo $?; wait; echo done")
    assert (code, out) == (0, "143\ndone\n")
    assert (await run(sb, "cat & wait"))[0] == 0  # a job reads nothing: it does not block
    # background jobs end with the shell that started them
    await run(
        sb, "while true; do echo b >> bg; sleep 0.05; done & until [ -e bg ]; do sleep 0.01; done"
    )
    size = len(await sb.read_file("bg"))
    await anyio.sleep(0.3)
    assert len(await sb.read_file("bg")) == size


async def test_signals(sb: Sandbox) -> None:
    r = await sb.exec("kill -s KILL $$")
    assert (r.exit_code, r.signal) == (137, 9)
    r = await sb.exec("sh -c 'kill -INT $$'; echo child=$?")
    assert (r.exit_code, r.stdout) == (0, "child=130\n")
    r = await sb.exec("kill -BOGUS 1")
    assert r.exit_code == 2


async def test_a_busy_loop_ends_at_its_timeout(sb: Sandbox) -> None:
    # Every command is a point where the fake's cooperative processes can be cancelled.
    for script in ("while :; do :; done", "while true; do x=1; done"):
        with pytest.raises(CommandTimeout):
            await sb.exec(script, timeout=0.3)


async def test_endless_nesting_is_a_failure_not_a_crash(sb: Sandbox) -> None:
    await sb.write_file("self.sh", "sh self.sh\n")
    deep = "$(" * 400 + "echo" + ")" * 400
    for script in ('x=\'eval "$x"\'; eval "$x"', "sh self.sh", f"echo {deep}"):
        code, _, err = await run(sb, script)
        assert code == 2, script
        assert "nested too deeply" in err, script
    for script in ('eval "$x" | cat', 'eval "$x" & wait'):  # in a pipeline, in a job
        code, out, err = await run(sb, f"x='eval \"$x\"'; {script}; echo after")
        assert out == "after\n", script
        assert "nested too deeply" in err, script
    assert (await run(sb, "echo " + "$(echo " * 20 + "ok" + ")" * 20))[1] == "ok\n"


async def test_destroy_kills_running_commands(backend: FakeBackend) -> None:
    sb = await Sandbox.create(backend=backend)
    result: list[int | None] = []

    async def long_running() -> None:
        r = await sb.exec("sleep 30")
        result.append(r.exit_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_running)
        await anyio.sleep(0.1)
        await backend.destroy(sb.id)
    assert result == [137]


async def test_a_started_process_keeps_its_recent_output(sb: Sandbox) -> None:
    proc = await sb.start("head -c 20000000 /dev/zero; echo end")
    await proc.wait()
    again = await sb.attach(proc.ref)
    replayed = await again.wait()
    assert replayed.stdout_bytes.endswith(b"end\n")
    assert len(replayed.stdout_bytes) <= 8 * 1024 * 1024 + 64 * 1024


_arg = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(_arg, max_size=6))
async def test_positional_parameters_round_trip(sb: Sandbox, args: list[str]) -> None:
    r = await sb.exec(["sh", "-c", 'for a in "$@"; do printf "%s\\000" "$a"; done', "sh", *args])
    assert r.stdout_bytes.split(b"\x00")[:-1] == [a.encode() for a in args]


# -- files and search -------------------------------------------------------------------------


async def test_native_search_operations(backend: FakeBackend, sb: Sandbox) -> None:
    await sb.write_file("p/a.py", "import os\nprint('x')\n")
    await sb.write_file("p/sub/b.py", "print('y')\n")
    await sb.write_file("p/.git/config", "print\n")
    await sb.write_file("p/bin.dat", b"print\x00")
    root = sb.path("p")
    found = await backend.find(sb.id, root)
    assert found.paths == [f"{root}/a.py", f"{root}/bin.dat", f"{root}/sub/b.py"]
    assert (await backend.find(sb.id, root, limit=20)).truncated
    grep = await backend.grep(sb.id, r"pr.nt", root)
    assert [(m.path, m.line, m.text) for m in grep.matches] == [
        (f"{root}/a.py", 2, "print('x')"),
        (f"{root}/sub/b.py", 1, "print('y')"),
    ]
    assert (await backend.grep(sb.id, "print", root, limit=10)).truncated
    assert await backend.read_lines(sb.id, f"{root}/a.py", 2, None, max_bytes=5) == b"print"
    assert await backend.realpath(sb.id, [f"{root}/sub/../a.py"]) == [f"{root}/a.py"]


# -- worlds and expiry ------------------------------------------------------------------------


async def test_worlds(backend: FakeBackend) -> None:
    sb = await Sandbox.create(backend=backend)
    try:
        twin = FakeBackend(backend.options)
        assert (await twin.connect(sb.id)).id == sb.id
        named = FakeBackend(FakeOptions(world=backend.fake_options.world))
        assert [i.id for i in await named.list()] == [sb.id]
        stranger = FakeBackend()
        assert await stranger.list() == []
        with pytest.raises(SandboxNotFound):
            await stranger.connect(sb.id)
    finally:
        await sb.destroy()


async def test_a_sandbox_ends_by_itself_at_its_ttl(backend: FakeBackend) -> None:
    sb = await Sandbox.create(backend=backend, ttl_seconds=0.2)
    assert [i.id for i in await backend.list()] == [sb.id]
    await anyio.sleep(0.3)
    assert await backend.list() == []
    with pytest.raises(SandboxNotFound):
        await sb.exec("true")
    await sb.destroy()


async def test_user_is_unsupported(sb: Sandbox) -> None:
    with pytest.raises(Unsupported):
        await sb.exec("id", user="nobody")


# -- the agent toolkit runs on the fake -------------------------------------------------------


async def test_toolkit_runs_on_the_fake(sb: Sandbox) -> None:
    """Agent code using ToolKit can be tested against FakeBackend: every tool works, and the
    bash tool keeps one shell process (the fake streams stdin)."""
    from agent_sandbox.tools import ToolKit

    tk = ToolKit(sb)
    first = await tk.run("bash", {"command": "echo hello; cd /tmp; export FOO=bar"})
    assert (first.content, first.is_error) == ("hello", False)
    second = await tk.run("bash", {"command": "pwd; echo $FOO"})
    assert second.content == "/tmp\nbar"
    syntax = await tk.run("bash", {"command": "echo 'open"})
    assert "unterminated" in str(syntax.content)
    assert (await tk.run("bash", {"command": "echo $FOO"})).content == "bar"  # the shell lives on
    ended = await tk.run("bash", {"command": "exit 3"})
    assert "the shell exited" in str(ended.content)
    assert (await tk.run("bash", {"command": "pwd"})).content == sb.info.workdir
    wrote = await tk.run("write", {"file_path": "src/a.py", "content": "print('hi')\nx = 1\n"})
    assert not wrote.is_error
    edited = await tk.run(
        "edit", {"file_path": "src/a.py", "old_string": "x = 1", "new_string": "x = 2"}
    )
    assert not edited.is_error
    assert await sb.read_text("src/a.py") == "print('hi')\nx = 2\n"
    read = await tk.run("read", {"file_path": "src/a.py"})
    assert "x = 2" in str(read.content)
    found = await tk.run("glob", {"pattern": "**/*.py"})
    assert found.content == sb.path("src/a.py")
    grep = await tk.run("grep", {"pattern": "pr.nt"})
    assert grep.content == sb.path("src/a.py") + ":1:print('hi')"
    late = await tk.run("bash", {"command": "sleep 30", "timeout_ms": 200})
    assert late.is_error
    assert "timed out" in str(late.content)
