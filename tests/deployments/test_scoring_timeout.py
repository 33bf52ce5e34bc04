"""Every service container gets a per-request time limit (issue 13), 60 s unless configured."""

from django.test import override_settings

from deployments.worker import _scoring_limits_env


def test_a_service_container_has_a_60_s_request_timeout_by_default():
    assert _scoring_limits_env()["MLPORTAL_REQUEST_TIMEOUT"] == "60"


@override_settings(MLPORTAL_SCORING_TIMEOUT_SECONDS=2.5)
def test_the_request_timeout_follows_the_setting():
    assert _scoring_limits_env()["MLPORTAL_REQUEST_TIMEOUT"] == "2.5"
