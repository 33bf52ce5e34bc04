"""`mlportal project settings` shows and changes a project's run settings, the outputs cap
(`Project.outputs_max_mb`, issue 14) among them, under the portal's maximum; the page's Settings
tab has the same field."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from runs import services
from runs.models import Project
from tests.cli.conftest import assert_one_error_line


@pytest.fixture
def project(owner, workspace):
    return services.project_create(workspace=workspace, name="capped", user=owner)


def test_it_sets_the_outputs_cap_and_shows_it(cli, login, owner, project, settings):
    settings.MLPORTAL_RUN_OUTPUTS_MAX_MB = 4096
    login(owner)
    outcome = cli("project", "settings", "capped", "--outputs-max-mb", "512", "-o", "json")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["outputs_cap_mb"] == 512
    assert "Saved outputs_max_mb of project capped." in outcome.err
    assert Project.objects.get(pk=project.pk).outputs_max_mb == 512
    shown = cli("project", "settings", "capped", "-o", "table")
    assert shown.code == 0 and "Outputs cap MiB" in shown.out and "512" in shown.out


def test_a_cap_over_the_portal_maximum_is_one_line_naming_it_and_changes_nothing(cli, login, owner, project, settings):
    settings.MLPORTAL_RUN_OUTPUTS_MAX_MB = 1024
    login(owner)
    assert_one_error_line(cli("project", "settings", "capped", "--outputs-max-mb", "5000"),
                          contains="outputs_max_mb must be between 1 and 1024 MiB (the portal's maximum); 5000 is not.")
    assert_one_error_line(cli("project", "settings", "capped", "--outputs-max-mb", "lots"),
                          contains="--outputs-max-mb takes a whole number, not 'lots'")
    assert Project.objects.get(pk=project.pk).outputs_max_mb is None


def test_other_limits_change_together_and_the_linked_project_is_the_default(cli, login, owner, workspace):
    login(owner)
    assert cli("project", "create", "linked").code == 0
    outcome = cli("project", "settings", "--time-limit", "600", "--network", "on", "--cpus", "0.5", "-o", "json")
    assert outcome.code == 0, outcome.err
    project = Project.objects.get(name="linked")
    assert (project.time_limit_s, project.allow_network, project.cpus) == (600, True, 0.5)


def test_a_reader_cannot_change_the_cap(cli, login, reader, project):
    login(reader)
    outcome = cli("project", "settings", "capped", "--outputs-max-mb", "10")
    assert outcome.code != 0
    assert Project.objects.get(pk=project.pk).outputs_max_mb is None


def test_the_settings_tab_has_the_outputs_cap(page_client, owner, project):
    client = page_client(owner)
    res = client.post(reverse("project-settings", args=[project.pk]), {
        "requirements": "", "default_target": "docker", "time_limit_s": 60, "memory_mb": 512, "cpus": 1,
        "outputs_max_mb": 64,
    })
    assert res.status_code == 302
    assert Project.objects.get(pk=project.pk).outputs_max_mb == 64
    page = client.get(project.get_absolute_url()).content.decode()
    assert 'name="outputs_max_mb"' in page and 'value="64"' in page and "outputs up to 64 MiB" in page
