"""Developer sessions: tests, lint, types, bench, live (credential-gated provider runs).

Run with ``uvx nox -s tests`` (or ``nox`` if installed). Each session syncs the locked workspace
into its own virtualenv with uv.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "types", "tests"]

LIVE_CREDENTIALS = {
    "e2b": ["E2B_API_KEY"],
    "daytona": ["DAYTONA_API_KEY"],
    "vercel": ["VERCEL_TOKEN", "VERCEL_TEAM_ID", "VERCEL_PROJECT_ID"],
    "cloudflare": ["AGENT_SANDBOX_CLOUDFLARE_URL", "SANDBOX_API_KEY"],
    "modal": ["MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"],
}


def _sync(session: nox.Session, *args: str) -> None:
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--all-extras",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (Docker tests skip with a reason when no engine answers)."""
    _sync(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    _sync(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on the core package and the providers."""
    _sync(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark script, or those named: ``nox -s bench -- local_exec docker_exec``."""
    _sync(session)
    names = session.posargs or sorted(p.stem for p in Path("benchmarks").glob("*.py"))
    for name in names:
        session.run("python", f"benchmarks/{name}.py")


@nox.session
def live(session: nox.Session) -> None:
    """The conformance suite against a real cloud: ``nox -s live -- e2b``. Skips without credentials."""
    if not session.posargs:
        session.error(f"name a provider: nox -s live -- {'|'.join(LIVE_CREDENTIALS)}")
    _sync(session)
    for provider in session.posargs:
        needed = LIVE_CREDENTIALS.get(provider)
        if needed is None:
            session.error(f"no live suite for {provider!r}; known: {', '.join(LIVE_CREDENTIALS)}")
        missing = [name for name in needed if not os.environ.get(name)]
        if missing:
            session.warn(f"skipping live {provider}: {', '.join(missing)} not set")
            continue
        session.run(
            "pytest",
            f"providers/{provider}/tests",
            "-m",
            "live",
            env={"AGENT_SANDBOX_LIVE": provider},
        )
