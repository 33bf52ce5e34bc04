"""Every registered model file is scanned before it becomes a version: the verdict and globals in the
API and on the pages, the honest framework label, the manifest gate (dangerous refused, unknown
confirmed), an owner's acceptance (activity log; contributors get 403), the one-shot's gate, and
bad input that still behaves as uploads always did."""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest

from registry.models import Manifest, Model
from tests.registry.conftest import stored_files, upload
from tests.registry.test_scanning import OsSystem, SubprocessPopen, protocol_0_text
from workspaces.models import Activity

pytestmark = pytest.mark.django_db

UNKNOWN_PICKLE = b"\x80\x04\x8c\x0cmylab.models\x8c\x06Ranker\x93)\x81."


def dangerous(tmp_path) -> bytes:
    return pickle.dumps(OsSystem(tmp_path / "ran"))


def test_the_issue_s_canary_is_dangerous_named_and_not_called_scikit_learn(owner_api, register_model, tmp_path):
    # Tried as a new user would: barscanary, a pickle whose __reduce__ calls os.system.
    response = register_model(owner_api, name="barscanary", content=dangerous(tmp_path), filename="model.pkl")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["framework"] == "unknown"
    assert body["scan"]["verdict"] == "dangerous" and body["scan"]["needs_confirmation"] is False
    assert [g["global"] for g in body["scan"]["globals"]] == ["posix.system"]
    assert "posix.system" in body["scan"]["reason"]
    assert not (tmp_path / "ran").exists()
    shown = owner_api.get("/api/v1/models/barscanary:1/").json()
    assert shown["scan"]["verdict"] == "dangerous"
    assert [m["ref"] for m in owner_api.get("/api/v1/models/?scan=dangerous").json()["results"]] == ["barscanary:1"]
    assert Activity.objects.get(verb="model.registered").detail["scan"] == "dangerous"


