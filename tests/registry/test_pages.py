"""The registry's pages: Models (grouped by name), Register model, model page, Manifests, Create
manifest, manifest page, Images, image page; escaping, roles and outsiders."""
import json

import pytest

from registry import services
from registry.models import Image, Manifest, Model
from tests.registry.conftest import REQUIREMENTS, SCORE, stored_files, upload

pytestmark = pytest.mark.django_db


def register(owner, workspace, name="model.pkl", content=b"bytes", **kwargs):
    return services.model_register_upload(workspace=workspace, name=name, fileobj=upload(name, content), filename=name,
                                          user=owner, **kwargs)


@pytest.fixture
def manifest(owner, workspace, churn_schema):
    model = register(owner, workspace)
    return services.manifest_create(workspace=workspace, name="churnpred", models=[model],
                                    score=SCORE + b"\n# <script>alert('x')</script>\n", schema=churn_schema,
                                    requirements=REQUIREMENTS, user=owner)


def test_the_models_list_groups_versions_under_their_name_latest_first(page_client, owner, workspace):
    for _ in range(3):
        register(owner, workspace)
    register(owner, workspace, name="other.onnx")
    response = page_client(owner).get("/models/")
    rows = response.context["rows"]
    assert [(r["name"], r["latest"], r["versions"]) for r in rows] == [("model.pkl", 3, 3), ("other.onnx", 1, 1)]
    assert rows[0]["model"].version == 3
    html = response.content.decode()
    assert "v3" in html and "onnx" in html


def test_the_models_list_searches_and_paginates(page_client, owner, workspace):
    for name in ("alpha.pkl", "beta.pkl", "gamma.pkl"):
        register(owner, workspace, name=name)
    client = page_client(owner)
    assert [r["name"] for r in client.get("/models/?q=bet").context["rows"]] == ["beta.pkl"]
    page = client.get("/models/?page_size=2&page=2")
    assert [r["name"] for r in page.context["rows"]] == ["gamma.pkl"]
    assert [r["name"] for r in client.get("/models/?sort=-name").context["rows"]][0] == "gamma.pkl"


def test_a_model_page_shows_versions_source_usage_and_escapes_user_text(page_client, owner, workspace, manifest):
    model = Model.objects.get()
    services.model_update(model=model, user=owner, description="<img src=x onerror=alert(1)>", tags={"<b>k</b>": "<i>v</i>"})
    html = page_client(owner).get(f"/models/{model.name}:{model.version}/").content.decode()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>k</b>" not in html
    assert model.sha256 in html and "uploaded" in html
    assert f"/manifests/{manifest.pk}/" in html and f"/models/{model.pk}/download/" in html


def test_the_model_download_page_link_streams_the_file(page_client, owner, workspace):
    model = register(owner, workspace, content=b"abc" * 1000)
    response = page_client(owner).get(f"/models/{model.pk}/download/")
    assert b"".join(response.streaming_content) == b"abc" * 1000


def test_uploading_on_the_register_page_registers_and_redirects(page_client, owner, workspace, storage_root):
    client = page_client(owner)
    response = client.post("/models/register/", {"name": "model.pkl", "file": upload("model.pkl", b"xyz"),
                                                  "description": "first", "tags": '{"stage": "dev"}', "framework": ""})
    model = Model.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/{model.pk}/"
    assert model.tags == {"stage": "dev"} and model.framework == "unknown" and model.scan_verdict == "not_scanned"


def test_the_register_page_shows_the_problem_next_to_the_field_and_stores_nothing(page_client, owner, workspace, storage_root):
    response = page_client(owner).post("/models/register/", {"name": "a/b", "file": upload("model.pkl", b"xyz")})
    assert response.status_code == 200
    assert "path separators" in response.context["form"].errors["name"][0]
    assert not Model.objects.exists() and stored_files(storage_root) == []
    missing = page_client(owner).post("/models/register/", {"name": "m"})
    assert "This field is required." in missing.context["form"].errors["file"]


def test_editing_and_deleting_from_the_model_page(page_client, owner, workspace, manifest):
    model = Model.objects.get()
    client = page_client(owner)
    client.post(f"/models/{model.pk}/edit/", {"description": "better", "tags": '{"a": "1"}'})
    model.refresh_from_db()
    assert model.description == "better" and model.tags == {"a": "1"}
    refused = client.post(f"/models/{model.pk}/delete/", follow=True)
    assert "used by manifest churnpred:1" in refused.content.decode() and Model.objects.exists()


def test_readers_cannot_register_edit_or_delete_on_pages(page_client, reader, owner, workspace):
    model = register(owner, workspace)
    client = page_client(reader)
    assert client.get("/models/register/").status_code == 403
    assert client.post(f"/models/{model.pk}/edit/", {"description": "x"}).status_code == 403
    assert client.post(f"/models/{model.pk}/delete/").status_code == 403
    assert client.get(f"/models/{model.pk}/").status_code == 200


def test_outsiders_get_404_on_every_registry_page(page_client, outsider, owner, workspace, manifest):
    model = Model.objects.get()
    image = services.image_create(manifest=manifest, user=owner)
    client = page_client(outsider)
    for path in (f"/models/{model.pk}/", f"/models/{model.pk}/download/", "/models/model.pkl/", f"/manifests/{manifest.pk}/",
                 "/manifests/churnpred/", f"/images/{image.pk}/"):
        assert client.get(path).status_code == 404, path
    for path in (f"/models/{model.pk}/edit/", f"/models/{model.pk}/delete/", f"/manifests/{manifest.pk}/build/",
                 f"/manifests/{manifest.pk}/delete/", f"/images/{image.pk}/delete/"):
        assert client.post(path).status_code == 404, path
    assert client.get("/models/").context["rows"] == []


