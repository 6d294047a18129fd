"""The Docker provider: one container per sandbox, driven through the Engine API (docker-py).

docker-py is blocking, so every call to it runs in a worker thread; the exec attach stream is read
straight off its socket with non-blocking reads on the event loop, so a long-running command holds
no thread. One :class:`docker.APIClient` (one connection pool) serves the whole backend.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import posixpath
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import (
    Callable,
    Iterator,
    Mapping,
)
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import anyio
import anyio.to_thread

from agent_sandbox import file_access, progress
from agent_sandbox import labels as _labels
from agent_sandbox.archive import ArchiveSpool
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.errors import (
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    ProviderError,
    ProviderUnavailable,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    FileInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    StartOptions,
)
from agent_sandbox.process import ProcessHandle

from . import _agent, _egress, _wire
from ._engine import EngineProcess
from ._errors import PROVIDER, translate, unreachable
from ._stream import DockerStream

if TYPE_CHECKING:
    import docker  # type: ignore[import-untyped,unused-ignore]

log = logging.getLogger("agent_sandbox.docker")
T = TypeVar("T")

LABEL_PROVIDER = _labels.PROVIDER
LABEL_WORKDIR = _labels.WORKDIR
LABEL_SNAPSHOT_OF = _labels.SNAPSHOT_OF
LABEL_EGRESS = _labels.EGRESS
LABEL_ROLE = _labels.ROLE
LABEL_AGENT = "agent-sandbox.agent"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"

# What a sandbox's processes keep of Docker's default capabilities (all others are dropped):
# enough for root in the sandbox to own, chmod and write any file of the sandbox, switch users
# (package managers do) and bind low ports; not raw sockets (packet spoofing), device nodes,
# chroot, file capabilities or the audit log. With no-new-privileges (where the sandbox's user
# is root), no setuid program gains anything either.
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
)

_STATES: dict[str, SandboxState] = {
    "running": "running",
    "created": "running",
    "restarting": "running",
    "paused": "paused",
}


class DockerOptions(ProviderOptions):
    """Options of the ``docker`` provider.

    Attributes:
        base_url: Engine address (``unix:///var/run/docker.sock``, ``tcp://host:2375``,
            ``ssh://...``); default from ``DOCKER_HOST`` (and ``DOCKER_TLS_VERIFY``/
            ``DOCKER_CERT_PATH``), else the local socket.
        runtime: OCI runtime for the containers, e.g. ``"runsc"`` (gVisor); default the engine's.
        default_image: image used when the spec names none (pulled on first use).
        pull: ``"missing"`` pulls an image the engine lacks, ``"always"`` pulls before every
            create, ``"never"`` fails when it is missing.
        pids_limit: most processes a sandbox may run (fork-bomb guard); ``None`` for no limit.
        disk_quota: pass ``disk_mib`` as ``--storage-opt size=`` (needs overlay2 on xfs with
            pquota); without it a ``disk_mib`` in the spec raises ``Unsupported``.
        agent: run the exec agent (a small static binary copied in at create) as each
            sandbox's main process, serving commands and files over its attach stream; without
            it, or where it cannot run, every command is an exec of the engine.
        init: without the agent, run the engine's tiny init (tini) as PID 1, reaping orphaned
            processes (the agent reaps them itself).
        api_timeout: seconds to wait for an ordinary API answer.
        egress_proxy_image: image of the egress proxy and relay behind network policy
            ``allowlist`` (needs ``python3``; pulled on first use like any image).
    """

    provider: Literal["docker"] = "docker"
    base_url: str | None = None
    runtime: str | None = None
    default_image: str = "python:3.12-slim"
    pull: Literal["missing", "always", "never"] = "missing"
    pids_limit: int | None = 4096
    disk_quota: bool = False
    agent: bool = True
    init: bool = True
    api_timeout: float = 120.0
    egress_proxy_image: str = "python:3.12-slim"

    # The engine address, the runtime, the pids limit and the egress proxy decide isolation:
    # only code, the environment or the user's config set them.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"default_image", "pull", "init", "api_timeout"}
    )


class DockerBackend(BaseBackend):
    """Sandboxes as Docker containers whose main process is their TTL dead-man switch.

    Each container's main process is the exec agent (``agent/agent.c``; ``sleep <ttl>`` where it
    cannot run), with ``auto_remove``: when the TTL runs out the container ends and the engine
    deletes it, whether or not any client is still alive. The agent runs commands, holds
    background processes for any client to attach, and moves files, over the container's attach
    stream (the creating client) or a relay exec (any other client).
    """

    name = PROVIDER
    Options = DockerOptions
    capabilities = Capabilities(
        network_none=True,
        network_allowlist=True,
        expose_port=True,
        snapshot=True,
        pause=True,
        exec_user=True,
        stdin=True,
        resources=True,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=True,
        stdin_streaming=True,
        reattach=True,
    )

    def __init__(self, options: DockerOptions | None = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, DockerOptions)
        self.opts: DockerOptions = self.options
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._images: dict[str, tuple[str, str, str]] = {}
        self._agents: dict[str, _agent.AgentConnection | None] = {}
        self._root_user: dict[str, bool] = {}
        self._paused: set[str] = set()
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The engine address in use (for messages)."""
        if self.opts.base_url:
            return self.opts.base_url
        import os

        return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    def _connect_blocking(self) -> docker.APIClient:
        with self._lock:
            if self._api is not None:
                return self._api
            if self._closed:
                raise ProviderError("the docker backend is closed", provider=PROVIDER)
            try:
                import docker  # type: ignore[import-untyped,unused-ignore]
                from docker.utils import kwargs_from_env  # type: ignore[import-untyped,unused-ignore]
            except ImportError as exc:  # pragma: no cover - the dependency is declared
                from agent_sandbox.errors import ProviderNotInstalled

                raise ProviderNotInstalled(
                    'the docker package is missing; run: pip install "agent-sandbox[docker]"',
                    provider=PROVIDER,
                ) from exc
            kwargs: dict[str, Any] = kwargs_from_env()
            if self.opts.base_url:
                kwargs["base_url"] = self.opts.base_url
                if self.opts.base_url.startswith("unix:"):
                    kwargs.pop("tls", None)
            try:
                api = docker.APIClient(
                    version="auto",
                    timeout=int(self.opts.api_timeout),
                    max_pool_size=64,
                    **kwargs,
                )
            except Exception as exc:
                raise unreachable(self.base_url, exc, op="connect_engine") from exc
            self._api = api
            return api

    async def _call(
        self,
        op: str,
        fn: Callable[..., T],
        *args: Any,
        sandbox_id: str | None = None,
        path: str | None = None,
    ) -> T:
        """Run a blocking docker-py call in a worker thread, translating its errors."""

        def run() -> T:
            api = self._connect_blocking()
            try:
                return fn(api, *args)
            except SandboxError:
                raise
            except Exception as exc:
                raise translate(
                    exc, base_url=self.base_url, op=op, sandbox_id=sandbox_id, path=path
                ) from exc

        return await anyio.to_thread.run_sync(run)

    async def aclose(self) -> None:
        """Close the agent connections and the engine connection pool. Containers and their
        background processes keep running until their TTL."""
        agents, self._agents = self._agents, {}
        for conn in agents.values():
            if conn is not None:
                await conn.aclose()
        with self._lock:
            api, self._api = self._api, None
            self._closed = True
        if api is not None:
            await anyio.to_thread.run_sync(api.close)

    # -- lifecycle --------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what this provider cannot honour (on top of the capability checks)."""
        super().check_spec(spec)
        if spec.disk_mib is not None and not self.opts.disk_quota:
            raise Unsupported(
                "disk_mib needs a storage driver with quotas (overlay2 on xfs with pquota); "
                "set the docker option disk_quota=true on such hosts",
                provider=PROVIDER,
                op="create",
            )
        if spec.idle_timeout_seconds is not None:
            raise Unsupported(
                "the docker provider has no idle timeout; use ttl_seconds",
                provider=PROVIDER,
                op="create",
            )
        if spec.ports and spec.network.mode != "open":
            raise ConfigError(
                f"ports cannot be published with network policy {spec.network.mode!r} (the "
                "sandbox has no network interface)",
                provider=PROVIDER,
                op="create",
            )

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create and start a container; its main process ends it after ``spec.ttl_seconds``.

        Raises ``Unsupported`` (see :meth:`check_spec`), ``ConfigError`` for an unknown image,
        ``ProviderUnavailable`` when the engine or the registry cannot be reached.
        """
        self.check_spec(spec)
        image = spec.snapshot or spec.image or self.opts.default_image
        expires = _labels.expires_at(spec.labels)

        def ttl() -> str:
            # count down to the stamped expiry, so time spent pulling is not added on top
            if expires is None:
                return str(max(1, math.ceil(spec.ttl_seconds)))
            left = (expires - datetime.now(timezone.utc)).total_seconds()
            return str(max(1, math.ceil(left)))

        labels = {**spec.labels, LABEL_PROVIDER: PROVIDER}
        image_workdir, arch, image_user = await self._image_facts(image, pull=spec.snapshot is None)
        # no-new-privileges where the sandbox's user is root: under it, the engine gives an exec
        # as root in a sandbox of another user no capability at all, so exec(user="root") there
        # would be root in name only
        as_root = _is_root(spec.user or image_user)
        workdir = spec.workdir or image_workdir
        labels[LABEL_WORKDIR] = workdir
        env = dict(spec.env)
        egress_key = None
        if spec.network.mode == "allowlist":
            # no network of its own: its one way out is the egress relay (see _egress)
            egress_key = uuid.uuid4().hex[:12]
            labels[LABEL_EGRESS] = egress_key
            env = {**_egress.proxy_env(), **env}
            await self._call(
                "create", lambda api: self._start_egress_proxy(api, egress_key, spec, ttl())
            )

        def run(api: docker.APIClient, agent: bytes | None) -> tuple[str, DockerStream | None]:
            import docker.errors  # type: ignore[import-untyped,unused-ignore]

            open_network = spec.network.mode == "open"
            host_config = api.create_host_config(
                auto_remove=True,
                cap_drop=["ALL"],
                cap_add=list(CAPABILITIES),
                security_opt=["no-new-privileges:true"] if as_root else None,
                init=None if agent else self.opts.init or None,
                log_config={"Type": "none", "Config": {}} if agent else None,
                network_mode=_open_network(api) if open_network else "none",
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus is not None else None,
                mem_limit=f"{spec.memory_mib}m" if spec.memory_mib is not None else None,
                memswap_limit=f"{spec.memory_mib}m" if spec.memory_mib is not None else None,
                pids_limit=self.opts.pids_limit,
                port_bindings={p: ("127.0.0.1", None) for p in spec.ports} or None,
                runtime=self.opts.runtime,
                storage_opt={"size": f"{spec.disk_mib}M"} if spec.disk_mib else None,
            )
            kwargs: dict[str, Any] = {
                "image": image,
                "entrypoint": [_agent.PATH, "--ttl"] if agent else ["sleep"],
                "labels": {**labels, LABEL_AGENT: str(_agent.PROTOCOL)} if agent else labels,
                "environment": env or None,
                "working_dir": workdir,
                "user": spec.user,
                "ports": list(spec.ports) or None,
                "host_config": host_config,
                "detach": True,
                "stdin_open": agent is not None,  # the agent's stdin: its first client's stream
            }
            try:
                created = api.create_container(**kwargs, command=[ttl()])
            except docker.errors.ImageNotFound:
                if spec.snapshot is not None:
                    raise ConfigError(
                        f"snapshot {spec.snapshot} not found", provider=PROVIDER, op="create"
                    ) from None
                self._pull_blocking(api, image)
                created = api.create_container(**kwargs, command=[ttl()])
            cid: str = created["Id"]
            try:
                stream = _agent.install(api, cid, agent) if agent else None
                api.start(cid)
                if egress_key is not None:
                    self._start_egress_relay(api, egress_key, cid, ttl())
            except BaseException:
                try:
                    api.remove_container(cid, force=True)
                except Exception:
                    log.debug("cleanup of container %s failed", cid, exc_info=True)
                raise
            return cid, stream

        agent = _agent.binary(arch) if self.opts.agent else None
        try:
            try:
                cid, stream = await self._call("create", lambda api: run(api, agent))
                if stream is not None:
                    self._agents[cid] = await self._greet(cid, stream)
            except (_agent.AgentUnavailable, SandboxError) as exc:
                if agent is None or not isinstance(exc, _agent.AgentUnavailable):
                    raise
                log.warning("%s; commands go through the engine's exec", exc)
                cid, _ = await self._call("create", lambda api: run(api, None))
        except BaseException:
            if egress_key is not None:
                with anyio.CancelScope(shield=True):
                    await self._call("create", lambda api: _remove_egress(api, egress_key))
            raise
        return SandboxInfo(
            id=cid,
            provider=PROVIDER,
            state="running",
            labels=spec.labels,
            created_at=_labels.created_at(spec.labels),
            expires_at=_labels.expires_at(spec.labels),
            image=image,
            workdir=workdir,
            metadata={"runtime": self.opts.runtime or "default", "engine": self.base_url},
        )

    async def _greet(self, cid: str, stream: DockerStream) -> _agent.AgentConnection:
        """Say hello to a new sandbox's agent over its attach stream; when it does not answer
        (it cannot run here), remove the container and raise ``AgentUnavailable``."""
        conn = _agent.AgentConnection(stream, cid)
        try:
            await conn.handshake(_agent.HANDSHAKE_TIMEOUT)
        except (SandboxError, TimeoutError) as exc:
            conn.drop()
            with anyio.CancelScope(shield=True):  # the container only: an egress proxy stays
                await self._call("create", lambda api: _remove_container(api, cid))
            raise _agent.AgentUnavailable(
                f"the exec agent could not start in a {cid[:12]} sandbox ({exc})"
            ) from exc
        return conn

    async def _image_facts(self, image: str, *, pull: bool) -> tuple[str, str, str]:
        """The image's WORKDIR (``/`` when unset), architecture and USER, pulling the image
        first if policy says so."""
        cached = self._images.get(image)
        if cached is not None and self.opts.pull != "always":
            return cached

        def run(api: docker.APIClient) -> tuple[str, str, str]:
            import docker.errors  # type: ignore[import-untyped,unused-ignore]

            if pull and self.opts.pull == "always":
                self._pull_blocking(api, image)
            try:
                attrs = api.inspect_image(image)
            except docker.errors.ImageNotFound:
                if not pull:
                    raise ConfigError(
                        f"snapshot image {image} not found", provider=PROVIDER, op="create"
                    ) from None
                self._pull_blocking(api, image)
                attrs = api.inspect_image(image)
            config = attrs.get("Config") or {}
            workdir = str(config.get("WorkingDir") or "/")
            return workdir, str(attrs.get("Architecture") or ""), str(config.get("User") or "")

        facts = await self._call("create", run)
        self._images[image] = facts
        return facts

    def _pull_blocking(self, api: docker.APIClient, image: str) -> None:
        import docker.errors  # type: ignore[import-untyped,unused-ignore]

        if self.opts.pull == "never":
            raise ConfigError(
                f"image {image!r} is not present on the Docker engine and pull='never'",
                provider=PROVIDER,
                op="pull",
            )
        repo, tag = _split_image(image)
        log.info("pulling image %s (not present on the engine)", image)
        last = 0.0
        layers = _LayerProgress(f"pulling {image}")
        try:
            for event in api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise docker.errors.APIError(str(event["error"]))
                layers.update(event)
                now = time.monotonic()
                if now - last > 1.0 or "Digest" in str(event.get("status", "")):
                    last = now
                    log.info(
                        "pull %s: %s %s %s",
                        image,
                        event.get("id", ""),
                        event.get("status", ""),
                        event.get("progress", ""),
                    )
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            lower = text.lower()
            if any(
                s in lower for s in ("dial tcp", "no such host", "timeout", "connection refused")
            ):
                raise ProviderUnavailable(
                    f"cannot pull image {image!r}: no container registry is reachable ({text}). "
                    "Load or build the image locally (docker load / docker build) or point the "
                    "engine at a reachable registry mirror.",
                    provider=PROVIDER,
                    op="pull",
                ) from exc
            raise ConfigError(
                f"cannot pull image {image!r}: {text}", provider=PROVIDER, op="pull"
            ) from exc
        log.info("pulled image %s", image)

    def _helper_image(self, api: docker.APIClient, kwargs: dict[str, Any]) -> str:
        """Create a helper container from the egress proxy image (pulled if missing)."""
        import docker.errors  # type: ignore[import-untyped,unused-ignore]

        try:
            created = api.create_container(image=self.opts.egress_proxy_image, **kwargs)
        except docker.errors.ImageNotFound:
            self._pull_blocking(api, self.opts.egress_proxy_image)
            created = api.create_container(image=self.opts.egress_proxy_image, **kwargs)
        return str(created["Id"])

    def _start_egress_proxy(
        self, api: docker.APIClient, key: str, spec: SandboxSpec, ttl: str
    ) -> None:
        """Create the volume the egress helpers share and start the proxy, on the default
        bridge, listening on a unix socket in it."""
        labels = {k: v for k, v in spec.labels.items() if k != LABEL_PROVIDER}
        labels[LABEL_EGRESS] = key
        api.create_volume(_egress_volume(key), labels=labels)
        try:
            proxy = self._helper_image(
                api,
                {
                    "entrypoint": ["python3", "-c", _egress.PROXY_SCRIPT],
                    "command": [_egress.SOCKET, ttl, *spec.network.allow],
                    "labels": {**labels, LABEL_ROLE: "egress-proxy"},
                    "host_config": api.create_host_config(
                        auto_remove=True,
                        init=True,
                        cap_drop=["ALL"],
                        security_opt=["no-new-privileges:true"],
                        pids_limit=512,
                        mem_limit="256m",
                        binds={_egress_volume(key): {"bind": _egress.SOCKET_DIR, "mode": "rw"}},
                    ),
                    "detach": True,
                },
            )
            api.start(proxy)
        except BaseException:
            _remove_egress(api, key)
            raise

    def _start_egress_relay(self, api: docker.APIClient, key: str, sandbox: str, ttl: str) -> None:
        """Start the relay inside the sandbox's network namespace: its loopback port 3128
        carried to the proxy's socket."""
        labels = api.inspect_volume(_egress_volume(key)).get("Labels") or {}
        relay = self._helper_image(
            api,
            {
                "entrypoint": ["python3", "-c", _egress.RELAY_SCRIPT],
                "command": [str(_egress.PROXY_PORT), _egress.SOCKET, ttl],
                "labels": {**labels, LABEL_ROLE: "egress-relay"},
                "host_config": api.create_host_config(
                    auto_remove=True,
                    init=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges:true"],
                    pids_limit=128,
                    mem_limit="128m",
                    network_mode=f"container:{sandbox}",
                    binds={_egress_volume(key): {"bind": _egress.SOCKET_DIR, "mode": "ro"}},
                ),
                "detach": True,
            },
        )
        api.start(relay)

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """Destroy expired sandboxes (see :class:`BaseBackend`), then the expired egress
        helpers (proxy, relay, volume) of allowlist sandboxes; ``labels`` narrows both."""
        removed = await super().sweep(now=now, labels=labels)
        moment = now or datetime.now(timezone.utc)
        await self._call("sweep", lambda api: _sweep_egress(api, moment, labels or {}))
        return removed

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a running sandbox. Raises ``SandboxNotFound`` when gone or ended."""
        attrs = await self._inspect(sandbox_id, "connect")
        return self._info(attrs)

    async def _inspect(self, sandbox_id: str, op: str) -> dict[str, Any]:
        attrs: dict[str, Any] = await self._call(
            op, lambda api: api.inspect_container(sandbox_id), sandbox_id=sandbox_id
        )
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_PROVIDER) != PROVIDER:
            raise SandboxNotFound(
                f"container {sandbox_id} is not an agent-sandbox sandbox",
                provider=PROVIDER,
                op=op,
                sandbox_id=sandbox_id,
            )
        status = (attrs.get("State") or {}).get("Status", "")
        if status not in _STATES:
            raise SandboxNotFound(
                f"sandbox {sandbox_id} has ended ({status}: TTL ran out or it was stopped)",
                provider=PROVIDER,
                op=op,
                sandbox_id=sandbox_id,
            )
        return attrs

    def _info(self, attrs: dict[str, Any]) -> SandboxInfo:
        config = attrs.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        host = attrs.get("HostConfig") or {}
        state = (attrs.get("State") or {}).get("Status", "")
        return SandboxInfo(
            id=attrs["Id"],
            provider=PROVIDER,
            state=_STATES.get(state, "unknown"),
            labels=_user_labels(labels),
            created_at=_labels.created_at(labels) or _wire.parse_created(attrs.get("Created")),
            expires_at=_labels.expires_at(labels),
            image=config.get("Image"),
            workdir=config.get("WorkingDir") or labels.get(LABEL_WORKDIR) or "/",
            metadata={
                "runtime": str(host.get("Runtime") or "default"),
                "engine": self.base_url,
                "name": str(attrs.get("Name", "")).lstrip("/"),
            },
        )

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Running sandboxes of this provider carrying all of ``labels``."""
        wanted = [f"{LABEL_PROVIDER}={PROVIDER}"]
        wanted += [f"{k}={v}" for k, v in (labels or {}).items()]
        rows: builtins.list[dict[str, Any]] = await self._call(
            "list", lambda api: api.containers(all=True, filters={"label": wanted})
        )
        infos = []
        for row in rows:
            state = row.get("State", "")
            if state not in _STATES:
                continue  # ended: the engine is removing it
            row_labels = dict(row.get("Labels") or {})
            infos.append(
                SandboxInfo(
                    id=row["Id"],
                    provider=PROVIDER,
                    state=_STATES[state],
                    labels=_user_labels(row_labels),
                    created_at=_labels.created_at(row_labels)
                    or _wire.parse_created(row.get("Created")),
                    expires_at=_labels.expires_at(row_labels),
                    image=row.get("Image"),
                    workdir=row_labels.get(LABEL_WORKDIR, "/"),
                )
            )
        return infos

    async def destroy(self, sandbox_id: str) -> None:
        """Kill and remove the container at once (no graceful stop); gone already is fine.

        Only our sandboxes are removed: a container without this provider's label raises
        ``SandboxNotFound`` and is left alone.
        """
        conn = self._agents.pop(sandbox_id, None)
        if conn is not None:
            conn.drop()

        def run(api: docker.APIClient) -> None:
            import docker.errors  # type: ignore[import-untyped,unused-ignore]

            try:
                attrs = api.inspect_container(sandbox_id)
            except docker.errors.NotFound:
                return
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            if labels.get(LABEL_PROVIDER) != PROVIDER:
                raise SandboxNotFound(
                    f"container {sandbox_id} is not an agent-sandbox sandbox; left alone",
                    provider=PROVIDER,
                    op="destroy",
                    sandbox_id=sandbox_id,
                )
            try:
                api.remove_container(attrs["Id"], force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
                    raise
                # auto-remove got there first
            if labels.get(LABEL_EGRESS):
                _remove_egress(api, labels[LABEL_EGRESS])

        self._root_user.pop(sandbox_id, None)
        await self._call("destroy", run, sandbox_id=sandbox_id)

    # -- processes --------------------------------------------------------------------------

    async def _agent_of(self, sandbox_id: str) -> _agent.AgentConnection | None:
        """The connection to the sandbox's exec agent (opened through a relay exec by any client
        but the creator); ``None`` when the sandbox runs without one."""
        if sandbox_id in self._paused:  # a frozen agent would not answer: say so instead
            if ((await self._inspect(sandbox_id, "exec")).get("State") or {}).get("Paused"):
                raise SandboxConflict(
                    f"sandbox {sandbox_id} is paused", provider=PROVIDER, sandbox_id=sandbox_id
                )
            self._paused.discard(sandbox_id)
        conn = self._agents.get(sandbox_id)
        if conn is not None and conn.usable:
            return conn
        if conn is None and sandbox_id in self._agents:
            return None
        attrs = await self._inspect(sandbox_id, "exec")
        found = None
        if ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_AGENT):
            stream = await self._call(
                "exec", lambda api: _agent.relay(api, sandbox_id), sandbox_id=sandbox_id
            )
            found = _agent.AgentConnection(stream, sandbox_id)
            try:
                await found.handshake(_agent.HANDSHAKE_TIMEOUT)
            except (SandboxError, TimeoutError) as exc:
                found.drop()
                if isinstance(exc, SandboxNotFound):
                    raise
                log.warning(
                    "sandbox %s: %s; commands go through the engine's exec", sandbox_id, exc
                )
                found = None
        self._agents[sandbox_id] = found
        return found

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start a process through the sandbox's exec agent (the engine's exec for another
        ``user``, or a sandbox without an agent). Raises ``SandboxNotFound``, ``FileNotFound``
        for a missing ``cwd``."""
        conn = None if options.user is not None else await self._agent_of(sandbox_id)
        if conn is None:
            return await EngineProcess.start(self, sandbox_id, argv, options)
        return await conn.start(argv, options)

    async def _require_agent(self, sandbox_id: str, what: str) -> _agent.AgentConnection:
        conn = await self._agent_of(sandbox_id)
        if conn is None:
            raise Unsupported(
                f"{what} needs the sandbox's exec agent, which does not run in {sandbox_id}",
                provider=PROVIDER,
                op=what,
                sandbox_id=sandbox_id,
            )
        return conn

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """Follow a process started with ``detached`` again, from any client; its recent output
        (up to 1 MiB per stream) is replayed. Raises ``ProcessNotFound``."""
        return await (await self._require_agent(sandbox_id, "attach")).attach(ref)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The sandbox's background processes (running, and the last ones that ended)."""
        return await (await self._require_agent(sandbox_id, "processes")).processes()

    # -- files ------------------------------------------------------------------------------

    async def _files_as_root(self, sandbox_id: str, op: str) -> bool:
        """Whether the sandbox's default user is root. The archive API acts as root, so it
        serves file operations only then; for any other user they run as that user's commands
        (:mod:`agent_sandbox.file_access`), so the kernel applies that user's permissions."""
        known = self._root_user.get(sandbox_id)
        if known is None:
            attrs = await self._inspect(sandbox_id, op)
            user = str((attrs.get("Config") or {}).get("User") or "")
            known = _is_root(user)
            self._root_user[sandbox_id] = known
        return known

    async def _follow(
        self, sandbox_id: str, path: str, op: str
    ) -> tuple[str, dict[str, Any] | None]:
        """``path`` with its symlinks followed, and its archive stat (``None`` when missing)."""
        where: dict[str, Any] = {"provider": PROVIDER, "op": op, "sandbox_id": sandbox_id}
        for _ in range(16):
            header = await self._call(
                op, lambda api, p=path: _stat_archive(api, sandbox_id, p), sandbox_id=sandbox_id
            )
            if header is None or not header.get("linkTarget"):
                return path, header
            target = str(header["linkTarget"])
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        raise InvalidPath(f"too many levels of symbolic links: {path}", **where)

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """The bytes of a regular file, as the sandbox's default user: read by the exec agent
        (which runs as that user); without one, through the archive API when that user is root,
        else through a command of that user.

        Symlinks are followed. Raises ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``,
        ``FileTooLarge`` (checked before anything is read), ``InvalidPath`` (FIFO, device).
        """
        conn = await self._agent_of(sandbox_id)
        if conn is not None:
            return await conn.read_file(path, max_bytes)
        if not await self._files_as_root(sandbox_id, "read_file"):
            return await file_access.read_as_user(self, sandbox_id, path, max_bytes)
        where: dict[str, Any] = {"provider": PROVIDER, "op": "read_file", "sandbox_id": sandbox_id}
        for _ in range(16):
            kind, payload = await self._call(
                "read_file",
                lambda api, p=path: _read_archive(api, sandbox_id, p, max_bytes),
                sandbox_id=sandbox_id,
                path=path,
            )
            if kind == "file":
                return payload
            if kind == "dir":
                raise IsADirectory(f"is a directory: {path}", **where)
            if kind == "other":
                raise InvalidPath(
                    f"read_file {path}: not a regular file (a FIFO, device or socket)", **where
                )
            if kind == "large":
                raise FileTooLarge(
                    f"read_file {path}: larger than max_bytes={max_bytes}; pass a larger "
                    "max_bytes or use download()",
                    **where,
                )
            target = payload.decode("utf-8", "surrogateescape")
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        raise InvalidPath(f"too many levels of symbolic links: {path}", **where)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file as the sandbox's default user, creating parents: written by
        the exec agent (which runs as that user); without one, through the archive API (a
        streamed tar) when that user is root, else through a command of that user. A replaced
        file keeps its mode; a directory is never replaced (``IsADirectory``); a symlink is
        written through."""
        conn = await self._agent_of(sandbox_id)
        if conn is not None:
            await conn.write_file(path, data)
            return
        if not await self._files_as_root(sandbox_id, "write_file"):
            await file_access.write_as_user(self, sandbox_id, path, data)
            return
        where: dict[str, Any] = {"provider": PROVIDER, "op": "write_file", "sandbox_id": sandbox_id}
        target, header = await self._follow(sandbox_id, path, "write_file")
        mode = 0o644
        if header is not None:
            if _wire.is_dir(header):
                raise IsADirectory(f"is a directory: {path}", **where)
            if not _wire.is_regular(header):
                raise InvalidPath(
                    f"write_file {path}: not a regular file (a FIFO, device or socket)", **where
                )
            mode = _wire.file_info(target, header).mode
        parent, name = posixpath.split(target)
        if not name:
            raise IsADirectory(f"is a directory: {path}", **where)
        parent = parent or "/"

        def put(api: docker.APIClient) -> bool:
            import docker.errors  # type: ignore[import-untyped,unused-ignore]

            try:
                _put_archive(api, sandbox_id, parent, _wire.tar_single_file(name, data, mode))
            except docker.errors.NotFound as exc:
                if "no such container" in str(exc.explanation).lower():
                    raise
                return False
            return True

        try:
            if await self._call("write_file", put, sandbox_id=sandbox_id, path=path):
                return
            await self.mkdir(sandbox_id, parent)
            await self._call("write_file", put, sandbox_id=sandbox_id, path=path)
        except SandboxError as exc:
            raise _refused_overwrite(exc, path, where) from exc

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe a path with one ``HEAD`` of the archive API (no exec), or as a command of
        the sandbox's user when that is not root. Raises ``FileNotFound``."""
        if not await self._files_as_root(sandbox_id, "stat"):
            return await super().stat(sandbox_id, path)
        header = await self._call(
            "stat",
            lambda api: _stat_archive(api, sandbox_id, path),
            sandbox_id=sandbox_id,
            path=path,
        )
        if header is None:
            raise FileNotFound(
                f"no such file or directory: {path}",
                provider=PROVIDER,
                op="stat",
                sandbox_id=sandbox_id,
            )
        return _wire.file_info(path, header)

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """Copy a local tree into ``remote_dir`` (created if missing) with one streamed
        ``put_archive``; the tar is spooled to a temporary file, not built in memory. A file
        never replaces a directory. For a sandbox whose user is not root, a command of that
        user unpacks it."""
        if not await self._files_as_root(sandbox_id, "upload"):
            await super().upload(sandbox_id, local_dir, remote_dir)
            return
        source = Path(local_dir)
        where: dict[str, Any] = {"provider": PROVIDER, "op": "upload", "sandbox_id": sandbox_id}

        def put(api: docker.APIClient) -> bool:
            import docker.errors  # type: ignore[import-untyped,unused-ignore]

            if not source.is_dir():
                raise FileNotFound(f"local directory not found: {source}", op="upload")

            with _spooled_tar(source) as archive:
                try:
                    _put_archive(api, sandbox_id, remote_dir, archive)
                except docker.errors.NotFound as exc:
                    if "no such container" in str(exc.explanation).lower():
                        raise
                    return False
            return True

        try:
            if await self._call("upload", put, sandbox_id=sandbox_id):
                return
            await self.mkdir(sandbox_id, remote_dir)

            def put_again(api: docker.APIClient) -> None:
                with _spooled_tar(source) as archive:
                    _put_archive(api, sandbox_id, remote_dir, archive)

            await self._call("upload", put_again, sandbox_id=sandbox_id, path=remote_dir)
        except SandboxError as exc:
            raise _refused_overwrite(exc, remote_dir, where) from exc

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """Copy the tree at ``remote_dir`` into ``local_dir`` with one streamed ``get_archive``
        (a command of the sandbox's user packs it when that user is not root).

        Raises ``FileNotFound`` when ``remote_dir`` is missing or not a directory.
        """
        if not await self._files_as_root(sandbox_id, "download"):
            await super().download(sandbox_id, remote_dir, local_dir)
            return
        target = Path(local_dir)

        def run(api: docker.APIClient) -> bool:
            url = api._url("/containers/{0}/archive", sandbox_id)
            path = remote_dir.rstrip("/") + "/."
            res = api._get(url, params={"path": path}, stream=True)
            try:
                api._raise_for_status(res)
                stat = _wire.decode_stat_header(res.headers.get("X-Docker-Container-Path-Stat"))
                if not stat or not _wire.is_dir(stat):
                    return False
                with ArchiveSpool(self.archive_limits) as spool:
                    for chunk in res.iter_content(_wire.CHUNK):
                        spool.write(chunk)
                    spool.extract(target)
                return True
            finally:
                res.close()

        found = await self._call("download", run, sandbox_id=sandbox_id, path=remote_dir)
        if not found:
            raise FileNotFound(
                f"no such directory: {remote_dir}",
                provider=PROVIDER,
                op="download",
                sandbox_id=sandbox_id,
            )

    # -- optional capabilities --------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """``http://127.0.0.1:<host port>`` for a port published at create (``spec.ports``)."""
        attrs = await self._inspect(sandbox_id, "expose_port")
        ports = ((attrs.get("NetworkSettings") or {}).get("Ports")) or {}
        for binding in ports.get(f"{port}/tcp") or []:
            if binding.get("HostPort"):
                return f"http://127.0.0.1:{binding['HostPort']}"
        raise ConfigError(
            f"port {port} was not published; create the sandbox with ports=({port},)",
            provider=PROVIDER,
            op="expose_port",
            sandbox_id=sandbox_id,
        )

    async def snapshot(self, sandbox_id: str) -> str:
        """Commit the container's filesystem to an image; returns its id for ``spec.snapshot``."""
        await self._inspect(sandbox_id, "snapshot")
        result: dict[str, Any] = await self._call(
            "snapshot",
            lambda api: api.commit(
                sandbox_id,
                conf={"Labels": {LABEL_SNAPSHOT_OF: sandbox_id}},
                pause=True,
            ),
            sandbox_id=sandbox_id,
        )
        return str(result["Id"])

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (cgroup freezer). Until it is resumed, its commands
        raise ``SandboxConflict`` (when paused by another client, they wait for the resume)."""
        await self._call("pause", lambda api: api.pause(sandbox_id), sandbox_id=sandbox_id)
        self._paused.add(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox."""
        await self._call("resume", lambda api: api.unpause(sandbox_id), sandbox_id=sandbox_id)
        self._paused.discard(sandbox_id)


