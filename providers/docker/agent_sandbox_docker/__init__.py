"""agent-sandbox's Docker provider: sandboxes as containers on a Docker Engine.

Install with ``pip install "agent-sandbox[docker]"`` and choose it with ``provider="docker"``.
See :class:`DockerBackend` and :class:`DockerOptions`.
"""

from ._backend import DockerBackend, DockerOptions

__all__ = ["DockerBackend", "DockerOptions"]
