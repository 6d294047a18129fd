"""The agent-sandbox command against the real Docker engine, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from docker_testkit import BUSYBOX, IMAGE, RUN_LABEL


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``agent-sandbox ARGS`` with the local provider configured, as the README's reader has it."""
    env = {
        **os.environ,
        "AGENT_SANDBOX_PROVIDER": "local",
        "AGENT_SANDBOX_LOCAL_ROOT": str(tmp_path / "state"),
    }
    return subprocess.run(
        [sys.executable, "-m", "agent_sandbox.cli", *args],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )


def test_ids_resolve_without_provider(tmp_path: Path, docker_label: str, docker_api: Any) -> None:
    created = cli(
        tmp_path,
        "create",
        "-p",
        "docker",
        "--image",
        IMAGE,
        "--label",
        f"{RUN_LABEL}={docker_label}",
    )
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.decode().strip()

    ran = cli(tmp_path, "exec", sandbox_id, "--", "sh", "-c", "echo in-docker")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == b"in-docker\n"

    listed = json.loads(cli(tmp_path, "ls", "--json").stdout)
    assert {"id": sandbox_id, "provider": "docker"}.items() <= next(
        item for item in listed if item["id"] == sandbox_id
    ).items()

    (tmp_path / "note.txt").write_text("copied")
    assert cli(tmp_path, "cp", "note.txt", f"{sandbox_id}:note.txt").returncode == 0
    assert cli(tmp_path, "exec", sandbox_id, "--", "cat", "note.txt").stdout == b"copied"

    removed = cli(tmp_path, "rm", sandbox_id)
    assert removed.returncode == 0, removed.stderr
    assert docker_api.containers(all=True, filters={"id": sandbox_id}) == []
    again = cli(tmp_path, "rm", sandbox_id)
    assert again.returncode == 125
    assert b"sandbox_not_found" in again.stderr


def test_rm_leaves_containers_that_are_not_ours(
    tmp_path: Path, docker_label: str, docker_api: Any
) -> None:
    container = docker_api.create_container(
        BUSYBOX, command=["sleep", "300"], labels={RUN_LABEL: docker_label}
    )
    docker_api.start(container["Id"])
    for args in (("rm", "-p", "docker", container["Id"]), ("rm", container["Id"])):
        proc = cli(tmp_path, *args)
        assert proc.returncode == 125, proc.stderr
        assert b"not an agent-sandbox sandbox" in proc.stderr or b"sandbox_not_found" in proc.stderr
        assert docker_api.inspect_container(container["Id"])["State"]["Running"] is True
