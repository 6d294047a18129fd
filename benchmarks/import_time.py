"""What importing agent-sandbox costs, from ``python -X importtime`` in fresh interpreters.

Each statement runs in a new interpreter N times (interleaved, so machine noise hits all alike);
the figure is the median of the cumulative microseconds ``-X importtime`` reports for the
modules the statement imports (the interpreter's own start-up excluded). The named baseline is
``import pydantic``, the floor of any code that builds our models. Also prints the ten modules
that cost most, by their own time, in the heaviest statement.

Run: ``uv run python benchmarks/import_time.py [--runs N]``. Target: ``import agent_sandbox``
<= 100 ms, with no vendor SDK imported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

BASELINE = "import pydantic"
STATEMENTS = {
    "baseline: import pydantic": BASELINE,
    "import agent_sandbox": "import agent_sandbox",
    "from agent_sandbox import Sandbox": "from agent_sandbox import Sandbox",
    "every public name (the old eager import)": (
        "import agent_sandbox as m; [getattr(m, n) for n in m.__all__]"
    ),
    "the CLI's entry point": "import agent_sandbox.cli",
}
VENDORS = ("docker", "e2b", "daytona", "modal", "mcp", "anthropic", "openai", "opentelemetry")
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def importtime(statement: str) -> tuple[int, dict[str, int], list[str]]:
    """Total µs of the statement's imports, own µs per module, and vendor SDKs it loaded."""
    code = f"{statement}\nimport sys\nprint(','.join(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    before = set(
        subprocess.run(
            [sys.executable, "-c", "import sys; print(','.join(sorted(sys.modules)))"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(",")
    )
    loaded = set(proc.stdout.strip().split(",")) - before
    total = 0
    own: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, indent, name = match.groups()
        own[name] = int(self_us)
        if not indent and name in loaded:  # a top-level import of the statement
            total += int(cumulative_us)
    vendors = sorted(m for m in loaded if m.split(".")[0] in VENDORS and "." not in m)
    return total, own, vendors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per statement")
    args = parser.parse_args()

    totals: dict[str, list[int]] = {name: [] for name in STATEMENTS}
    own_last: dict[str, dict[str, int]] = {}
    vendors: dict[str, list[str]] = {}
    for _ in range(args.runs):
        for name, statement in STATEMENTS.items():
            total, own, loaded_vendors = importtime(statement)
            totals[name].append(total)
            own_last[name] = own
            vendors[name] = loaded_vendors

    base = statistics.median(totals["baseline: import pydantic"])
    print(
        f"python -X importtime, median of {args.runs} fresh interpreters ({sys.version.split()[0]})"
    )
    print(f"{'statement':<44} {'ms':>7} {'vs pydantic':>12}  vendor SDKs")
    for name in STATEMENTS:
        median = statistics.median(totals[name])
        print(
            f"{name:<44} {median / 1000:>7.1f} {median / base:>11.2f}x  "
            f"{', '.join(vendors[name]) or '-'}"
        )
    heaviest = max(STATEMENTS, key=lambda n: statistics.median(totals[n]))
    print(f"\nmost expensive modules by own time in {heaviest!r} (last run, ms):")
    top = sorted(own_last[heaviest].items(), key=lambda item: item[1], reverse=True)[:10]
    for module, micros in top:
        print(f"  {micros / 1000:6.1f}  {module}")


if __name__ == "__main__":
    main()
