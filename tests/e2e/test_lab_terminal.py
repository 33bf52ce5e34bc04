"""The Azure ML Workbench lab, typed into a terminal: every `az ml` line of the lab becomes an
`mlportal` line run as a real process against the live portal, the real worker and the Docker
engine, in an empty folder, in the lab's order; the service answers "0". Then what was made is
listed, and a second user of another workspace sees none of it."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.integration]

TRAIN = "CATelcoCustomerChurnModelingWithoutDprep.py"
SAMPLE_REQUEST = json.loads((REPO / "runs" / "project_templates" / "churn" / "sample_request.json").read_text())
SLOW = 1800  # a first `experiment prepare` on a new machine fills the wheel cache and builds the environment image


def test_the_lab_runs_in_a_terminal_and_the_service_predicts_0(docker_worker, terminal, owner, workspace, outsider):
    lab = terminal(owner, "lab")
    folder = lab.cwd

    # Create a project from the "Customer Churn Prediction" template: the folder is the project.
    lab.ok("project", "create", "churn_prediction", "--template", "churn")
    assert (folder / TRAIN).is_file() and (folder / "score.py").is_file() and (folder / ".mlportal" / "project.json").is_file()

    # az ml experiment prepare -c docker; az ml experiment submit -c docker <script>
    prepared = lab.ok("experiment", "prepare", "-c", "docker", timeout=SLOW)
    assert "completed" in prepared.stderr
    submitted = lab.ok("experiment", "submit", "-c", "docker", TRAIN, timeout=SLOW)
    assert "DTree Accuracy" in submitted.stdout  # the script's own lines, streamed while it ran
    assert "completed" in submitted.stderr.splitlines()[-1]

    run = json.loads(lab.ok("run", "show", "last", "-o", "json").stdout)
    assert run["status"] == "completed" and run["script"] == TRAIN and run["target"] == "docker"
    assert run["metrics"]["DTree Accuracy"] > 0.85 and 0.6 < run["metrics"]["Naive Bayes Accuracy"] < 0.9
    assert [o["path"] for o in run["outputs"]] == ["model.pkl"]

    # Download model.pkl from the run's outputs and place it in the project's root folder.
    lab.ok("run", "download", "last", "--path", "outputs/model.pkl")
    assert (folder / "model.pkl").stat().st_size > 1000

    # python churn_schema_gen.py
    env = {**lab.env, "PYTHONPATH": str(REPO)}
    schema = subprocess.run([sys.executable, "churn_schema_gen.py"], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=300)
    assert schema.returncode == 0, schema.stderr
    assert (folder / "service_schema.json").is_file()

    # az ml env setup / env set / env show; az ml account modelmanagement list -o table
    setup = lab.ok("env", "setup", "-n", "staging", "-l", "eastus2", "-g", "rg")
    assert "note: -l/--location is an Azure setting; ignored here" in setup.stderr
    lab.ok("env", "set", "-n", "staging", "-g", "rg")
    shown = lab.ok("env", "show").stdout
    assert "staging" in shown and "true" in next(line for line in shown.splitlines() if line.startswith("active"))
    accounts = lab.ok("account", "modelmanagement", "list", "-o", "table").stdout.splitlines()
    assert accounts[0].split()[0] == "Name" and accounts[2].split()[0] == "team"

    # az ml service create realtime -n churnpred --model-file ./model.pkl -f score.py -r python -s service_schema.json
    created = lab.ok("service", "create", "realtime", "-n", "churnpred", "--model-file", "./model.pkl", "-f", "score.py",
                     "-r", "python", "-s", "service_schema.json", timeout=SLOW)
    for step in ("[1/4] Registered model model.pkl:1", "[2/4] Created manifest churnpred:1", "[3/4] Built image churnpred:1",
                 "[4/4] Service churnpred is healthy"):
        assert step in created.stderr, created.stderr
    assert "note: the service gets the project's requirements.txt" in created.stderr  # the lab's line has no -p
    usage = next(line for line in created.stdout.splitlines() if line.startswith("Usage for cmd: "))
    assert any(line.startswith("Usage for curl: curl -X POST ") for line in created.stdout.splitlines())

    # The "Usage for cmd" line, pasted into bash as it is, prints the prediction.
    command = usage[len("Usage for cmd: "):]
    assert command.startswith("mlportal service run realtime -i churnpred -d '")
    assert json.loads(shlex.split(command)[-1]) == SAMPLE_REQUEST
    scored = lab.shell(command)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.strip() == '"0"'

    # The model, the manifest, the image and the service are all there.
    assert json.loads(lab.ok("model", "list", "-o", "json", "--query", "[].ref").stdout) == ["model.pkl:1"]
    assert json.loads(lab.ok("manifest", "list", "-o", "json", "--query", "[].ref").stdout) == ["churnpred:1"]
    images = json.loads(lab.ok("image", "list", "-o", "json", "--query", "[].[ref, status]").stdout)
    assert images == [["churnpred:1", "succeeded"]]
    services = lab.ok("service", "list", "-o", "table").stdout.splitlines()
    assert services[2].split()[:3] == ["churnpred", "healthy", "staging"]

    # Another team's member, with their own login, sees none of it.
    other = terminal(outsider, "other")
    assert json.loads(other.ok("model", "list", "-o", "json").stdout) == []
    assert json.loads(other.ok("service", "list", "-o", "json").stdout) == []
    hidden = other.run("service", "show", "realtime", "-i", "churnpred")
    assert hidden.returncode != 0 and hidden.stdout == ""
    assert hidden.stderr.strip().splitlines() == ["error: Not found: no service 'churnpred' in your workspaces."]
    refused = other.shell(command)
    assert refused.returncode != 0 and refused.stderr.strip().startswith("error: Not found")

    lab.ok("service", "delete", "realtime", "-i", "churnpred", timeout=300)
    assert json.loads(lab.ok("service", "list", "-o", "json").stdout) == []
