"""Shared fixtures of the framework adapter tests."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from frameworks_testkit import destroy_leftovers


@pytest.fixture(scope="session", autouse=True)
def _destroy_leftovers() -> Iterator[None]:
    yield
    anyio.run(destroy_leftovers)
