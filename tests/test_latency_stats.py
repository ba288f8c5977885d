"""Latency statistics (`percentile`, `summarize`) against NumPy, at the edges
the benchmark tables depend on: q = 0 and 100, fractional ranks, unsorted and
integer timings, one sample, and the errors for impossible requests."""

import math

import numpy as np
import pytest

from kd_keras import bench


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101])
def test_percentile_equals_numpy_linear_at_every_rank(size):
    rng = np.random.default_rng(size)
    # Unsorted, with ties, so the interpolation reads the right neighbours.
    values = list(np.round(rng.exponential(size=size), 1))
    for q in (0, 0.5, 12.5, 33.3, 50, 66.7, 90, 97.5, 99, 99.9, 100):
        expected = np.percentile(np.asarray(values, np.float64), q, method="linear")
        assert bench.percentile(values, q) == pytest.approx(expected, rel=0, abs=1e-12), q


def test_percentile_interpolates_between_the_two_closest_ranks():
    # rank = 0.95 * 3 = 2.85: 30 + 0.85 * (40 - 30)
    assert bench.percentile([40, 10, 30, 20], 95) == pytest.approx(38.5, abs=1e-12)
    assert bench.percentile([40, 10, 30, 20], 0) == 10.0
    assert bench.percentile([40, 10, 30, 20], 100) == 40.0
    assert isinstance(bench.percentile([1, 2], 50), float)


@pytest.mark.parametrize("q", [-1e-9, -5, 100.000001, 250])
def test_percentile_refuses_q_outside_0_100(q):
    with pytest.raises(ValueError, match=r"^q must be in \[0, 100\], got "):
        bench.percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^percentile of an empty list of timings\.$"):
        bench.percentile([], 50)


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_summarize_equals_numpy(size):
    rng = np.random.default_rng(10 + size)
    timings = rng.gamma(2.0, 3.0, size=size)
    stats = bench.summarize(list(timings))
    assert sorted(stats) == sorted(
        ["mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p99_ms"]
    )
    assert stats["mean_ms"] == pytest.approx(timings.mean(), rel=1e-12)
    # Population standard deviation (ddof=0), not the sample one.
    assert stats["std_ms"] == pytest.approx(timings.std(ddof=0), rel=1e-9, abs=1e-12)
    assert stats["min_ms"] == timings.min() and stats["max_ms"] == timings.max()
    for q in (50, 90, 99):
        assert stats[f"p{q}_ms"] == pytest.approx(np.percentile(timings, q), rel=1e-12)


def test_summarize_hand_values():
    stats = bench.summarize([2, 4, 4, 4, 5, 5, 7, 9])
    assert stats["mean_ms"] == 5.0
    assert stats["std_ms"] == 2.0  # the textbook population-std example
    assert math.isclose(stats["p90_ms"], 7 + 0.3 * 2)


def test_summarize_of_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^No timings to summarize: runs must be >= 1\.$"):
        bench.summarize([])
