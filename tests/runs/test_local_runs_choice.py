"""Local runs are an administrator's choice: off by default, allowed per workspace by a portal
administrator (never by the workspace's owner), refused at submit with a message saying so."""
import json
import os
import subprocess
import sys

import pytest

from runs import services
from tests.conftest import REPO

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(owner, workspace):
    project = services.project_create(workspace=workspace, name="scratch", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('hello')\n", user=owner)
    return project


def test_local_runs_are_off_by_default_in_a_fresh_portal(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPORTAL_LOCAL_RUN")}
    env.update({"MLPORTAL_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "mlportal.settings"})
    done = subprocess.run([sys.executable, "-c", "from django.conf import settings; import json; "
                           "print(json.dumps([settings.MLPORTAL_LOCAL_RUNS, oct((settings.DATA_DIR.stat().st_mode) & 0o777)]))"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [False, "0o700"]
    from workspaces.models import Workspace

    assert Workspace._meta.get_field("local_runs_allowed").default is False


def test_an_owner_cannot_run_locally_until_an_administrator_allows_it(owner_api, project):
    response = owner_api.post("/api/v1/runs/", {"project": "scratch", "script": "train.py", "target": "local"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "local_runs_off" and "portal administrator" in error["message"]
    assert "target docker" in error["message"]


def test_the_owner_cannot_allow_it_through_the_workspace_api(owner_api, workspace):
    owner_api.patch("/api/v1/workspaces/team/", {"local_runs_allowed": True}, format="json")
    workspace.refresh_from_db()
    assert workspace.local_runs_allowed is False


def test_an_allowed_workspace_may_submit_local_runs(owner_api, project, local_runs):
    response = owner_api.post("/api/v1/runs/", {"project": "scratch", "script": "train.py", "target": "local"}, format="json")
    assert response.status_code == 201, response.content


def test_the_portal_setting_off_overrides_the_workspace(owner_api, project, local_runs, settings):
    settings.MLPORTAL_LOCAL_RUNS = False
    response = owner_api.post("/api/v1/runs/", {"project": "scratch", "script": "train.py", "target": "local"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "local_runs_off"


def test_an_administrator_allows_it_in_the_admin(client, django_user_model, workspace):
    admin = django_user_model.objects.create_superuser("root-admin", password="pw-for-tests-1")
    client.force_login(admin)
    page = client.get(f"/admin/workspaces/workspace/{workspace.pk}/change/")
    assert page.status_code == 200 and b"local_runs_allowed" in page.content


def test_the_worker_refuses_a_local_run_queued_before_the_permission_was_withdrawn(owner, project, local_runs):
    from runs import worker

    run = services.run_submit(project=project, script="train.py", target="local", user=owner)
    local_runs.local_runs_allowed = False
    local_runs.save(update_fields=["local_runs_allowed"])
    assert worker.execute(run.id) == "failed"
    run.refresh_from_db()
    assert "Local runs are off" in run.status_reason
