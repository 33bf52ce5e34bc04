"""Registering a run's output as a model (API and the "Register model" page), with lineage to the
run and its project; and manifests made from a project's files."""
import hashlib

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from registry.models import Manifest, Model
from runs.models import Project, ProjectFile, Run, RunOutput
from tests.registry.conftest import REQUIREMENTS, SCORE, stored_files

pytestmark = pytest.mark.django_db

MODEL_BYTES = b"\x80\x04trained model bytes" * 64


def store(name: str, data: bytes) -> str:
    return default_storage.save(name, ContentFile(data))


def make_project(workspace, owner, name="churn", files=None) -> Project:
    project = Project.objects.create(workspace=workspace, name=name, created_by=owner)
    for path, data in (files or {}).items():
        ProjectFile.objects.create(workspace=workspace, project=project, path=path, size=len(data),
                                   sha256=hashlib.sha256(data).hexdigest(), storage_name=store(f"projects/{project.pk}/{path}", data))
    return project


def make_run(workspace, owner, project=None, outputs=None) -> Run:
    project = project or make_project(workspace, owner, name="training")
    run = Run.objects.create(workspace=workspace, project=project, number=project.runs.count() + 1, script="train.py",
                             status=Run.Status.COMPLETED, created_by=owner)
    for path, data in (outputs or {"model.pkl": MODEL_BYTES}).items():
        RunOutput.objects.create(workspace=workspace, run=run, path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 storage_name=store(f"runs/{run.pk}/outputs/{path}", data))
    return run


@pytest.fixture
def run(workspace, owner):
    return make_run(workspace, owner)


def test_a_run_output_registers_with_lineage_and_a_copy_of_its_bytes(owner_api, run, storage_root):
    response = owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["run"] == str(run.pk) and body["project"] == str(run.project_id) and body["source_path"] == "model.pkl"
    assert body["sha256"] == hashlib.sha256(MODEL_BYTES).hexdigest() and body["size"] == len(MODEL_BYTES)
    model = Model.objects.get()
    assert model.file != run.outputs.get().storage_name and (storage_root / model.file).read_bytes() == MODEL_BYTES
    again = owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "outputs/model.pkl"}, format="json")
    assert again.status_code == 201 and again.json()["version"] == 2


def test_the_models_list_filters_by_run_and_project(owner_api, owner, workspace, run):
    other = make_run(workspace, owner, project=make_project(workspace, owner, name="other"))
    for source in (run, other):
        owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(source.pk), "path": "model.pkl"}, format="json")
    assert [m["run"] for m in owner_api.get(f"/api/v1/models/?run={run.pk}").json()["results"]] == [str(run.pk)]
    assert [m["run"] for m in owner_api.get("/api/v1/models/?project=other").json()["results"]] == [str(other.pk)]
    assert owner_api.get(f"/api/v1/models/?project={other.project_id}").json()["count"] == 1


def test_an_unknown_output_is_refused_naming_the_outputs_there_are(owner_api, run, storage_root):
    before = stored_files(storage_root)
    response = owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "nope.pkl"}, format="json")
    assert response.status_code == 400
    assert "has no output 'nope.pkl'; its outputs are model.pkl" in response.json()["error"]["message"]
    assert stored_files(storage_root) == before and not Model.objects.exists()


def test_a_run_of_another_workspace_is_an_unknown_run(owner_api, outsider, run):
    from workspaces.models import Workspace

    foreign = make_run(Workspace.objects.get(name="elsewhere"), outsider)
    for ref in (str(foreign.pk), "not-an-id"):
        response = owner_api.post("/api/v1/models/", {"name": "m.pkl", "run": ref, "path": "model.pkl"}, format="json")
        assert response.status_code == 400 and "Unknown run" in response.json()["error"]["message"]


def test_a_reader_cannot_register_a_run_output(reader_api, run):
    response = reader_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    assert response.status_code == 403


def test_the_register_page_prefills_the_name_and_registers_the_output(page_client, owner, run):
    client = page_client(owner)
    url = f"/models/register/?run={run.pk}&path=model.pkl"
    page = client.get(url)
    assert page.status_code == 200 and page.context["form"]["name"].value() == "model.pkl" and "file" not in page.context["form"].fields
    assert "model.pkl" in page.content.decode()
    response = client.post(url, {"name": "model.pkl", "description": "from the page"})
    model = Model.objects.get()
    assert response.status_code == 302 and model.run_id == run.pk and model.description == "from the page"
    html = client.get(f"/models/{model.pk}/").content.decode()
    assert str(run) in html and "output <code>model.pkl</code>" in html


def test_the_register_page_answers_404_for_a_foreign_run_or_an_unknown_output(page_client, owner, outsider, run):
    assert page_client(outsider).get(f"/models/register/?run={run.pk}&path=model.pkl").status_code == 404
    assert page_client(owner).get(f"/models/register/?run={run.pk}&path=missing.pkl").status_code == 404
    assert page_client(owner).get("/models/register/?run=nope&path=model.pkl").status_code == 404


def test_a_deleted_run_leaves_its_models_which_say_where_they_came_from(owner_api, page_client, owner, run):
    owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    run.delete()
    model = Model.objects.get()
    assert model.run_id is None and model.source_path == "model.pkl"
    assert "of a run since deleted" in page_client(owner).get(f"/models/{model.pk}/").content.decode()


@pytest.fixture
def churn_project(workspace, owner, churn_schema):
    return make_project(workspace, owner, files={"score.py": SCORE, "service_schema.json": churn_schema,
                                                 "requirements.txt": REQUIREMENTS, "data/notes.txt": b"x"})


def test_a_manifest_is_made_from_a_projects_files(owner_api, run, churn_project):
    owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    response = owner_api.post("/api/v1/manifests/", {"name": "churnpred", "models": ["model.pkl"], "project": "churn",
                                                     "score": "score.py", "schema": "service_schema.json",
                                                     "requirements": "requirements.txt"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["files"]["score.py"]["sha256"] == hashlib.sha256(SCORE).hexdigest()
    assert Manifest.objects.get().project_id == churn_project.pk
    without = owner_api.post("/api/v1/manifests/", {"name": "churnpred", "models": ["model.pkl"], "project": str(churn_project.pk)},
                             format="json")
    assert without.status_code == 201 and "requirements.txt" not in without.json()["files"]


@pytest.mark.parametrize("change, message", [
    ({"score": "src/score.py"}, "Project 'churn' has no file 'src/score.py'"),
    ({"schema": "data/notes.txt"}, "service_schema.json: the schema file is not valid JSON"),
    ({"project": "ghost"}, "Unknown project 'ghost'"),
])
def test_a_manifest_from_a_project_names_a_missing_file_or_project(owner_api, run, churn_project, change, message):
    owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    body = {"name": "churnpred", "models": ["model.pkl"], "project": "churn", **change}
    response = owner_api.post("/api/v1/manifests/", body, format="json")
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert not Manifest.objects.exists()


def test_the_create_manifest_page_takes_files_from_a_project(page_client, owner, owner_api, run, churn_project):
    owner_api.post("/api/v1/models/", {"name": "model.pkl", "run": str(run.pk), "path": "model.pkl"}, format="json")
    model = Model.objects.get()
    response = page_client(owner).post("/manifests/new/", {
        "name": "churnpred", "models": [str(model.pk)], "source": "project", "project": str(churn_project.pk),
        "score_path": "score.py", "schema_path": "service_schema.json", "requirements_path": "requirements.txt"})
    manifest = Manifest.objects.get()
    assert response.status_code == 302 and manifest.project_id == churn_project.pk and manifest.requirements
