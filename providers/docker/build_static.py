"""Compile a provider's C program into small static Linux binaries, reproducibly.

Zig's C compiler (the ``ziglang`` distribution, pinned in the provider's build requirements)
cross-compiles it against the musl C library Zig ships, for each architecture asked for, on any
host. The flags leave out everything that varies between builds (paths, build ids, symbols), so
the same source and the same Zig give the same bytes.

The wheel build runs it through ``hatch_build.py``, with the source and the architectures the
provider's ``pyproject.toml`` names. Every provider that ships a C program holds a byte-identical
copy of this file (a source distribution must build on its own); ``tests/test_packaging.py``
checks that they agree, and that the binaries shipped are rebuilt byte for byte.

    python build_static.py SOURCE OUT_DIR ARCH...   # writes OUT_DIR/<source name>-<arch>
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

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


def build(source: Path, targets: Iterable[str], out_dir: Path) -> list[Path]:
    """Build ``<source name>-<arch>`` for each target into ``out_dir`` (skipping up-to-date ones)."""
    source, out_dir = source.resolve(), out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for arch in targets:
        output = out_dir / f"{source.stem}-{arch}"
        if not output.exists() or output.stat().st_mtime < source.stat().st_mtime:
            command = [sys.executable, "-m", "ziglang", "cc", "-target", f"{arch}-linux-musl"]
            command += [*FLAGS, f"-ffile-prefix-map={source.parent}=.", "-o", str(output)]
            subprocess.run([*command, source.name], cwd=source.parent, check=True)
        built.append(output)
    return built


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[3:], Path(sys.argv[2]))
