"""FakeBackend's own behaviour: scripted commands, its shell, worlds, expiry.

(The conformance suite runs against it in test_fake_conformance.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sandbox import Sandbox, SandboxNotFound
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
        await ctx.write_stdout(f"args={ctx.argv[1:]} stdin={ctx.read_stdin()!r}\n")
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
    async def fake_ls(ctx: CommandContext) -> int:
        await ctx.write_stdout("scripted\n")
        return 0

    backend.register_command("ls", fake_ls)
    assert (await run(sb, "ls"))[1] == "scripted\n"


async def test_unknown_command(sb: Sandbox) -> None:
    code, out, err = await run(sb, "no-such-tool --flag")
    assert (code, out) == (127, "")
    assert "no-such-tool: command not found" in err
    assert (await run(sb, ["no-such-tool"]))[0] == 127
    assert (await run(sb, "./missing.sh"))[0] == 127


# -- the shell --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo 'single $X' \"double $SPEC\" bare\\ space", "single $X double s bare space\n"),
        ('X=1; Y="$X 2"; echo "$Y" ${Z:-dflt} ${X}', "1 2 dflt 1\n"),
        ("false; echo $?; true && echo yes || echo no", "1\nyes\n"),
        ("false || echo rescued; false && echo never; echo end", "rescued\nend\n"),
        ("printf 'a\\nb\\nc\\n' | wc -l", "3\n"),
        ("echo one > f; echo two >> f; cat < f", "one\ntwo\n"),
        ("ls missing 2>/dev/null; echo $?", "2\n"),
        ("(echo sub 1>&2) 2>&1", "sub\n"),
        ("if [ -d /tmp ]; then echo dir; elif true; then echo no; else echo no; fi", "dir\n"),
        ("i=0; while [ $i -lt 3 ]; do echo $i; i=3; done", "0\n"),
        ("n=x; until [ $n = xxx ]; do n=${n}x; done; echo $n", "xxx\n"),
        ("for w in a 'b c'; do printf '<%s>' \"$w\"; done; echo", "<a><b c>\n"),
        ("cd /tmp; (cd /; pwd); pwd", "/\n/tmp\n"),
        ("V=out; (V=in; exit 3); echo $? $V", "3 out\n"),
        ("{ echo a; echo b; } > g; cat g", "a\nb\n"),
        ("sh -c 'echo $0 $1 $# \"$@\"' name x 'y z'", "name x 2 x y z\n"),
        ("printf '%s-%d|' a 1 b 2; echo", "a-1|b-2|\n"),
        ("printf '%5s|%-3s|%03d\\n' ab c 7", "   ab|c  |007\n"),
        ("echo -n no-newline; echo", "no-newline\n"),
        ("seq 3 | tail -n 1; seq 2 2 6 | head -n 1", "3\n2\n"),
        ("head -c 5 /dev/zero | wc -c; cat /dev/null", "5\n"),
        ("mkdir -p a/b && touch a/b/c && ls a/b && rm -r a && ls", "c\n"),
        ("echo x > f1; cp f1 f2; mv f2 f3; cat f3; ls", "x\nf1\nf3\n"),
        ("basename /a/b.txt .txt; dirname /a/b.txt", "b\n/a\n"),
        ("command -v cat; command -v nope || echo missing", "/usr/bin/cat\nmissing\n"),
        ("A=1 printenv A; printenv A || echo not-kept", "1\nnot-kept\n"),
        ("env B=2 printenv B SPEC", "2\ns\n"),
        ("export E=1; printenv E; unset E; printenv E || echo unset", "1\nunset\n"),
        (
            "echo abc | sha256sum",
            "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb  -\n",
        ),
        ("echo abc | md5sum", "0bee89b07a248e27c83fc3d5951213c1  -\n"),
        ("echo first | { read a; echo got $a; }", "got first\n"),
        ("# a comment\necho after-comment # trailing", "after-comment\n"),
        ("/bin/echo via-path", "via-path\n"),
        ('x=$(echo "a  b"); echo "$x" $(printf "%s" c)`echo d`', "a  b cd\n"),
        ("x=$(false); echo $?; x=$(true); echo $?", "1\n0\n"),
        ("echo $((1 + 2 * 3)) $((7 / 2)) $((-7 % 3)) $((2 ** 4 > 10))", "7 3 -1 1\n"),
        ("i=0; while [ $i -lt 3 ]; do i=$((i+1)); done; echo $i", "3\n"),
        (
            "v=path/to/file.tar.gz; echo ${v%.*} ${v%%.*} ${v#*/} ${v##*/} ${#v}",
            "path/to/file.tar path/to/file to/file.tar.gz file.tar.gz 19\n",
        ),
        ("echo ${unset-dflt} ${unset:+alt} ${e:=set}; echo $e", "dflt set\nset\n"),
        (
            'w="one two  three"; for x in $w; do printf "<%s>" "$x"; done; echo',
            "<one><two><three>\n",
        ),
        ('w="one two"; for x in "$w"; do printf "<%s>" "$x"; done; echo', "<one two>\n"),
        (
            "case abc.py in *.txt) echo text;; *.py|*.pyw) echo python;; *) echo other;; esac",
            "python\n",
        ),
        ("case x in y) echo no;; esac; echo $?", "0\n"),
        ('f() { echo "in f: $1 $#"; return 3; }; f a b; echo $?', "in f: a 2\n3\n"),
        ("add() { echo $(( $1 + $2 )); }; add 2 3", "5\n"),
        (
            "touch b.txt a.txt c.md; echo *.txt; echo nomatch*; echo '*.txt'",
            "a.txt b.txt\nnomatch*\n*.txt\n",
        ),
        ("mkdir -p d/e; touch d/e/x.py d/y.py; ls d/*.py d/*/*.py", "d/y.py\nd/e/x.py\n"),
        ("eval 'a=1; echo $a'; cmd='echo hi'; eval $cmd", "1\nhi\n"),
        ("echo 'v=42' > env.sh; . ./env.sh; echo $v", "42\n"),
        ("trap 'echo bye' EXIT; echo hi", "hi\nbye\n"),
        ("sh -c 'trap \"echo cleanup\" EXIT; exit 4'; echo $?", "cleanup\n4\n"),
        ("set -- x y z; echo $#; shift; echo $@", "3\ny z\n"),
        ("for i in 1 2 3 4; do [ $i = 3 ] && break; echo $i; done", "1\n2\n"),
        ("for i in 1 2 3; do [ $i = 2 ] && continue; echo $i; done", "1\n3\n"),
        ("export A=1; B=2; sh -c 'echo ${A:-none} ${B:-none}'", "1 none\n"),
        ("exec 2>&1; echo to-err >&2", "to-err\n"),
        ("printf 'b\\na\\nb\\n' | sort | uniq -c", "      1 a\n      2 b\n"),
        ("printf 'x10\\nx9\\n' | sort -r; printf '10\\n9\\n' | sort -n", "x9\nx10\n9\n10\n"),
        ("echo Hello | tr a-z A-Z; echo 'a-b' | tr -d -", "HELLO\nab\n"),
        ("echo hi | tee t1 > /dev/null; cat t1", "hi\n"),
        ("realpath -m ./x/../y; readlink -f /a//b", "/workspace/y\n/a/b\n"),
        (
            "printf 'l\\nIN\\n' > g.txt; grep -n in g.txt; grep -ci IN g.txt; grep -q zz g.txt || echo none",
            "1\nnone\n",
        ),
    ],
)
async def test_shell_subset(sb: Sandbox, script: str, expected: str) -> None:
    code, out, err = await run(sb, script)
    assert (out, err) == (expected, "")
    assert code == 0


async def test_find_and_grep(sb: Sandbox) -> None:
    await sb.write_file("p/a.py", "import os\nprint('x')\n")
    await sb.write_file("p/sub/b.py", "print('y')\n")
    await sb.write_file("p/.git/config", "print\n")
    await sb.write_file("p/bin.dat", b"print\x00")
    r = await sb.exec("find p -name .git -prune -o \\( -type f -o -type l \\) -print0")
    assert sorted(r.stdout.split("\0")[:-1]) == ["p/a.py", "p/bin.dat", "p/sub/b.py"]
    assert (await sb.exec("find p -maxdepth 1 -type d")).stdout == "p\np/.git\np/sub\n"
    assert (
        await sb.exec("find p -name '*.py' -exec cat {} +")
    ).stdout == "import os\nprint('x')\nprint('y')\n"
    r = await sb.exec(["grep", "-rnHIEZ", "--exclude-dir=.git", "-s", "-e", "pr.nt", "--", "p"])
    assert r.stdout == "p/a.py\x002:print('x')\np/sub/b.py\x001:print('y')\n"
    r = await sb.exec("grep -rl print p | sort")
    assert r.stdout == "p/.git/config\np/a.py\np/bin.dat\np/sub/b.py\n"
    assert (await sb.exec("grep nothing p/a.py")).exit_code == 1
    assert (await sb.exec("grep x missing.txt")).exit_code == 2


async def test_scripts_from_files(sb: Sandbox) -> None:
    await sb.write_file("s.sh", 'echo "script $1"; exit 9\n')
    assert await run(sb, "sh s.sh arg") == (9, "script arg\n", "")
    assert await run(sb, ["./s.sh", "x"]) == (9, "script x\n", "")
    assert (await run(sb, "sh missing.sh"))[0] == 2


async def test_unsupported_syntax_is_a_clear_error(sb: Sandbox) -> None:
    code, _, err = await run(sb, "cat <<EOF\nx\nEOF")
    assert code == 2
    assert "here-documents are not supported" in err
    code, _, err = await run(sb, "if true; then echo")
    assert code == 2
    assert "fi" in err


async def test_file_errors_inside_commands(sb: Sandbox) -> None:
    code, _, err = await run(sb, "cat nope")
    assert code == 1
    assert "No such file or directory" in err
    await sb.mkdir("d")
    assert (await run(sb, "cat d"))[0] == 1
    assert (await run(sb, "echo x > no/such/dir/file"))[0] == 1
    assert (await run(sb, "pwd", cwd="/no/such"))[0] == 2


async def test_background_jobs_wait_and_kill(sb: Sandbox) -> None:
    code, out, _ = await run(sb, "sleep 0.1 & p=$!; wait $p; echo waited; kill -0 $p || echo gone")
    assert (code, out) == (0, "waited\ngone\n")
    code, out, _ = await run(sb, "sleep 30 & kill $!; wait; echo done")
    assert (code, out) == (0, "done\n")
    # background jobs end with the command that started them
    await run(sb, "while true; do echo b >> bg; sleep 0.05; done & echo started")
    size = len(await sb.read_file("bg"))
    await anyio.sleep(0.3)
    assert len(await sb.read_file("bg")) == size


async def test_signals(sb: Sandbox) -> None:
    r = await sb.exec("kill -s KILL $$")
    assert (r.exit_code, r.signal) == (137, 9)
    r = await sb.exec("sh -c 'kill -INT $$'; echo child=$?")
    assert (r.exit_code, r.stdout) == (0, "child=130\n")


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


_arg = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(_arg, max_size=6))
async def test_positional_parameters_round_trip(sb: Sandbox, args: list[str]) -> None:
    r = await sb.exec(["sh", "-c", 'for a in "$@"; do printf "%s\\000" "$a"; done', "sh", *args])
    assert r.stdout_bytes.split(b"\x00")[:-1] == [a.encode() for a in args]


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
    from agent_sandbox import Unsupported

    with pytest.raises(Unsupported):
        await sb.exec("id", user="nobody")


# -- the agent toolkit runs on the fake -------------------------------------------------------


async def test_toolkit_runs_on_the_fake(sb: Sandbox) -> None:
    """Agent code using ToolKit can be tested against FakeBackend: every tool works."""
    from agent_sandbox.tools import ToolKit

    tk = ToolKit(sb)
    first = await tk.run("bash", {"command": "echo hello; cd /tmp; export FOO=bar"})
    assert (first.content, first.is_error) == ("hello", False)
    second = await tk.run("bash", {"command": "pwd; echo $FOO"})
    assert second.content == "/tmp\nbar"
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
