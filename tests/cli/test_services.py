"""`image create|show|usage|logs` and `service create|run|keys|logs|usage|update|delete realtime`
with the real worker and Docker engine (the churn model trained once per session; the
scikit-learn environment image is shared, so each image here is a one-second build)."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.cli.conftest import assert_one_error_line
from tests.runtime.conftest import trained_churn  # noqa: F401 (shared session fixture)
from tests.real_parts import missing_part

pytestmark = [pytest.mark.docker, pytest.mark.integration]
SLOW = 1800


@pytest.fixture
def lab_files(cli, trained_churn):  # noqa: F811
    """model.pkl, score.py, service_schema.json and requirements.txt in the working folder."""
    app = trained_churn["app"]
    for name in ("model.pkl", "score.py", "service_schema.json", "requirements.txt", "sample_request.json"):
        shutil.copy(app / name, cli.home / name)
    return cli.home


@pytest.fixture
def docker_worker(celery_worker):
    from compute.engine import engine_status

    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])
    yield celery_worker
    from compute.runner import list_containers, remove_container
    from deployments.worker import LABEL_PORTAL, portal_instance

    for container in list_containers("service"):
        if container["labels"].get(LABEL_PORTAL) == portal_instance():
            remove_container(container["id"])


def test_image_create_builds_a_manifest_and_shows_its_log_usage_and_details(cli, login, owner, workspace, lab_files,
                                                                             docker_worker):
    login(owner)
    assert cli("model", "register", "-m", "model.pkl").code == 0
    assert cli("manifest", "create", "-n", "churn", "-f", "score.py", "-s", "service_schema.json", "-i", "model.pkl:1",
               "-p", "requirements.txt").code == 0
    built = cli("image", "create", "-n", "churn", "--manifest-id", "churn:1", "-o", "json")
    assert built.code == 0, built.err
    assert "Successfully built" in built.err  # the build log, streamed as it was written
    image = json.loads(built.out)
    assert (image["ref"], image["status"]) == ("churn:1", "succeeded") and image["tag"].endswith("/churn:1")
    assert json.loads(cli("image", "show", image["tag"], "-o", "json", "--query", "id").out) == image["id"]
    usage = cli("image", "usage", "churn:1").out
    assert "docker run -p 127.0.0.1:5001:5001" in usage and image["tag"] in usage and "curl -X POST" in usage
    assert "Successfully built" in cli("image", "logs", "-i", "churn:1").out
    listed = cli("image", "list").out.splitlines()
    assert listed[2].split()[:3] == ["churn", "1", "succeeded"]


def test_service_commands_run_keys_logs_update_rollback_and_delete(cli, login, owner, workspace, lab_files, docker_worker):
    login(owner)
    created = cli("service", "create", "realtime", "-n", "churnpred", "--model-file", "model.pkl", "-f", "score.py",
                  "-r", "python", "-s", "service_schema.json", "-p", "requirements.txt")
    assert created.code == 0, created.err
    assert "note: No environment was set up in this workspace: created environment 'local'" in created.err
    assert cli("service", "run", "realtime", "-i", "churnpred", "-d", "@sample_request.json").out == '"0"\n'
    bad = cli("service", "run", "realtime", "-i", "churnpred", "-d", '{"input_df": [{"age": 3}]}')
    assert_one_error_line(bad, contains="input_df")

    keys = json.loads(cli("service", "keys", "realtime", "-i", "churnpred", "-o", "json").out)
    regenerated = cli("service", "keys", "realtime", "-i", "churnpred", "--regenerate", "primary", "-o", "json")
    assert regenerated.code == 0, regenerated.err
    new_keys = json.loads(regenerated.out)
    assert new_keys["primary"] != keys["primary"] and new_keys["secondary"] == keys["secondary"]
    assert cli("service", "run", "realtime", "-i", "churnpred", "-d", "@sample_request.json").out == '"0"\n'

    assert "POST /score" in cli("service", "logs", "realtime", "-i", "churnpred", "--tail", "20").out
    usage = cli("service", "usage", "realtime", "-i", "churnpred").out.splitlines()
    assert usage[0].startswith("Usage for cmd: mlportal service run realtime -i churnpred -d '")
    assert usage[1].startswith("Usage for curl: curl -X POST ") and "-H 'Authorization: Bearer " in usage[1]

    # A second image of the same manifest: update to it, then roll back to revision 1.
    manifest = json.loads(cli("service", "show", "churnpred", "-o", "json").out)["steps"][1]["ref"]
    assert cli("image", "create", "-n", "churnpred", "--manifest-id", manifest).code == 0
    updated = cli("service", "update", "realtime", "-i", "churnpred", "--image-id", "churnpred:2", "-o", "json")
    assert updated.code == 0, updated.err
    assert (json.loads(updated.out)["image"], json.loads(updated.out)["status"]) == ("churnpred:2", "healthy")
    rolled = cli("service", "update", "realtime", "-i", "churnpred", "--rollback", "1", "-o", "json")
    assert rolled.code == 0, rolled.err
    assert json.loads(rolled.out)["image"] == "churnpred:1"
    assert cli("service", "run", "realtime", "-i", "churnpred", "-d", "@sample_request.json").out == '"0"\n'

    assert cli("service", "delete", "realtime", "-i", "churnpred").code == 0
    assert_one_error_line(cli("service", "show", "realtime", "-i", "churnpred"), contains="no service 'churnpred'")