def test_a_run_output_is_scanned_before_it_becomes_a_version(owner_api, owner, workspace, tmp_path):
    # The second way a file is registered (issue 20): a run's outputs, as the page, API and pipelines do.
    from tests.registry.test_register_from_run import make_run

    run = make_run(workspace, owner, outputs={"model.pkl": dangerous(tmp_path)})
    response = owner_api.post("/api/v1/models/", {"name": "fromrun", "run": str(run.pk), "path": "model.pkl"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["framework"] == "unknown" and body["scan"]["verdict"] == "dangerous"
    assert [g["global"] for g in body["scan"]["globals"]] == ["posix.system"]
    assert Model.objects.get().scan_verdict == "dangerous" and not (tmp_path / "ran").exists()


def test_the_churn_template_s_trained_model_is_safe_scikit_learn_with_its_version(owner_api, register_model, trained_churn):
    import sklearn

    content = (trained_churn["app"] / "outputs" / "model.pkl").read_bytes()
    body = register_model(owner_api, content=content).json()
    assert body["scan"]["verdict"] == "safe", body["scan"]
    assert (body["framework"], body["framework_version"]) == ("scikit-learn", sklearn.__version__)
    assert any(g["module"].startswith("sklearn.") for g in body["scan"]["globals"])


def test_a_manifest_with_a_dangerous_version_is_refused_naming_file_globals_and_how_to_accept(
        owner_api, register_model, create_manifest, storage_root, tmp_path):
    register_model(owner_api, name="barscanary", content=dangerous(tmp_path), filename="model.pkl")
    before = stored_files(storage_root)
    refused = create_manifest(owner_api, models=["barscanary:1"])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "model_dangerous"
    for part in ("barscanary:1", "model.pkl", "posix.system", "mlportal model accept barscanary:1", "/accept/"):
        assert part in error["message"], part
    assert error["fields"]["models"] == [error["message"]]
    assert Manifest.objects.count() == 0 and stored_files(storage_root) == before
    # Confirming does not let a dangerous file through: only an owner's acceptance does.
    assert create_manifest(owner_api, models=["barscanary:1"], confirm_unknown="true").status_code == 400


def test_an_unknown_version_needs_the_confirmation_flag(owner_api, register_model, create_manifest):
    body = register_model(owner_api, name="ranker", content=UNKNOWN_PICKLE, filename="model.pkl").json()
    assert body["scan"]["verdict"] == "unknown" and body["scan"]["needs_confirmation"] is True
    assert body["scan"]["globals"][0]["global"] == "mylab.models.Ranker"
    refused = create_manifest(owner_api, models=["ranker:1"])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "confirmation_needed"
    assert "mylab.models.Ranker" in refused.json()["error"]["message"]
    assert "confirm_unknown=true" in refused.json()["error"]["message"]
    made = create_manifest(owner_api, models=["ranker:1"], confirm_unknown="true")
    assert made.status_code == 201, made.json()
    assert Activity.objects.get(verb="manifest.created").detail["confirmed_unknown"] == ["ranker:1"]


def test_a_safe_or_foreign_version_needs_no_confirmation(owner_api, register_model, create_manifest):
    register_model(owner_api, name="plain", content=pickle.dumps({"weights": [1.0, 2.0]}), filename="model.pkl")
    assert create_manifest(owner_api, models=["plain:1"]).status_code == 201
    register_model(owner_api, name="onnxish", content=b"ONNX-bytes-not-a-pickle", filename="net.onnx", framework="onnx")
    assert create_manifest(owner_api, models=["onnxish:1"], name="net").status_code == 201


def test_an_owner_accepts_a_dangerous_version_which_shows_in_the_activity_log(
        owner_api, contributor_api, owner, register_model, create_manifest, tmp_path):
    model_id = register_model(owner_api, name="barscanary", content=dangerous(tmp_path), filename="model.pkl").json()["id"]
    denied = contributor_api.post("/api/v1/models/barscanary:1/accept/")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "role_required"
    assert not Model.objects.get(pk=model_id).is_accepted
    accepted = owner_api.post("/api/v1/models/barscanary:1/accept/")
    assert accepted.status_code == 200, accepted.json()
    scan = accepted.json()["scan"]
    assert scan["accepted"] is True and scan["accepted_by"] == "olivia" and scan["accepted_at"]
    entry = Activity.objects.get(verb="model.accepted")
    assert entry.actor == owner and entry.target_id == model_id and entry.created_at
    assert entry.detail["verdict"] == "dangerous" and entry.detail["globals"] == ["posix.system"]
    log = owner_api.get("/api/v1/activity/").json()["results"]
    assert any(e["verb"] == "model.accepted" and e.get("actor") == "olivia" for e in log), log
    made = create_manifest(owner_api, models=["barscanary:1"])
    assert made.status_code == 201, made.json()
    # Withdrawn, new manifests refuse it again.
    assert owner_api.delete("/api/v1/models/barscanary:1/accept/").json()["scan"]["accepted"] is False
    assert create_manifest(owner_api, models=["barscanary:1"]).status_code == 400


def test_a_contributor_cannot_accept_on_the_page_either(page_client, contributor, owner_api, register_model, tmp_path):
    register_model(owner_api, name="barscanary", content=dangerous(tmp_path), filename="model.pkl")
    model = Model.objects.get()
    page = page_client(contributor).get(f"/models/{model.pk}/")
    assert page.status_code == 200 and b'data-testid="accept-form"' not in page.content
    assert page_client(contributor).post(f"/models/{model.pk}/accept/").status_code == 403
    assert not Model.objects.get().is_accepted


def test_outsiders_and_safe_versions_have_nothing_to_accept(outsider_api, owner_api, register_model):
    register_model(owner_api, name="plain", content=pickle.dumps([1, 2]), filename="model.pkl")
    assert outsider_api.post("/api/v1/models/plain:1/accept/").status_code == 404
    safe = owner_api.post("/api/v1/models/plain:1/accept/")
    assert safe.status_code == 400 and safe.json()["error"]["code"] == "nothing_to_accept"


def test_the_model_page_shows_verdict_globals_and_the_owner_s_accept_button(page_client, owner, owner_api, register_model,
                                                                           tmp_path):
    register_model(owner_api, name="barscanary", content=protocol_0_text(tmp_path / "ran"), filename="model.pkl")
    model = Model.objects.get()
    client = page_client(owner)
    page = client.get(f"/models/{model.pk}/").content.decode()
    assert 'data-verdict="dangerous"' in page and "<code>os.system</code>" in page and 'data-testid="accept"' in page
    listing = client.get("/models/").content.decode()
    assert 'data-testid="scan-badge" data-verdict="dangerous"' in listing
    response = client.post(f"/models/{model.pk}/accept/")
    assert response.status_code == 302
    page = client.get(f"/models/{model.pk}/").content.decode()
    assert 'data-testid="accepted"' in page and "olivia" in page
    assert Activity.objects.filter(verb="model.accepted", actor=owner).count() == 1


def test_the_manifest_page_needs_its_checkbox_for_an_unknown_version(page_client, owner, owner_api, register_model,
                                                                      churn_schema):
    from tests.registry.conftest import SCORE

    register_model(owner_api, name="ranker", content=UNKNOWN_PICKLE, filename="model.pkl")
    model = Model.objects.get()
    client = page_client(owner)
    form = client.get("/manifests/new/").content.decode()
    assert "scan: Unknown globals" in form and 'name="confirm_unknown"' in form

    def post(**extra):
        return client.post("/manifests/new/", {"name": "churnpred", "models": [str(model.pk)], "source": "upload",
                                               "score_file": upload("score.py", SCORE),
                                               "schema_file": upload("service_schema.json", churn_schema), **extra})

    refused = post()
    assert refused.status_code == 200 and "mylab.models.Ranker" in refused.content.decode()
    assert Manifest.objects.count() == 0
    assert post(confirm_unknown="on").status_code == 302 and Manifest.objects.count() == 1


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, code", [
    (b"\xcd\x01" + bytes(range(256)) * 16, "not_pickle"),
    (b"Just some notes about the model, not a model.\n", "not_pickle"),
    (pickle.dumps(list(range(2000)))[:3000], "truncated"),
])
def test_a_random_text_or_truncated_file_is_not_scanned_with_the_reason_never_an_error_page(
        owner_api, page_client, owner, register_model, content, code):
    response = register_model(owner_api, content=content)
    assert response.status_code == 201, response.json()
    scan = response.json()["scan"]
    assert scan["verdict"] == "not_scanned" and scan["reason_code"] == code and scan["reason"]
    page = page_client(owner).get(f"/models/{response.json()['id']}/")
    assert page.status_code == 200 and scan["reason"].split(" (")[0] in page.content.decode()