# -- blocking helpers (run in worker threads) ------------------------------------------------


class _LayerProgress:
    """Bytes pulled across an image's layers, from the engine's pull events, sent to
    :func:`agent_sandbox.progress.report`."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.layers: dict[str, tuple[int, int]] = {}

    def update(self, event: dict[str, Any]) -> None:
        layer, status = str(event.get("id", "")), str(event.get("status", ""))
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in ("Download complete", "Pull complete") and layer in self.layers:
            total = self.layers[layer][1]
            self.layers[layer] = (total, total)
        else:
            return
        done = sum(current for current, _ in self.layers.values())
        progress.report(self.what, done, sum(total for _, total in self.layers.values()))


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def _is_root(user: str) -> bool:
    """Whether a container ``User`` (``name``, ``uid``, ``name:group``; empty for the image's
    default, root) is root."""
    return user.partition(":")[0] in ("", "root", "0")


def _user_labels(labels: Mapping[str, str]) -> dict[str, str]:
    hidden = (LABEL_PROVIDER, LABEL_WORKDIR, LABEL_EGRESS)
    return {k: v for k, v in labels.items() if k not in hidden}


OPEN_NETWORK = "agent-sandbox-open"
_ICC = "com.docker.network.bridge.enable_icc"


def _open_network(api: docker.APIClient) -> str:
    """The id of the bridge network every ``open`` sandbox joins, created on first use with
    inter-container traffic off (Docker's hardening advice, ``--icc=false``, for one network):
    its sandboxes reach out and are reached through their published ports, never each other,
    nor containers on other networks. Raises ``ConfigError`` for a network of that name that
    lets containers talk to each other."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    def find() -> builtins.list[dict[str, Any]]:
        named = [n for n in api.networks(names=[OPEN_NETWORK]) if n.get("Name") == OPEN_NETWORK]
        return sorted(named, key=lambda n: (str(n.get("Created", "")), str(n["Id"])))

    found = find()
    if not found:
        with contextlib.suppress(docker.errors.APIError):  # another client made it meanwhile
            api.create_network(
                OPEN_NETWORK,
                driver="bridge",
                options={_ICC: "false"},
                labels={LABEL_ROLE: "open-network"},
                check_duplicate=True,
            )
        found = find()
    if not found:
        raise ProviderError(
            f"could not create the Docker network {OPEN_NETWORK!r}", provider=PROVIDER, op="create"
        )
    network = found[0]
    if (network.get("Options") or {}).get(_ICC) != "false":
        raise ConfigError(
            f"the Docker network {OPEN_NETWORK!r} lets its containers reach each other "
            f"({_ICC} is not false); remove it and it is recreated isolated",
            provider=PROVIDER,
            op="create",
        )
    return str(network["Id"])


def _egress_volume(key: str) -> str:
    return f"agent-sandbox-egress-{key}"


def _remove_container(api: docker.APIClient, cid: str) -> None:
    """Force-remove one container; gone, or already being removed (auto-remove), is fine."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    with contextlib.suppress(docker.errors.APIError):  # NotFound, 409 removal in progress
        api.remove_container(cid, force=True)


def _remove_egress(api: docker.APIClient, key: str) -> None:
    """Remove the egress proxy, relay and volume of one allowlist sandbox (gone is fine)."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    for row in api.containers(all=True, filters={"label": f"{LABEL_EGRESS}={key}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.remove_container(row["Id"], force=True)
    for attempt in range(50):
        try:
            api.remove_volume(_egress_volume(key))
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "in use" not in str(exc.explanation) or attempt == 49:
                raise
            time.sleep(0.1)  # a removal in progress still holds its mount


def _sweep_egress(api: docker.APIClient, now: datetime, labels: Mapping[str, str]) -> None:
    wanted = [LABEL_EGRESS, *(f"{k}={v}" for k, v in labels.items())]
    for volume in api.volumes(filters={"label": wanted}).get("Volumes") or []:
        found = volume.get("Labels") or {}
        expires = _labels.expires_at(found)
        if expires is not None and expires <= now:
            _remove_egress(api, found[LABEL_EGRESS])


_SPOOL = 16 * 1024 * 1024


@contextlib.contextmanager
def _spooled_tar(source: Path) -> Iterator[IO[bytes]]:
    """A tar of ``source``'s tree (as ``.``), in memory up to 16 MiB and on disk beyond."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            tar.add(str(source), arcname=".")
        spool.seek(0)
        yield spool


def _put_archive(
    api: docker.APIClient, container: str, path: str, data: Iterator[bytes] | IO[bytes]
) -> None:
    url = api._url("/containers/{0}/archive", container)
    # copyUIDGID: files belong to the container's user, as if it had written them itself;
    # noOverwriteDirNonDir: the engine refuses to replace a directory by a file (or the reverse)
    # instead of deleting the directory's whole tree.
    params = {"path": path, "copyUIDGID": "1", "noOverwriteDirNonDir": "1"}
    res = api._put(url, params=params, data=data)
    api._raise_for_status(res)


def _refused_overwrite(exc: SandboxError, path: str, where: dict[str, Any]) -> SandboxError:
    """``IsADirectory`` for the engine's refusal to put a file where a directory is."""
    if "cannot overwrite" in str(exc).lower():
        return IsADirectory(f"is a directory: {path} (left as it was)", **where)
    return exc


def _stat_archive(api: docker.APIClient, container: str, path: str) -> dict[str, Any] | None:
    url = api._url("/containers/{0}/archive", container)
    res = api.head(url, params={"path": path})
    if res.status_code == 404:
        # a HEAD has no body: tell a missing path from a missing container by asking again
        api.inspect_container(container)
        return None
    api._raise_for_status(res)
    return _wire.decode_stat_header(res.headers.get("X-Docker-Container-Path-Stat"))


def _read_archive(
    api: docker.APIClient, container: str, path: str, max_bytes: int
) -> tuple[str, bytes]:
    """``("file", bytes)``, ``("dir", b"")``, ``("link", target)``, ``("other", b"")`` for a
    FIFO, device or socket, or ``("large", b"")`` past ``max_bytes``, for ``path``. Only a
    regular file within the limit has its content read."""
    url = api._url("/containers/{0}/archive", container)
    res = api._get(url, params={"path": path}, stream=True, headers={"Accept-Encoding": "identity"})
    try:
        api._raise_for_status(res)
        stat = _wire.decode_stat_header(res.headers.get("X-Docker-Container-Path-Stat")) or {}
        if _wire.is_dir(stat):
            return "dir", b""
        if stat.get("linkTarget"):
            return "link", str(stat["linkTarget"]).encode("utf-8", "surrogateescape")
        if stat and not _wire.is_regular(stat):
            return "other", b""
        if int(stat.get("size", 0)) > max_bytes:
            return "large", b""
        member = _wire.TarReader(res.iter_content(_wire.CHUNK)).first_file(max_bytes)
        if member is None:
            return "file", b""
        info, content = member
        if info.issym() or info.islnk():
            return "link", info.linkname.encode("utf-8", "surrogateescape")
        if not info.isreg():
            return "other", b""
        if info.size > max_bytes:
            return "large", b""
        return "file", content
    finally:
        res.close()
