"""The ToolKit's built-in tools, run for real: the local backend in both isolation modes, and a
Docker subset when an engine answers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit, ToolResult

DOCKER_IMAGE = "agent-sandbox/debian-python:bookworm"
BUSYBOX_IMAGE = "agent-sandbox/busybox:latest"
DOCKER_LABEL = "agent-sandbox.test-run"
DOCKER_RUN = uuid.uuid4().hex[:12]


def _docker_problem() -> str | None:
    try:
        import docker

        client = docker.APIClient(version="auto", timeout=10)
        client.ping()
        client.inspect_image(DOCKER_IMAGE)
    except Exception as exc:
        return f"no Docker engine with {DOCKER_IMAGE} answers ({type(exc).__name__}: {exc})"
    return None


def _remove_docker_leftovers() -> None:
    if _docker_problem() is not None:
        return
    import docker

    client = docker.APIClient(version="auto", timeout=10)
    for row in client.containers(all=True, filters={"label": f"{DOCKER_LABEL}={DOCKER_RUN}"}):
        with contextlib.suppress(Exception):
            client.remove_container(row["Id"], force=True)


@pytest.fixture(scope="module", autouse=True)
def _docker_cleanup() -> Iterator[None]:
    yield
    _remove_docker_leftovers()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _local_backend(root: Path, isolation: str) -> LocalBackend:
    backend = LocalBackend(LocalOptions(root=root, isolation=isolation))  # type: ignore[arg-type]
    if isolation == "bwrap" and backend.isolation != "bwrap":
        pytest.skip("bubblewrap cannot build a jail on this host")
    return backend


async def _open(kind: str, tmp_path: Path) -> Sandbox:
    if kind in ("docker", "busybox"):
        problem = _docker_problem()
        if problem is not None:
            pytest.skip(problem)
        from agent_sandbox_docker import DockerBackend

        return await Sandbox.create(
            backend=DockerBackend(),
            image=DOCKER_IMAGE if kind == "docker" else BUSYBOX_IMAGE,
            labels={DOCKER_LABEL: DOCKER_RUN},
        )
    return await Sandbox.create(backend=_local_backend(tmp_path / "root", kind))


@pytest.fixture(params=["bwrap", "none"])
async def sb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A local sandbox, in each isolation mode."""
    sandbox = await _open(request.param, tmp_path)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await sandbox.backend.aclose()


