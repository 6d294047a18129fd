"""Compile the command runner (``shim.c``) into a small static Linux binary, reproducibly.

Zig's C compiler (the ``ziglang`` distribution, pinned in the provider's build requirements)
compiles it against the musl C library Zig ships, on any host, for x86_64: Vercel's sandboxes
are linux/amd64 only. The flags leave out everything that varies between builds (paths, build
ids, symbols), so the same source and the same Zig give the same bytes.

    python shim/build.py OUT_DIR      # writes OUT_DIR/shim-x86_64
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("shim.c")
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


def build(out_dir: Path) -> list[Path]:
    """Build ``shim-x86_64`` into ``out_dir`` (unless it is up to date)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "shim-x86_64"
    if not output.exists() or output.stat().st_mtime < SOURCE.stat().st_mtime:
        command = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-linux-musl"]
        command += [*FLAGS, f"-ffile-prefix-map={SOURCE.parent}=.", "-o", str(output)]
        subprocess.run([*command, SOURCE.name], cwd=SOURCE.parent, check=True)
    return [output]


if __name__ == "__main__":
    build(Path(sys.argv[1]))