def test_a_pickle_over_the_scan_bound_is_not_scanned_and_says_why(owner_api, register_model, settings):
    settings.MLPORTAL_SCAN_MAX_BYTES = 4096
    body = register_model(owner_api, content=pickle.dumps(list(range(10_000)))).json()
    assert body["scan"]["verdict"] == "not_scanned" and body["scan"]["reason_code"] == "over_bound"
    assert "bound of 4096 bytes" in body["scan"]["reason"] and body["scan"]["needs_confirmation"] is True


def test_an_archive_with_thousands_of_members_is_not_scanned_and_says_why(owner_api, register_model, settings):
    settings.MLPORTAL_SCAN_MAX_MEMBERS = 100
    handle = io.BytesIO()
    with zipfile.ZipFile(handle, "w") as archive:
        for i in range(2000):
            archive.writestr(f"parts/{i}.pkl", b"N.")
    body = register_model(owner_api, name="bundle", content=handle.getvalue(), filename="bundle.zip").json()
    assert body["scan"]["verdict"] == "not_scanned" and body["scan"]["reason_code"] == "too_many_members"
    assert "2000 files" in body["scan"]["reason"] and "bound of 100" in body["scan"]["reason"]


def test_the_upload_cap_still_answers_413_and_stores_nothing(owner_api, register_model, settings, storage_root, tmp_path):
    settings.MLPORTAL_MAX_UPLOAD_BYTES = 2048
    response = register_model(owner_api, content=dangerous(tmp_path) + b"\x00" * 4096)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert Model.objects.count() == 0 and stored_files(storage_root) == []


def test_an_administrator_s_allow_list_makes_a_library_safe(owner_api, register_model, settings):
    settings.MLPORTAL_SCAN_ALLOW = ["mylab"]
    assert register_model(owner_api, content=UNKNOWN_PICKLE).json()["scan"]["verdict"] == "safe"


def test_a_version_registered_before_scans_is_scanned_when_a_manifest_first_uses_it(owner_api, register_model,
                                                                                     create_manifest, tmp_path):
    register_model(owner_api, name="old", content=dangerous(tmp_path), filename="model.pkl")
    Model.objects.update(scan_verdict="", scan_globals=[], scan_reason="")  # as the migration leaves old rows
    refused = create_manifest(owner_api, models=["old:1"])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_dangerous"
    assert Model.objects.get().scan_verdict == "dangerous"