@pytest.fixture(params=["bwrap", "none", "docker"])
async def any_sb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A sandbox on every backend these tests cover (Docker skipped, saying why, without engine)."""
    sandbox = await _open(request.param, tmp_path)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await sandbox.backend.aclose()


async def run_ok(kit: ToolKit, name: str, args: dict[str, Any]) -> str:
    result = await kit.run(name, args)
    assert not result.is_error, result.content
    return result.content


# -- bash ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bash_state_persists_between_calls(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    await run_ok(kit, "bash", {"command": "mkdir -p sub/dir && cd sub/dir"})
    await run_ok(kit, "bash", {"command": "export GREETING='hello world'; plain=42"})
    await run_ok(kit, "bash", {"command": 'shout() { echo "$1!"; }'})
    out = await run_ok(kit, "bash", {"command": 'pwd; echo "$GREETING"; echo $plain; shout hey'})
    lines = out.splitlines()
    assert lines[0].endswith("/sub/dir")
    assert lines[1:] == ["hello world", "42", "hey!"]
    # the exported variable reaches child processes too
    assert await run_ok(kit, "bash", {"command": "sh -c 'echo $GREETING'"}) == "hello world"


@pytest.mark.anyio
async def test_bash_output_exit_code_and_stderr(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    result = await kit.run("bash", {"command": "echo out; echo err >&2; (exit 3)"})
    assert not result.is_error
    assert result.content == "out\nerr\n[exit code: 3]"
    assert (await kit.run("bash", {"command": "true"})).content == "(no output)"
    # a multi-line script with a heredoc and quotes arrives intact
    script = "cat <<'EOF'\nsingle ' and double \" quotes, $HOME stays literal\nEOF"
    out = await run_ok(kit, "bash", {"command": script})
    assert out == "single ' and double \" quotes, $HOME stays literal"


@pytest.mark.anyio
async def test_bash_exit_ends_the_shell_and_the_next_call_gets_a_new_one(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    await run_ok(kit, "bash", {"command": "cd /tmp"})
    ended = await run_ok(kit, "bash", {"command": "echo bye; exit 4"})
    assert ended.startswith("bye\n")
    assert ended.endswith("[exit code: 4]")
    if any_sb.backend.capabilities.stdin_streaming:  # one long-lived shell: it has ended
        assert "[the shell exited; the next command starts a new one]" in ended
    assert (await run_ok(kit, "bash", {"command": "echo again"})) == "again"


@pytest.mark.anyio
async def test_bash_restart_gives_a_fresh_shell(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    start = await run_ok(kit, "bash", {"command": "pwd"})
    await run_ok(kit, "bash", {"command": "mkdir -p elsewhere && cd elsewhere; export X=1"})
    assert await run_ok(kit, "bash", {"command": "echo ${X:-unset}"}) == "1"
    out = await run_ok(kit, "bash", {"restart": True})
    assert "restarted" in out
    assert await run_ok(kit, "bash", {"command": "pwd; echo ${X:-unset}"}) == f"{start}\nunset"
    # restart and a command in the same call
    await run_ok(kit, "bash", {"command": "export Y=2"})
    out = await run_ok(kit, "bash", {"restart": True, "command": "echo ${Y:-unset}"})
    assert out.endswith("unset")


@pytest.mark.anyio
async def test_bash_timeout_kills_and_restarts(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    await run_ok(kit, "bash", {"command": "export KEEP=1"})
    nap = f"sleep 30.{uuid.uuid4().int % 10**6:06d}"  # a command line no one else runs
    result = await kit.run(
        "bash", {"command": f"echo started; {nap}; echo never", "timeout_ms": 1500}
    )
    assert result.is_error
    assert "started" in result.content
    assert "never" not in result.content
    assert "timed out after 1500 ms" in result.content
    assert "restarted" in result.content
    # the killed command is gone, and the shell is fresh
    assert await run_ok(kit, "bash", {"command": "echo ${KEEP:-unset}"}) == "unset"
    procs = await run_ok(kit, "bash", {"command": "ps -eo args 2>/dev/null || true"})
    assert nap not in procs


@pytest.mark.anyio
async def test_a_cancelled_bash_call_ends_its_shell_and_the_next_call_gets_a_fresh_one(
    any_sb: Sandbox,
) -> None:
    kit = ToolKit(any_sb)
    await run_ok(kit, "bash", {"command": "export KEEP=1"})
    nap = f"sleep 30.{uuid.uuid4().int % 10**6:06d}"  # a command line no one else runs
    with anyio.move_on_after(1.5) as scope:
        await kit.run("bash", {"command": f"echo started; {nap}"})
    assert scope.cancelled_caught
    out = await run_ok(kit, "bash", {"command": "echo ${KEEP:-unset}"})
    assert out == "unset", (
        "the call after a cancelled one runs in a fresh shell, saying nothing else"
    )
    procs = await run_ok(kit, "bash", {"command": "ps -eo args 2>/dev/null || true"})
    assert nap not in procs, "the cancelled call's command still runs"


@pytest.mark.anyio
async def test_bash_output_is_cut_to_the_budget_with_the_full_output_saved(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb, output_budget=2_000)
    result = await kit.run("bash", {"command": "seq 1 20000"})
    assert not result.is_error
    assert result.truncated
    assert len(result.content) <= 2_000
    full = "\n".join(str(n) for n in range(1, 20001))
    assert result.content.startswith("1\n2\n3\n")
    assert result.content.rstrip().endswith("19999\n20000")  # the tail is kept too
    assert f"of {len(full)} characters cut from the middle" in result.content
    assert result.full_output_path is not None
    assert result.full_output_path in result.content
    saved = await any_sb.read_text(result.full_output_path)
    assert saved == full


@pytest.mark.anyio
async def test_bash_without_command_is_an_error(sb: Sandbox) -> None:
    kit = ToolKit(sb)
    result = await kit.run("bash", {})
    assert result.is_error
    assert "no command" in result.content


# -- read / write / edit ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_write_then_read_numbered_lines_and_ranges(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    content = "".join(f"line {n}\n" for n in range(1, 11))
    out = await run_ok(kit, "write", {"file_path": "notes/a.txt", "content": content})
    assert f"wrote {len(content)} bytes (10 lines)" in out
    assert await any_sb.read_text("notes/a.txt") == content
    whole = await run_ok(kit, "read", {"file_path": "notes/a.txt"})
    assert whole.splitlines()[0] == "     1\tline 1"
    assert whole.splitlines()[9] == "    10\tline 10"
    part = await run_ok(kit, "read", {"file_path": "notes/a.txt", "view_range": [3, 4]})
    assert part == "[lines 3-4 of 10]\n     3\tline 3\n     4\tline 4"
    tail = await run_ok(kit, "read", {"file_path": "notes/a.txt", "view_range": [9, -1]})
    assert tail.splitlines()[1:] == ["     9\tline 9", "    10\tline 10"]
    past = await kit.run("read", {"file_path": "notes/a.txt", "view_range": [11, -1]})
    assert past.is_error
    assert "has 10 lines" in past.content


@pytest.mark.anyio
async def test_read_binary_missing_and_directory(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    await any_sb.write_file("blob.bin", bytes(range(256)) * 4)
    binary = await kit.run("read", {"file_path": "blob.bin"})
    assert not binary.is_error
    assert "binary file (1024 bytes)" in binary.content
    missing = await kit.run("read", {"file_path": "nope.txt"})
    assert missing.is_error
    assert "file not found" in missing.content
    await any_sb.mkdir("adir")
    directory = await kit.run("read", {"file_path": "adir"})
    assert directory.is_error
    assert "is a directory" in directory.content
    await any_sb.write_file("empty.txt", b"")
    assert "is empty" in await run_ok(kit, "read", {"file_path": "empty.txt"})


@pytest.mark.anyio
async def test_read_of_a_long_file_is_cut_with_a_note(sb: Sandbox) -> None:
    kit = ToolKit(sb, output_budget=1_000)
    await sb.write_file("long.txt", "".join(f"row {n}\n" for n in range(5000)))
    result = await kit.run("read", {"file_path": "long.txt"})
    assert result.truncated
    assert result.content.startswith("     1\trow 0\n")
    assert "cut from the end" in result.content
    assert result.full_output_path is not None
    saved = await sb.read_text(result.full_output_path)
    assert saved.splitlines()[-1] == "  5000\trow 4999"


@pytest.mark.anyio
async def test_edit_replaces_exactly_once_or_fails_clearly(any_sb: Sandbox) -> None:
    kit = ToolKit(any_sb)
    await any_sb.write_file("code.py", "a = 1\nb = 2\na = 1\n")
    missing = await kit.run(
        "edit", {"file_path": "code.py", "old_string": "c = 3", "new_string": "c = 4"}
    )
    assert missing.is_error
    assert "not found" in missing.content
    twice = await kit.run(
        "edit", {"file_path": "code.py", "old_string": "a = 1", "new_string": "a = 9"}
    )
    assert twice.is_error
    assert "occurs 2 times" in twice.content
    assert await any_sb.read_text("code.py") == "a = 1\nb = 2\na = 1\n"  # untouched
    once = await run_ok(
        kit, "edit", {"file_path": "code.py", "old_string": "b = 2", "new_string": "b = 3"}
    )
    assert "replaced 1 occurrence" in once
    assert "     2\tb = 3" in once
    assert await any_sb.read_text("code.py") == "a = 1\nb = 3\na = 1\n"
    every = await run_ok(
        kit,
        "edit",
        {"file_path": "code.py", "old_string": "a = 1", "new_string": "a = 0", "replace_all": True},
    )
    assert "replaced 2 occurrences" in every
    assert await any_sb.read_text("code.py") == "a = 0\nb = 3\na = 0\n"


@pytest.mark.anyio
async def test_edit_refuses_empty_identical_missing_and_binary(sb: Sandbox) -> None:
    kit = ToolKit(sb)
    await sb.write_file("f.txt", "x\n")
    for args, expect in (
        ({"old_string": "", "new_string": "y"}, "old_string is empty"),
        ({"old_string": "x", "new_string": "x"}, "identical"),
    ):
        result = await kit.run("edit", {"file_path": "f.txt", **args})
        assert result.is_error
        assert expect in result.content
    gone = await kit.run("edit", {"file_path": "gone.txt", "old_string": "a", "new_string": "b"})
    assert gone.is_error
    assert "file not found" in gone.content
    await sb.write_file("b.bin", b"\x00\x01abc")
    binary = await kit.run("edit", {"file_path": "b.bin", "old_string": "abc", "new_string": "x"})
    assert binary.is_error
    assert "binary" in binary.content


# -- confinement ------------------------------------------------------------------------------


@pytest.fixture
async def confined(any_sb: Sandbox) -> ToolKit:
    await any_sb.write_file("outside.txt", "secret\n")
    await any_sb.write_file("project/inside.txt", "fine\n")
    setup = await any_sb.exec(
        "ln -s ../outside.txt project/link-out && ln -s .. project/up && "
        "ln -s inside.txt project/link-in"
    )
    assert setup.ok, setup.stderr
    return ToolKit(any_sb, workdir="project")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    ["../outside.txt", "link-out", "up/outside.txt", "sub/../../outside.txt", "/etc/passwd"],
)
async def test_confinement_refuses_reads_outside_the_workdir(confined: ToolKit, path: str) -> None:
    result = await confined.run("read", {"file_path": path})
    assert result.is_error
    assert "outside the working directory" in result.content
    assert "secret" not in result.content


@pytest.mark.anyio
async def test_confinement_covers_every_file_tool(confined: ToolKit) -> None:
    sandbox = confined.sandbox
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("write", {"file_path": "../escaped.txt", "content": "x"}),
        ("write", {"file_path": "up/escaped.txt", "content": "x"}),
        ("edit", {"file_path": "link-out", "old_string": "secret", "new_string": "pwned"}),
        ("glob", {"pattern": "*.txt", "path": ".."}),
        ("glob", {"pattern": "../*.txt"}),
        ("grep", {"pattern": "secret", "path": "up"}),
        ("grep", {"pattern": "secret", "path": "/"}),
    ]
    for name, args in attempts:
        result = await confined.run(name, args)
        assert result.is_error, (name, args, result)
        assert "outside the working directory" in result.content
    assert not await sandbox.exists("escaped.txt")
    assert await sandbox.read_text("outside.txt") == "secret\n"
    # inside is fine, including a symlink that stays inside
    assert "fine" in await run_ok(confined, "read", {"file_path": "link-in"})
    assert "fine" in await run_ok(confined, "read", {"file_path": "inside.txt"})
    await run_ok(confined, "write", {"file_path": "new/deep.txt", "content": "ok\n"})
    assert await sandbox.read_text("project/new/deep.txt") == "ok\n"
    # bash is not confined by path, and starts in the workdir
    out = await run_ok(confined, "bash", {"command": "pwd; cat ../outside.txt"})
    assert out.splitlines()[0].endswith("/project")
    assert out.splitlines()[1] == "secret"


# -- glob / grep --------------------------------------------------------------------------------


@pytest.fixture(params=["bwrap", "none", "docker", "busybox"])
async def search_sb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    """Every backend, plus a busybox image (no bash, no GNU grep, no python) for the fallbacks."""
    sandbox = await _open(request.param, tmp_path)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await sandbox.backend.aclose()


@pytest.fixture
async def tree(search_sb: Sandbox) -> Sandbox:
    any_sb = search_sb
    files = {
        "src/app.py": "import os\nprint('hello')\n",
        "src/util/helpers.py": "def helper():\n    return 'hello'\n",
        "src/util/data.json": '{"hello": 1}\n',
        "src/web/index.ts": "console.log('hi')\n",
        "src/web/view.tsx": "export const hello = 1\n",
        "README.md": "# Hello project\n",
        ".hidden/config.py": "HELLO = True\n",
        ".git/objects/x.py": "hello in git\n",
    }
    for path, text in files.items():
        await any_sb.write_file(path, text)
    await any_sb.write_file("src/blob.bin", b"hello\x00\x01binary")
    return any_sb


@pytest.mark.anyio
async def test_glob_patterns(tree: Sandbox) -> None:
    kit = ToolKit(tree)
    base = tree.info.workdir.rstrip("/")

    async def names(args: dict[str, Any]) -> list[str]:
        out = await run_ok(kit, "glob", args)
        return [line.removeprefix(base + "/") for line in out.splitlines()]

    assert await names({"pattern": "**/*.py"}) == [
        ".hidden/config.py",
        "src/app.py",
        "src/util/helpers.py",
    ]
    assert await names({"pattern": "src/*.py"}) == ["src/app.py"]
    assert await names({"pattern": "src/**/*.{ts,tsx}"}) == ["src/web/index.ts", "src/web/view.tsx"]
    assert await names({"pattern": "*.py", "path": "src/util"}) == ["src/util/helpers.py"]
    assert await names({"pattern": f"{base}/src/util/*"}) == [
        "src/util/data.json",
        "src/util/helpers.py",
    ]
    assert await names({"pattern": "**/h?lpers.py"}) == ["src/util/helpers.py"]
    none = await run_ok(kit, "glob", {"pattern": "**/*.rs"})
    assert none.startswith("no files match")
    missing = await kit.run("glob", {"pattern": "*", "path": "nowhere"})
    assert missing.is_error
    assert "not found" in missing.content


@pytest.mark.anyio
async def test_glob_results_are_capped(sb: Sandbox) -> None:
    made = await sb.exec("mkdir many && cd many && for i in $(seq 1 1100); do : > f$i.txt; done")
    assert made.ok, made.stderr
    out = await run_ok(ToolKit(sb, output_budget=500_000), "glob", {"pattern": "many/*.txt"})
    lines = out.splitlines()
    assert len(lines) == 1001
    assert lines[-1] == "[100 more matches not shown; narrow the pattern]"
    assert lines[:-1] == sorted(lines[:-1])


@pytest.mark.anyio
async def test_grep_finds_sorted_matches(tree: Sandbox) -> None:
    kit = ToolKit(tree)
    base = tree.info.workdir.rstrip("/")
    out = await run_ok(kit, "grep", {"pattern": "hel+o"})
    rows = [line.removeprefix(base + "/") for line in out.splitlines()]
    assert rows == [
        "src/app.py:2:print('hello')",
        'src/util/data.json:1:{"hello": 1}',
        "src/util/helpers.py:2:    return 'hello'",
        "src/web/view.tsx:1:export const hello = 1",
    ]  # binary files and .git are skipped; case-sensitive
    one = await run_ok(kit, "grep", {"pattern": "^def ", "path": "src/util/helpers.py"})
    assert one == f"{base}/src/util/helpers.py:1:def helper():"
    nothing = await run_ok(kit, "grep", {"pattern": "zzz+"})
    assert nothing.startswith("no matches")
    bad = await kit.run("grep", {"pattern": "(", "path": "src"})
    assert bad.is_error
    missing = await kit.run("grep", {"pattern": "x", "path": "nowhere"})
    assert missing.is_error
    assert "not found" in missing.content


# -- errors as results ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bad_input_and_unknown_tools_are_error_results(sb: Sandbox) -> None:
    kit = ToolKit(sb)
    cases: list[tuple[str, Any, str]] = [
        ("read", {}, "file_path: Field required"),
        ("read", {"file_path": 3}, "file_path"),
        ("read", {"file_path": "a", "view_range": [5, 2]}, "end must be >= start"),
        ("read", {"file_path": "a", "view_range": [1]}, "view_range"),
        ("write", {"file_path": "a", "content": "x", "mode": "w"}, "mode: Extra inputs"),
        ("bash", {"command": "true", "timeout_ms": -1}, "timeout_ms"),
        ("bash", ["not", "an", "object"], "must be a JSON object"),
        ("nope", {}, "unknown tool 'nope'"),
        ("read", {"file_path": ""}, "invalid path"),
    ]
    for name, args, expect in cases:
        result = await kit.run(name, args)
        assert isinstance(result, ToolResult)
        assert result.is_error, (name, args)
        assert expect in result.content, (name, args, result.content)


@pytest.mark.anyio
async def test_a_dead_sandbox_is_an_error_result(tmp_path: Path) -> None:
    sandbox = await Sandbox.create(backend=_local_backend(tmp_path / "root", "none"))
    kit = ToolKit(sandbox)
    try:
        await sandbox.backend.destroy(sandbox.id)
        for name, args in (
            ("bash", {"command": "echo hi"}),
            ("read", {"file_path": "x"}),
            ("write", {"file_path": "x", "content": "y"}),
            ("glob", {"pattern": "*"}),
        ):
            result = await kit.run(name, args)
            assert result.is_error
            assert "sandbox is gone" in result.content, result.content
    finally:
        await sandbox.destroy()
        await sandbox.backend.aclose()


# -- glue -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_handle_anthropic_with_sdk_objects_and_dicts(sb: Sandbox) -> None:
    from anthropic.types import ToolUseBlock

    kit = ToolKit(sb)
    block = ToolUseBlock(id="toolu_01", type="tool_use", name="bash", input={"command": "echo sdk"})
    assert await kit.handle_anthropic(block) == {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "sdk",
        "is_error": False,
    }
    as_dict = {"type": "tool_use", "id": "toolu_02", "name": "read", "input": {"file_path": "x"}}
    reply = await kit.handle_anthropic(as_dict)
    assert reply["tool_use_id"] == "toolu_02"
    assert reply["is_error"] is True


@pytest.mark.anyio
async def test_handle_openai_chat_and_responses_shapes(sb: Sandbox) -> None:
    from openai.types.chat import ChatCompletionMessageToolCall
    from openai.types.responses import ResponseFunctionToolCall

    kit = ToolKit(sb)
    call = ChatCompletionMessageToolCall.model_validate(
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "bash", "arguments": '{"command": "echo chat"}'},
        }
    )
    assert await kit.handle_openai(call) == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "chat",
    }
    broken = {"id": "call_2", "type": "function", "function": {"name": "bash", "arguments": "{"}}
    reply = await kit.handle_openai(broken)
    assert reply["tool_call_id"] == "call_2"
    assert "not valid JSON" in reply["content"]
    item = ResponseFunctionToolCall(
        type="function_call", call_id="fc_1", name="bash", arguments='{"command": "echo resp"}'
    )
    assert await kit.handle_openai(item) == {
        "type": "function_call_output",
        "call_id": "fc_1",
        "output": "resp",
    }


@pytest.mark.anyio
async def test_bash_reports_a_vanished_working_directory(sb: Sandbox) -> None:
    kit = ToolKit(sb)
    await run_ok(kit, "bash", {"command": "mkdir -p doomed && cd doomed"})
    await sb.remove("doomed", recursive=True)
    out = await run_ok(kit, "bash", {"command": "pwd"})
    assert "previous working directory" in out
    assert "doomed is gone" in out


@pytest.mark.anyio
async def test_cut_output_of_a_confined_toolkit_points_to_bash(sb: Sandbox) -> None:
    kit = ToolKit(sb, workdir="project", output_budget=1_000)
    result = await kit.run("bash", {"command": "seq 1 5000"})
    assert result.truncated
    assert result.full_output_path is not None
    assert "(read it with grep/sed/tail in bash)" in result.content
    tail = await run_ok(kit, "bash", {"command": f"tail -n 1 {result.full_output_path}"})
    assert tail == "5000"
    refused = await kit.run("read", {"file_path": result.full_output_path})
    assert refused.is_error


@pytest.mark.anyio
async def test_bash_timeout_is_capped_and_configurable(sb: Sandbox) -> None:
    kit = ToolKit(sb, default_timeout_ms=1_000, max_timeout_ms=2_000)
    assert "default 1000, at most 2000" in kit.get("bash").description
    capped = await kit.run("bash", {"command": "echo quick", "timeout_ms": 60_000})
    assert capped.content == "[timeout_ms lowered to the maximum, 2000]\nquick"
    slow = await kit.run("bash", {"command": "sleep 20"})  # the default applies
    assert slow.is_error
    assert "timed out after 1000 ms" in slow.content


@pytest.mark.anyio
async def test_read_of_a_file_too_large_to_load_selects_lines_in_the_sandbox(
    any_sb: Sandbox,
) -> None:
    kit = ToolKit(any_sb, max_read_bytes=10_000, output_budget=2_000)
    content = "".join(f"line {n}\n" for n in range(1, 5001))  # ~48 KB
    await any_sb.write_file("big.log", content)
    head = await run_ok(kit, "read", {"file_path": "big.log"})
    first = head.splitlines()
    assert first[0].startswith(f"[{any_sb.path('big.log')} is {len(content)} bytes")
    assert "continue with view_range" in first[0]
    assert first[1] == "     1\tline 1"
    numbered = first[1:]
    assert numbered == [f"{n:6}\tline {n}" for n in range(1, len(numbered) + 1)]
    part = await run_ok(kit, "read", {"file_path": "big.log", "view_range": [4000, 4002]})
    assert part.splitlines()[1:] == ["  4000\tline 4000", "  4001\tline 4001", "  4002\tline 4002"]
    assert "continue with" not in part
    tail = await run_ok(kit, "read", {"file_path": "big.log", "view_range": [4999, -1]})
    assert tail.splitlines()[1:] == ["  4999\tline 4999", "  5000\tline 5000"]
    past = await kit.run("read", {"file_path": "big.log", "view_range": [6000, -1]})
    assert past.is_error
    await any_sb.write_file("big.bin", b"\x00" * 20_000)
    assert "binary file (20000 bytes)" in await run_ok(kit, "read", {"file_path": "big.bin"})
