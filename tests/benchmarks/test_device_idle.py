"""The idle-gap arithmetic of benchmarks/device_idle.py, on hand-made activity lists."""

from __future__ import annotations

from benchmarks.device_idle import Activity, idle_gaps, summary


def test_overlapping_activities_are_one_busy_span_and_gaps_name_their_neighbours() -> None:
    activities = [Activity("copy", 100.0, 110.0), Activity("gemm", 0.0, 40.0), Activity("norm", 30.0, 50.0),
                  Activity("argmax", 52.0, 60.0), Activity("cat", 400.0, 405.0)]
    report = idle_gaps(activities)
    assert report.busy_us == 50.0 + 8.0 + 10.0 + 5.0
    assert report.window_us == 405.0
    assert report.gaps == [(2.0, "norm", "argmax"), (40.0, "argmax", "copy"), (290.0, "copy", "cat")]


def test_an_activity_inside_a_longer_one_does_not_end_its_span() -> None:
    report = idle_gaps([Activity("long", 0.0, 100.0), Activity("short", 10.0, 20.0), Activity("next", 130.0, 140.0)])
    assert report.busy_us == 110.0
    assert report.gaps == [(30.0, "short", "next")]


def test_no_activity_no_gap() -> None:
    assert idle_gaps([]).gaps == [] and idle_gaps([]).busy_us == 0.0


def test_summary_groups_gaps_by_length_and_by_neighbours() -> None:
    activities = [Activity("a", 0.0, 10.0), Activity("b", 40.0, 50.0), Activity("a", 60.0, 70.0),
                  Activity("b", 100.0, 110.0), Activity("c", 111.0, 112.0)]
    text = summary(idle_gaps(activities), activities)
    assert "gaps    20-50    us:      2,     0.06 ms" in text
    assert "0.06 ms     2x  a -> b" in text
    assert "0.02 ms      2x    10.0 us  a" in text
