"""The rollback rule, the bucket quantiles and the recorder's rows, on the test database."""
from __future__ import annotations

import pytest

from gateway.metrics import LATENCY_BUCKETS
from gateway.services import DEFAULT_THRESHOLDS, check_thresholds, check_weight
from gateway.worker import quantile_ms, tripped
from core.errors import PortalError


def _figures(requests, errors, p99):
    return {"requests": requests, "errors": errors, "error_rate": 100.0 * errors / requests if requests else None,
            "p99_ms": p99}


def test_the_canary_trips_on_error_rate_or_p99_only_with_enough_requests():
    limits = dict(DEFAULT_THRESHOLDS)
    assert tripped(_figures(10, 10, 5), _figures(100, 0, 5), limits) is None  # under min_requests
    reason = tripped(_figures(40, 40, 5), _figures(100, 1, 5), limits)
    assert reason.startswith("error rate 100.0% over 40 requests") and "live revision's 1.0%" in reason
    assert tripped(_figures(40, 2, 5), _figures(100, 1, 5), limits) is None  # 5% vs 1%: within 5 points
    reason = tripped(_figures(40, 0, 250), _figures(100, 0, 50), limits)
    assert reason.startswith("p99 latency 250 ms") and "50 ms" in reason
    assert tripped(_figures(40, 0, 75), _figures(100, 0, 50), limits) is None  # under 2x and under +50 ms


def test_quantiles_come_from_the_bucket_bounds():
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    buckets[2] = 90  # 5 ms
    buckets[8] = 10  # 100 ms
    assert quantile_ms(buckets, 0.5) == 5.0 and quantile_ms(buckets, 0.95) == 100.0
    assert quantile_ms([0] * len(buckets), 0.5) is None


def test_weights_and_thresholds_are_checked():
    assert check_weight("10", "canary") == 10
    for bad in (0, 100, -5, "ten", True, None):
        with pytest.raises(PortalError) as caught:
            check_weight(bad, "canary")
        assert "1 to 99" in caught.value.message
    assert check_thresholds({"error_points": 1})["error_points"] == 1.0
    with pytest.raises(PortalError):
        check_thresholds({"latency": 3})
    with pytest.raises(PortalError):
        check_thresholds({"p99_factor": "fast"})


@pytest.mark.django_db
def test_the_recorder_writes_running_totals_per_minute_and_writer(owner, workspace):
    from deployments.models import Environment, Service
    from gateway.models import TrafficMinute
    from gateway.recorder import Recorder
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="t")
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image)
    recorder = Recorder()
    for status in (200, 200, 500):
        recorder.count(str(service.pk), 1, status, 0.004)
    recorder.shadow(str(service.pk), 2, 200, 0.02, True)
    recorder.shadow(str(service.pk), 2, 200, 0.02, False)
    recorder.count("00000000-0000-0000-0000-000000000000", 1, 200, 0.01)  # a deleted service: skipped
    assert recorder.flush(reconnect=False) == 3
    recorder.count(str(service.pk), 1, 200, 0.004)
    recorder.flush(reconnect=False)
    live = TrafficMinute.objects.get(service=service, revision=1)
    assert (live.requests, live.errors, sum(live.latency_buckets)) == (4, 1, 4)
    shadow = TrafficMinute.objects.get(service=service, revision=2)
    assert (shadow.shadow_requests, shadow.shadow_agreed) == (2, 1)
    assert recorder.flush(reconnect=False) == 0  # nothing new: nothing written
