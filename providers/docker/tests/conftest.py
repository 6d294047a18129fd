"""pytest fixtures of the Docker provider's tests (defined in docker_testkit)."""

from docker_testkit import (  # noqa: F401 - fixtures are found by name
    _session_cleanup,
    _testkit_importable,
    anyio_backend,
    backend,
    docker_api,
    docker_label,
    egress_target,
    sandbox_backend,
    sandbox_spec,
)
