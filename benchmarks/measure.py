"""How every benchmark here measures (not a benchmark itself): cases run interleaved, each round
in the opposite order to the one before, so machine noise hits all alike; then medians or
percentiles and their ratios to a baseline named in the same run.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping

Case = Callable[[], object]
"""One measured operation: a function that does it (sync, or returning an awaitable)."""


async def timed(case: Case) -> float:
    """Seconds one call of ``case`` took (awaiting what it returns, if anything)."""
    start = time.perf_counter()
    result = case()
    if inspect.isawaitable(result):
        await result
    return time.perf_counter() - start


async def interleave(
    cases: Mapping[str, Case],
    runs: int,
    *,
    warmup: int = 5,
    alternate: bool = True,
    after_round: Callable[[], Awaitable[object]] | None = None,
) -> dict[str, list[float]]:
    """Run each case once per round, ``warmup`` rounds unmeasured then ``runs`` measured; the
    seconds each measured call took, per case.

    Every other round runs the cases in reverse order, so none always goes first; with
    ``alternate=False`` the order is always the given one (for cases that depend on it).
    ``after_round`` runs after every round, outside the measurement.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for i in range(warmup + runs):
        for name, case in order if i % 2 == 0 or not alternate else reversed(order):
            took = await timed(case)
            if i >= warmup:
                samples[name].append(took)
        if after_round is not None:
            await after_round()
    return samples


def percentile(values: list[float], q: float) -> float:
    """The ``q`` (0 to 1) percentile of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report_medians(samples: dict[str, list[float]], ratios: list[tuple[str, str, str]]) -> None:
    """Print each case's median, quartiles and mean (ms), then for each ``(case, baseline,
    note)`` of ``ratios`` the ratio of their medians."""
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    width = max(5, *map(len, samples))
    for name, values in samples.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(
            f"{name:{width}s} median {medians[name]:7.2f} ms  (quartiles {q1 * 1000:.2f}-"
            f"{q3 * 1000:.2f}, mean {statistics.fmean(values) * 1000:.2f}) over {len(values)} runs"
        )
    labels = {(case, base): f"ratio {case}/{base}:" for case, base, _ in ratios}
    width = max(map(len, labels.values()))
    for case, base, note in ratios:
        ratio = medians[case] / medians[base]
        print(f"{labels[case, base]:{width}s} {ratio:.2f}  ({note})")


def report_percentiles(title: str, samples: dict[str, list[float]], baseline: str) -> None:
    """Print p50 and p99 (ms) of each case and their ratios to ``baseline``'s."""
    medians = {name: statistics.median(values) for name, values in samples.items()}
    p99 = {name: percentile(values, 0.99) for name, values in samples.items()}
    print(f"\n{title}  ({min(len(v) for v in samples.values())} runs)")
    for name, value in medians.items():
        print(
            f"  {name:<34} p50 {value * 1000:9.2f} ms {value / medians[baseline]:6.3f}x   "
            f"p99 {p99[name] * 1000:9.2f} ms {p99[name] / p99[baseline]:6.3f}x   ({baseline})"
        )
