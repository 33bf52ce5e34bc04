"""Every service container gets a per-request time limit (issue 13), 60 s unless configured."""

from django.test import override_settings

from deployments.models import Service
from deployments.worker import _container_env


def service() -> Service:
    return Service(name="churnpred", cpus=1.0, primary_key="p", secondary_key="s", proxy_key="x")


def test_a_service_container_has_a_60_s_request_timeout_by_default():
    assert _container_env(service())["MLPORTAL_REQUEST_TIMEOUT"] == "60"


@override_settings(MLPORTAL_SCORING_TIMEOUT_SECONDS=2.5)
def test_the_request_timeout_follows_the_setting():
    assert _container_env(service())["MLPORTAL_REQUEST_TIMEOUT"] == "2.5"
