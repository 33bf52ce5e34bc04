"""The Environments page's form sets up a cluster environment (the shared engine is a single-node
swarm manager in CI) and refuses init_swarm on a local one, with the message next to the field."""
from __future__ import annotations

import pytest

from tests.real_parts import missing_part

pytestmark = pytest.mark.django_db


def test_the_form_makes_a_cluster_environment_and_refuses_init_swarm_on_a_local_one(page_client, owner, workspace):
    from compute import swarm
    from deployments.models import Environment

    if not swarm.swarm_status()["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    client = page_client(owner)
    refused = client.post("/environments/", {"name": "staging", "kind": "local", "init_swarm": "on",
                                             "publish_address": "127.0.0.1"})
    assert refused.status_code == 200 and "init_swarm goes with kind" in refused.content.decode()
    made = client.post("/environments/", {"name": "production", "kind": "cluster", "init_swarm": "on",
                                          "publish_address": "127.0.0.1"}, follow=True)
    assert made.status_code == 200
    assert "swarm manager already" in made.content.decode()
    assert list(Environment.objects.values_list("name", "kind")) == [("production", "cluster")]
