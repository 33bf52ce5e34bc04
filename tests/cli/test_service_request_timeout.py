"""`mlportal service update --request-timeout` sets a service's own request time limit (issue 13)."""
from __future__ import annotations

import json

from tests.cli.conftest import assert_one_error_line
from tests.deployments.test_request_timeout import healthy  # noqa: F401 (fixture)


def test_the_cli_sets_the_limit_and_names_a_bad_one(cli, login, owner, healthy):
    from deployments.models import Service
    from tests.cli.conftest import assert_one_error_line

    login(owner)
    assert_one_error_line(cli("service", "update", "-n", "svc", "--request-timeout", "soon"),
                          contains="--request-timeout takes seconds (e.g. 30 or 2.5) or 'default', not 'soon'")
    assert_one_error_line(cli("service", "update", "-n", "svc", "--request-timeout", "9999"),
                          contains="request_timeout_s must be between 0.1 and 600 seconds")
    outcome = cli("service", "update", "-n", "svc", "--request-timeout", "5", "--no-wait", "-o", "json")
    assert outcome.code == 0, outcome.err
    # The CLI's answer is the service as the API left it. The row may have moved on since: when a
    # session worker runs (a CI run), it takes the update at once, and the limit is then applied
    # rather than pending.
    answered = json.loads(outcome.out)
    assert answered["status"] == Service.Status.UPDATING, answered
    service = Service.objects.get(pk=healthy.pk)
    assert (service.pending or {}).get("request_timeout_s") == 5.0 or service.request_timeout_s == 5.0
