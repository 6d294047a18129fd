"""Compile the exec agent (``agent.c``) into small static Linux binaries, reproducibly.

Zig's C compiler (the ``ziglang`` distribution, pinned in the provider's build requirements)
cross-compiles it against the musl C library Zig ships, for every architecture we package, on
any host. The flags leave out everything that varies between builds (paths, build ids, symbols),
so the same source and the same Zig give the same bytes.

    python agent/build.py OUT_DIR      # writes OUT_DIR/agent-x86_64 and OUT_DIR/agent-aarch64
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("agent.c")
TARGETS = ("x86_64", "aarch64")
FLAGS = [
    "-static",
    "-Os",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-ident",
    "-Wl,--build-id=none",
    "-s",
]


def build(out_dir: Path, targets: tuple[str, ...] = TARGETS) -> list[Path]:
    """Build ``agent-<arch>`` for each target into ``out_dir`` (skipping up-to-date ones)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for arch in targets:
        output = out_dir / f"agent-{arch}"
        if not output.exists() or output.stat().st_mtime < SOURCE.stat().st_mtime:
            command = [sys.executable, "-m", "ziglang", "cc", "-target", f"{arch}-linux-musl"]
            command += [*FLAGS, f"-ffile-prefix-map={SOURCE.parent}=.", "-o", str(output)]
            subprocess.run([*command, SOURCE.name], cwd=SOURCE.parent, check=True)
        built.append(output)
    return built


if __name__ == "__main__":
    build(Path(sys.argv[1]))
