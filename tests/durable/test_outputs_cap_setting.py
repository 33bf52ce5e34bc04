"""The outputs cap is a project setting under the portal's maximum; a run over it fails with the
cap named and keeps none of its outputs."""
from __future__ import annotations

import pytest

from runs import services, worker
from runs.models import Run, RunOutput

OVER = (b"import os\nos.makedirs('outputs', exist_ok=True)\n"
        b"open('outputs/a.bin', 'wb').write(b'x' * (3 * 1024 * 1024))\n")


def test_the_cap_is_a_project_setting_under_the_portal_maximum(owner_api, owner, workspace, settings):
    settings.MLPORTAL_RUN_OUTPUTS_MAX_MB = 4096
    project = services.project_create(workspace=workspace, name="capped", user=owner)
    body = owner_api.get(f"/api/v1/projects/{project.id}/").json()
    assert body["outputs_max_mb"] is None and body["outputs_cap_mb"] == 4096
    res = owner_api.patch(f"/api/v1/projects/{project.id}/", {"outputs_max_mb": 5000}, format="json")
    assert res.status_code == 400
    assert res.json()["error"]["fields"]["outputs_max_mb"] == ["outputs_max_mb must be between 1 and 4096 MiB "
                                                               "(the portal's maximum); 5000 is not."]
    res = owner_api.patch(f"/api/v1/projects/{project.id}/", {"outputs_max_mb": 2}, format="json")
    assert res.status_code == 200 and res.json()["outputs_cap_mb"] == 2
    settings.MLPORTAL_RUN_OUTPUTS_MAX_MB = 1  # an operator lowers the maximum: it wins
    assert owner_api.get(f"/api/v1/projects/{project.id}/").json()["outputs_cap_mb"] == 1


@pytest.mark.docker
def test_a_run_over_its_projects_cap_fails_with_the_cap_named(transactional_db, owner, workspace):
    project = services.project_create(workspace=workspace, name="capped", user=owner)
    services.project_update_settings(project=project, user=owner, outputs_max_mb=2)
    services.project_file_put(project=project, path="over.py", content=OVER, user=owner)
    run = services.run_submit(project=project, script="over.py", args=[], target="docker", user=owner)
    assert worker.execute(run.id) == Run.Status.FAILED
    run.refresh_from_db()
    assert run.status_reason.startswith("its outputs are over the cap of 2 MiB (at a.bin"), run.status_reason
    assert not RunOutput.objects.filter(run=run).exists()
