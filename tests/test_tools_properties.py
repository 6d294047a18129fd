"""Property tests of the toolkit: the glob matcher against a reference matcher, shell state
surviving arbitrary values, and edit agreeing with ``str.replace``."""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit
from agent_sandbox.tools._glob import compile_glob

SEGMENT_PATTERNS = st.sampled_from(
    ["a", "b", "*", "?", "a*", "*b", "[ab]", "[!a]", "**", ".*", "ab"]
)
SEGMENTS = st.sampled_from(["a", "b", "ab", "ba", "aa", ".a", "c", "abc"])


def reference_match(pattern: list[str], path: list[str]) -> bool:
    """Segment-wise glob: ``**`` is any number of segments (at least one when it ends the
    pattern: "everything below"), other segments are ``fnmatch``."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        first = 1 if not rest else 0
        return any(reference_match(rest, path[i:]) for i in range(first, len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and reference_match(rest, path[1:])


@settings(max_examples=500)
@given(
    pattern=st.lists(SEGMENT_PATTERNS, min_size=1, max_size=4),
    path=st.lists(SEGMENTS, min_size=1, max_size=4),
)
def test_glob_matches_the_reference(pattern: list[str], path: list[str]) -> None:
    regex = compile_glob("/".join(pattern))
    assert bool(regex.match("/".join(path))) == reference_match(pattern, path)


@given(
    options=st.lists(st.sampled_from(["a", "b", "ab", "*"]), min_size=2, max_size=3, unique=True),
    path=SEGMENTS,
)
def test_braces_are_alternatives(options: list[str], path: str) -> None:
    regex = compile_glob("{" + ",".join(options) + "}")
    assert bool(regex.match(path)) == any(fnmatch.fnmatchcase(path, o) for o in options)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[ToolKit]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "root", isolation="none"))
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield ToolKit(sandbox, output_budget=100_000)
    finally:
        await sandbox.destroy()
        await backend.aclose()


VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)


@pytest.mark.anyio
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=VALUES, plain=VALUES)
async def test_shell_variables_survive_between_calls(kit: ToolKit, value: str, plain: str) -> None:
    setup = await kit.run(
        "bash", {"command": f"export V={shlex.quote(value)}; P={shlex.quote(plain)}"}
    )
    assert not setup.is_error, setup.content
    out = await kit.run("bash", {"command": 'printf "<%s|%s>" "$V" "$P"'})
    assert out.content == f"<{value}|{plain}>"


@pytest.mark.anyio
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(alphabet="ab\n xy", max_size=30),
    old=st.text(alphabet="ab\n", min_size=1, max_size=3),
    new=st.text(alphabet="abz\n", max_size=3),
    replace_all=st.booleans(),
)
async def test_edit_agrees_with_str_replace(
    kit: ToolKit, text: str, old: str, new: str, replace_all: bool
) -> None:
    sandbox = kit.sandbox
    await sandbox.write_file("prop.txt", text)
    result = await kit.run(
        "edit",
        {"file_path": "prop.txt", "old_string": old, "new_string": new, "replace_all": replace_all},
    )
    count = text.count(old)
    after = await sandbox.read_text("prop.txt")
    if old == new:
        assert result.is_error
        assert after == text
    elif count == 0 or (count > 1 and not replace_all):
        assert result.is_error
        assert after == text
        assert (
            ("not found" in result.content) if count == 0 else (f"{count} times" in result.content)
        )
    else:
        assert not result.is_error, result.content
        assert after == text.replace(old, new)