# --- the one-shot ------------------------------------------------------------------------------------

@pytest.fixture
def one_shot(churn_schema):
    from tests.registry.conftest import REQUIREMENTS, SCORE

    def create(api, content: bytes, name: str = "churnpred", **fields):
        data = {"name": name, "model_file": upload("model.pkl", content), "score_file": upload("score.py", SCORE),
                "schema_file": upload("service_schema.json", churn_schema),
                "requirements_file": upload("requirements.txt", REQUIREMENTS), "runtime": "python", **fields}
        return api.post("/api/v1/services/create-realtime/", data, format="multipart")

    return create


def test_the_one_shot_refuses_a_dangerous_file_and_stores_nothing(owner_api, one_shot, storage_root, tmp_path):
    from deployments.models import Service

    refused = one_shot(owner_api, pickle.dumps(SubprocessPopen(tmp_path / "ran")))
    assert refused.status_code == 400, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "model_dangerous" and "subprocess.Popen" in error["message"]
    assert "mlportal model accept" in error["message"] and list(error["fields"]) == ["model_file"]
    assert (Model.objects.count(), Manifest.objects.count(), Service.objects.count()) == (0, 0, 0)
    assert stored_files(storage_root) == [] and not (tmp_path / "ran").exists()


def test_the_one_shot_takes_a_file_an_owner_accepted_and_an_unknown_one_when_confirmed(owner_api, register_model,
                                                                                        one_shot, tmp_path):
    content = pickle.dumps(SubprocessPopen(tmp_path / "ran"))
    register_model(owner_api, name="model.pkl", content=content)
    owner_api.post("/api/v1/models/model.pkl:1/accept/")
    made = one_shot(owner_api, content)
    assert made.status_code == 201, made.json()
    second = Model.objects.get(version=2)
    assert second.is_accepted and second.scan_verdict == "dangerous"
    carried = Activity.objects.filter(verb="model.accepted", target_id=str(second.pk)).get()
    assert carried.detail["same_file_as"] == "model.pkl:1" and carried.detail["accepted_by"] == "olivia"
    assert one_shot(owner_api, UNKNOWN_PICKLE, name="ranker").json()["error"]["code"] == "confirmation_needed"
    assert one_shot(owner_api, UNKNOWN_PICKLE, name="ranker", confirm_unknown="true").status_code == 201


def test_scan_models_re_judges_versions_after_the_allow_list_changes(owner_api, register_model, settings):
    from django.core.management import call_command

    register_model(owner_api, name="ranker", content=UNKNOWN_PICKLE, filename="model.pkl")
    settings.MLPORTAL_SCAN_ALLOW = ["mylab"]
    out = io.StringIO()
    call_command("scan_models", stdout=out)
    assert "team/ranker:1: unknown -> safe" in out.getvalue() and "scanned 1 versions: 1 safe" in out.getvalue()
    assert Model.objects.get().scan_verdict == "safe"


def test_the_manifest_page_shows_each_version_s_scan(page_client, owner, owner_api, register_model, create_manifest,
                                                     tmp_path):
    register_model(owner_api, name="barscanary", content=dangerous(tmp_path), filename="model.pkl")
    owner_api.post("/api/v1/models/barscanary:1/accept/")
    manifest = create_manifest(owner_api, models=["barscanary:1"]).json()
    page = page_client(owner).get(f"/manifests/{manifest['id']}/").content.decode()
    assert 'data-verdict="dangerous"' in page and 'data-testid="accepted-badge"' in page


def test_the_register_page_scans_an_upload_and_warns_of_the_canary(page_client, owner, workspace, tmp_path):
    # The portal's own upload form goes through the same scan as the API.
    client = page_client(owner)
    response = client.post("/models/register/", {"name": "barscanary", "file": upload("model.pkl", dangerous(tmp_path))},
                           follow=True)
    assert response.status_code == 200
    model = Model.objects.get()
    assert (model.scan_verdict, model.framework, model.scan_globals[0]["global"]) == ("dangerous", "unknown", "posix.system")
    page = response.content.decode()
    assert "Scan: dangerous" in page and "posix.system" in page and 'data-testid="accept"' in page
    assert not (tmp_path / "ran").exists()