def test_creating_a_manifest_on_the_page(page_client, owner, workspace, churn_schema):
    model = register(owner, workspace)
    client = page_client(owner)
    form = client.get(f"/manifests/new/?model={model.pk}")
    assert form.status_code == 200 and form.context["form"]["models"].value() == [str(model.pk)]
    response = client.post("/manifests/new/", {
        "name": "churnpred", "models": [str(model.pk)], "source": "upload", "score_file": upload("score.py", SCORE),
        "schema_file": upload("service_schema.json", churn_schema), "requirements_file": upload("requirements.txt", REQUIREMENTS)})
    manifest = Manifest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/manifests/{manifest.pk}/"


def test_the_manifest_page_reports_a_score_py_without_run(page_client, owner, workspace, churn_schema, storage_root):
    model = register(owner, workspace)
    response = page_client(owner).post("/manifests/new/", {
        "name": "churnpred", "models": [str(model.pk)], "source": "upload",
        "score_file": upload("score.py", b"def init():\n    pass\n"), "schema_file": upload("service_schema.json", churn_schema)})
    assert response.status_code == 200 and "does not define run()" in response.content.decode()
    assert not Manifest.objects.exists() and not (storage_root / "manifests").exists()


def test_the_manifest_page_shows_files_escaped_the_schema_table_and_the_hash(page_client, owner, manifest):
    response = page_client(owner).get(f"/manifests/{manifest.name}/")
    html = response.content.decode()
    assert "<script>alert('x')</script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    fields = response.context["fields"]
    assert len(fields) == 29 and {"input": "input_df", "kind": "pandas", "name": "age", "dtype": "int64", "example": 12} in fields
    assert manifest.content_hash in html and "scikit-learn&gt;=1.5" in html


def test_the_manifests_list_searches_and_paginates(page_client, owner, workspace, manifest, churn_schema):
    model = Model.objects.get()
    services.manifest_create(workspace=workspace, name="other", models=[model], score=SCORE, schema=churn_schema,
                             requirements=None, user=owner)
    client = page_client(owner)
    assert [m.name for m in client.get("/manifests/?q=oth").context["page"]] == ["other"]
    assert len(client.get("/manifests/?page_size=1").context["page"]) == 1


def test_building_from_the_manifest_page_queues_an_image(page_client, owner, manifest, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = page_client(owner).post(f"/manifests/{manifest.pk}/build/", {"name": ""})
    image = Image.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/images/{image.pk}/"
    assert image.status == "queued" and image.tag == "mlportal/team/churnpred:1" and len(callbacks) == 1
    html = page_client(owner).get(f"/images/{image.pk}/").content.decode()
    assert 'data-status="queued"' in html and "docker run -p 127.0.0.1:5001:5001" in html
    assert f'data-log-url="/api/v1/images/{image.pk}/log/"' in html  # the page tails the build log


def test_readers_cannot_build_or_create_manifests(page_client, reader, owner, manifest):
    client = page_client(reader)
    assert client.get("/manifests/new/").status_code == 403
    assert client.post(f"/manifests/{manifest.pk}/build/").status_code == 403
    assert not Image.objects.exists()


def test_the_images_list_filters_by_status_and_searches(page_client, owner, manifest):
    first = services.image_create(manifest=manifest, user=owner)
    services.image_create(manifest=manifest, user=owner, name="shadow")
    Image.objects.filter(pk=first.pk).update(status="failed")
    client = page_client(owner)
    assert [i.name for i in client.get("/images/?status=failed").context["page"]] == ["churnpred"]
    assert [i.name for i in client.get("/images/?q=shad").context["page"]] == ["shadow"]
    assert 'data-status="failed"' in client.get("/images/").content.decode()


def test_a_failed_image_page_offers_to_build_its_manifest_again(page_client, owner, reader, manifest, django_capture_on_commit_callbacks):
    failed = services.image_create(manifest=manifest, user=owner, name="churnsvc")
    Image.objects.filter(pk=failed.pk).update(status="failed", error="pip could not find scikit-learn==0.0")
    assert 'data-testid="rebuild-form"' not in page_client(reader).get(f"/images/{failed.pk}/").content.decode()
    html = page_client(owner).get(f"/images/{failed.pk}/").content.decode()
    assert 'data-testid="rebuild-form"' in html and "Build again" in html
    with django_capture_on_commit_callbacks() as callbacks:
        response = page_client(owner).post(f"/manifests/{manifest.pk}/build/", {"name": "churnsvc"})
    again = Image.objects.exclude(pk=failed.pk).get()
    assert response["Location"] == f"/images/{again.pk}/" and len(callbacks) == 1
    assert (again.name, again.version, again.status, again.manifest_id) == ("churnsvc", 2, "queued", manifest.pk)
    # While an image builds, the failure block (with its Build again form) stays hidden until a failure shows it.
    assert 'data-testid="build-error" hidden' in page_client(owner).get(f"/images/{again.pk}/").content.decode()
