"""The autoscaler's rule with plain numbers: up at once, down only after a stable window, within
min and max; and the checks of its settings."""
from __future__ import annotations

import pytest

from deployments.autoscale import (
    AutoscaleInvalid, Sample, Settings, busy_from_counters, check_settings, decide, desired_for, parse_metrics,
)

SETTINGS = Settings(min_replicas=1, max_replicas=3, target_utilization=70, refresh_seconds=1, stable_seconds=10)


def samples(busy_by_second: list[float], *, replicas: int = 1, workers_per_replica: int = 1, start: float = 0.0):
    return [Sample(at=start + i + 1, replicas=replicas, workers=replicas * workers_per_replica, busy=b)
            for i, b in enumerate(busy_by_second)]


def test_it_scales_up_at_once_when_the_window_is_over_the_target():
    decision = decide(samples([0.0, 0.95]), current=1, settings=SETTINGS, now=2)
    assert decision.scale and decision.replicas == 2
    assert decision.figures["utilization"] == 95.0 and decision.figures["target"] == 70
    assert "above the target 70%" in decision.reason


def test_it_never_goes_above_max():
    decision = decide(samples([5.0]), current=2, settings=SETTINGS, now=1)
    assert decision.replicas == 3 and decision.desired == 3


def test_it_holds_at_the_target():
    assert not decide(samples([0.6]), current=1, settings=SETTINGS, now=1).scale
    assert not decide(samples([1.3], replicas=2), current=2, settings=SETTINGS, now=1).scale


def test_it_scales_down_only_after_a_whole_stable_window_asked_for_fewer():
    busy = [1.9] * 3 + [0.0] * 9  # load stopped after 3 s; the window is 10 s
    early = decide(samples(busy, replicas=3), current=3, settings=SETTINGS, now=len(busy))
    assert not early.scale and "stable window of 10 s" in early.reason
    later = decide(samples(busy + [0.0] * 2, replicas=3), current=3, settings=SETTINGS, now=len(busy) + 2)
    assert later.scale and later.replicas == 1
    assert "every sample of the last 10 s" in later.reason


def test_a_busy_sample_inside_the_stable_window_keeps_what_it_asked_for():
    busy = [0.0] * 12
    busy[5] = 1.2  # asked for 2
    decision = decide(samples(busy, replicas=3), current=3, settings=SETTINGS, now=12)
    assert decision.replicas == 2


def test_it_never_goes_below_min_and_a_count_outside_the_bounds_comes_inside():
    settings = Settings(min_replicas=2, max_replicas=4, stable_seconds=2)
    assert decide(samples([0.0] * 5, replicas=2), current=2, settings=settings, now=5).replicas == 2
    assert decide([], current=1, settings=settings, now=0).replicas == 2
    assert decide([], current=6, settings=settings, now=0).replicas == 4


def test_it_averages_over_the_refresh_window():
    settings = Settings(refresh_seconds=4, max_replicas=5)
    # 0.9, 0.1, 0.1, 0.1 → 0.3 average: one replica is enough
    assert not decide(samples([0.9, 0.1, 0.1, 0.1]), current=1, settings=settings, now=4).scale


def test_desired_counts_workers_per_replica():
    assert desired_for(3.0, 2, 70) == 3  # 3 busy of 2-worker replicas at 70% → 2.14 → 3
    assert desired_for(1.4, 2, 70) == 1
    assert desired_for(0.0, 2, 70) == 0


def test_busy_comes_from_counter_deltas_and_a_restarted_replica_counts_from_zero():
    assert busy_from_counters({"a": 10.0, "b": 5.0}, {"a": 11.5, "b": 5.5}, 2.0) == 1.0
    assert busy_from_counters({"a": 10.0}, {"a": 0.2, "c": 3.0}, 1.0) == 0.0


def test_parse_metrics_reads_the_scoring_servers_counters():
    text = "# HELP x\nmlportal_request_duration_seconds_sum 12.500000\nmlportal_workers 2\nmlportal_workers_ready 2\n"
    assert parse_metrics(text) == {"busy_seconds": 12.5, "workers": 2.0}


def test_settings_default_to_azure_mls_within_the_portals_cap():
    assert check_settings({"enabled": True}, cap=8) == {
        "enabled": True, "min_replicas": 1, "max_replicas": 8, "target_utilization": 70, "refresh_seconds": 1,
        "stable_seconds": 60}
    assert check_settings({"enabled": "true"}, cap=20)["max_replicas"] == 10


@pytest.mark.parametrize("given, field, words", [
    ({"min_replicas": 4, "max_replicas": 2}, "autoscale_min_replicas", "is above autoscale_max_replicas"),
    ({"target_utilization": 0}, "autoscale_target_utilization", "from 1 to 100"),
    ({"target_utilization": 101}, "autoscale_target_utilization", "from 1 to 100"),
    ({"refresh_seconds": 0.5}, "autoscale_refresh_seconds", "at least 1 second"),
    ({"refresh_seconds": "0"}, "autoscale_refresh_seconds", "at least 1 second"),
    ({"max_replicas": 9}, "autoscale_max_replicas", "from 1 to 8"),
    ({"min_replicas": "two"}, "autoscale_min_replicas", "whole number"),
    ({"enabled": "maybe"}, "autoscale_enabled", "true or false"),
])
def test_bad_settings_are_refused_naming_the_field(given, field, words):
    with pytest.raises(AutoscaleInvalid) as raised:
        check_settings({"enabled": True, **given}, cap=8)
    assert field in raised.value.fields and words in str(raised.value)


def test_fixed_replicas_and_autoscale_together_are_refused():
    with pytest.raises(AutoscaleInvalid) as raised:
        check_settings({"enabled": True}, cap=8, replicas_given=True)
    assert set(raised.value.fields) == {"replicas", "autoscale_enabled"} and "exclude each other" in str(raised.value)
    assert check_settings({"enabled": False}, cap=8, replicas_given=True)["enabled"] is False


def test_an_update_keeps_the_settings_it_does_not_name():
    current = check_settings({"enabled": True, "min_replicas": 2, "max_replicas": 5}, cap=8)
    assert check_settings({"target_utilization": 50}, current=current, cap=8) == {**current, "target_utilization": 50}


def test_a_stable_window_with_gaps_does_not_scale_down():
    # Only two readable samples in a 10 s window (the others missing): not enough to judge.
    sparse = [Sample(at=1, replicas=3, workers=3, busy=1.9), Sample(at=11, replicas=3, workers=3, busy=0.0),
              Sample(at=12, replicas=3, workers=3, busy=0.0)]
    assert not decide(sparse, current=3, settings=SETTINGS, now=12).scale
