"""Gamma-distributed arrival gaps: seeded, mean 1/R, variance set by burstiness; seeded disconnect picks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from benchmarks.load.arrivals import arrival_gaps, arrival_offsets
from benchmarks.load.runner import LoadSchedule, disconnect_delays

N = 20_000


def gaps(rate: float, burstiness: float, seed: int = 0, count: int = N) -> np.ndarray:
    return np.fromiter(itertools.islice(arrival_gaps(rate, burstiness, np.random.default_rng(seed)), count), float)


def test_seeded() -> None:
    assert arrival_offsets(50, 4.0, 1.0, seed=3) == arrival_offsets(50, 4.0, 1.0, seed=3)
    assert arrival_offsets(50, 4.0, 1.0, seed=3) != arrival_offsets(50, 4.0, 1.0, seed=4)


def test_offsets_start_at_zero_and_increase() -> None:
    offsets = arrival_offsets(100, 10.0, 1.0, seed=0)
    assert offsets[0] == 0.0 and all(b >= a for a, b in zip(offsets, offsets[1:]))
    assert np.allclose(np.diff(offsets), gaps(10.0, 1.0, count=99))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_mean_gap_is_one_over_rate(burstiness: float) -> None:
    assert gaps(10.0, burstiness).mean() == pytest.approx(0.1, rel=0.05)


def test_burstiness_sets_the_variance() -> None:
    """Variance 1/(B R^2): burstier (smaller B) means more spread at the same mean."""
    rate = 10.0
    variances = {b: gaps(rate, b).var() for b in (0.25, 1.0, 4.0)}
    assert variances[0.25] > variances[1.0] > variances[4.0]
    for b, variance in variances.items():
        assert variance == pytest.approx(1 / (b * rate**2), rel=0.1)


def test_poisson_gaps_are_exponential() -> None:
    """B = 1: the coefficient of variation of exponential gaps is 1."""
    values = gaps(5.0, 1.0)
    assert values.std() / values.mean() == pytest.approx(1.0, rel=0.05)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(100, math.inf, 1.0, seed=0) == [0.0] * 100
    assert arrival_offsets(10, math.inf, 0.5, seed=1) == [0.0] * 10


@pytest.mark.parametrize("rate, burstiness", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, math.inf)])
def test_invalid(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(1, rate, burstiness, seed=0)


def test_disconnect_picks_are_seeded_and_within_bounds() -> None:
    schedule = LoadSchedule(seed=1, disconnect_fraction=0.3, disconnect_max_delay_s=2.0)
    delays = list(itertools.islice(disconnect_delays(schedule), N))
    assert delays == list(itertools.islice(disconnect_delays(schedule), N))
    chosen = np.array([d for d in delays if d is not None])
    assert len(chosen) / N == pytest.approx(0.3, abs=0.02)
    assert chosen.min() >= 0.0 and chosen.max() < 2.0 and chosen.mean() == pytest.approx(1.0, abs=0.05)
    other = itertools.islice(disconnect_delays(LoadSchedule(seed=2, disconnect_fraction=0.3)), N)
    assert [d is None for d in delays] != [d is None for d in other]
    assert all(d is None for d in itertools.islice(disconnect_delays(LoadSchedule(seed=1)), N))  # fraction 0
