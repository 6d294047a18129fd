"""The Worker users deploy, run by workerd (the Workers runtime) on 127.0.0.1, without Containers.

workerd comes with the Worker's npm dependencies (wrangler's own local runtime). The Worker's
source is bundled with esbuild as ``.ci/run`` bundles it, and served with what ``wrangler.jsonc``
declares: its compatibility date and flags, its variables, its three Durable Object classes
(SQLite-backed, on a temporary disk). Only Containers are missing -- workerd would need the
``cloudflare/sandbox`` image, which is not reachable offline -- so a route that needs a container
answers as the real Worker does when Cloudflare cannot start one (the warm pool's ``pool_error``).
Everything else is the real code: the bridge's routes from ``@cloudflare/sandbox``, Hono's
routing, the registry's SQL, agent-sandbox's routes and their validation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "worker"
BIN = WORKER / "node_modules" / ".bin"


def missing() -> str | None:
    """Why the real Worker cannot run here, or ``None``."""
    if not (BIN / "workerd").exists() or not (BIN / "esbuild").exists():
        return "the Worker's npm dependencies are not installed (npm ci in its folder)"
    return None


def wrangler_config() -> dict[str, object]:
    """``wrangler.jsonc`` without its comments (whole-line ``//`` comments only)."""
    lines = (WORKER / "wrangler.jsonc").read_text().splitlines()
    config: dict[str, object] = json.loads(
        "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    )
    return config


def _capnp_string(value: str) -> str:
    return json.dumps(value)


class RealWorker:
    """The Worker in workerd: ``with RealWorker(api_key) as worker: worker.url``."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.url = ""
        self._dir = Path(tempfile.mkdtemp(prefix="cf-workerd-"))
        self._process: subprocess.Popen[bytes] | None = None

    def _bundle(self) -> None:
        subprocess.run(
            [
                str(BIN / "esbuild"),
                "src/index.ts",
                "--bundle",
                "--format=esm",
                "--platform=neutral",
                "--main-fields=module,main",
                "--conditions=workerd,worker,import",
                "--loader:.sh=text",
                "--external:cloudflare:*",
                "--external:node:*",
                f"--outfile={self._dir / 'index.js'}",
                "--log-level=warning",
            ],
            cwd=WORKER,
            check=True,
            capture_output=True,
        )

    def _config(self, port: int) -> str:
        wrangler = wrangler_config()
        variables = dict(wrangler.get("vars", {}))  # type: ignore[call-overload]
        variables["SANDBOX_API_KEY"] = self.api_key
        classes = [b["class_name"] for b in wrangler["durable_objects"]["bindings"]]  # type: ignore[index]
        bindings = [
            f"(name = {_capnp_string(k)}, text = {_capnp_string(v)})" for k, v in variables.items()
        ]
        bindings += [f'(name = "{c}", durableObjectNamespace = "{c}")' for c in classes]
        namespaces = [f'(className = "{c}", uniqueKey = "{c}", enableSql = true)' for c in classes]
        flags = ", ".join(_capnp_string(f) for f in wrangler["compatibility_flags"])  # type: ignore[union-attr]
        storage = self._dir / "durable-objects"
        storage.mkdir()
        return f"""using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "storage", disk = (path = {_capnp_string(str(storage))}, writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);
const worker :Workerd.Worker = (
  modules = [(name = "index.js", esModule = embed "index.js")],
  compatibilityDate = {_capnp_string(str(wrangler["compatibility_date"]))},
  compatibilityFlags = [{flags}],
  bindings = [{", ".join(bindings)}],
  durableObjectNamespaces = [{", ".join(namespaces)}],
  durableObjectStorage = (localDisk = "storage"),
);
"""

    def start(self) -> RealWorker:
        """Bundle the Worker and serve it on a free loopback port."""
        self._bundle()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (self._dir / "config.capnp").write_text(self._config(port))
        log = (self._dir / "workerd.log").open("wb")
        self._process = subprocess.Popen(
            [str(BIN / "workerd"), "serve", "config.capnp", "--experimental"],
            cwd=self._dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"workerd did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        """What workerd printed (the Worker's console output and its errors)."""
        path = self._dir / "workerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop workerd (its whole process group) and remove its files."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RealWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
