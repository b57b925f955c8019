"""When requests are sent: gaps drawn from a gamma distribution.

With rate R and burstiness B the gaps have shape B and scale 1/(R*B): mean
1/R whatever B is, variance 1/(B*R^2). B = 1 is a Poisson process, B < 1 is
burstier, B > 1 more regular. An infinite rate sends everything at once. The
first request goes at time 0, as in vLLM's benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def check(rate: float, burstiness: float) -> None:
    if not rate > 0:
        raise ValueError(f"request rate must be positive (or inf), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a positive number, got {burstiness}")


def arrival_gaps(rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    """Endless gaps in seconds between successive requests (ValueError at once for bad arguments)."""
    check(rate, burstiness)
    return _gaps(rate, burstiness, rng)


def _gaps(rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    if math.isinf(rate):
        while True:
            yield 0.0
    scale = 1.0 / (rate * burstiness)
    while True:
        yield float(rng.gamma(shape=burstiness, scale=scale))


def arrival_times(rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    """Endless send times in seconds from the start: 0, then the running sum of the gaps."""
    return _times(arrival_gaps(rate, burstiness, rng))


def _times(gaps: Iterator[float]) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += next(gaps)


def arrival_offsets(count: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """The first `count` send times of a seeded schedule."""
    times = arrival_times(rate, burstiness, np.random.default_rng(seed))
    return [next(times) for _ in range(count)]
