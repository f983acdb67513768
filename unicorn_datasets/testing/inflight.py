"""Reading a fake server's in-flight time series: the benches' and tests' measures of a client's window."""

from __future__ import annotations


def inflight_summary(series: list[list[float]], start: float, end: float) -> dict[str, float]:
    """Mean and 5th percentile of the sampled in-flight count between two server times."""
    values = sorted(int(sample[1]) for sample in series if start <= sample[0] <= end)
    if not values:
        return {"mean": 0.0, "p5": 0.0, "samples": 0}
    return {"mean": sum(values) / len(values), "p5": float(values[int(0.05 * (len(values) - 1))]),
            "samples": len(values)}


def drain_time(series: list[list[float]], total: int, window: int) -> float | None:
    """When the client had sent all but its last `window` requests: after that no full window can exist,
    so in-flight counts measure the tail of the latency distribution, not the client."""
    return next((sample[0] for sample in series if sample[2] >= total - window), None)
