"""The Services and Environments pages: lists, the service page's tabs, forms, roles, outsiders."""
from __future__ import annotations

import io

import pytest

from deployments import services
from deployments.models import Environment, Service

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(owner_api, create_realtime):
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 201, response.json()
    return Service.objects.get()


def test_the_service_list_shows_status_image_and_environment_with_filters(page_client, owner, service, create_realtime, owner_api):
    create_realtime(owner_api, "fraud")
    client = page_client(owner)
    html = client.get("/services/").content.decode()
    assert "churnpred" in html and "fraud" in html and 'data-status="creating"' in html and "churnpred v1" in html
    filtered = client.get("/services/?q=fra").content.decode()
    assert "fraud" in filtered and "churnpred" not in filtered
    assert "No service matches" in client.get("/services/?status=healthy").content.decode()
    assert client.get("/services/?sort=-name&environment=local&page=9").status_code == 200


def test_the_service_page_shows_steps_endpoints_usage_and_the_test_form(page_client, reader, service):
    html = page_client(reader).get(f"/services/{service.name}/").content.decode()
    for text in ("Register model", "model.pkl:1", "Create manifest", "Build image", "Start service",
                 "http://testserver/api/v1/services/churnpred/score", "mlportal service run realtime -i churnpred -d",
                 "curl -X POST", "Authorization: Bearer &lt;service-key&gt;", 'data-testid="test-body"',
                 'data-testid="reveal-keys"', "noadditionallines", f'data-keys-url="/api/v1/services/{service.pk}/keys/"',
                 f'data-logs-url="/api/v1/services/{service.pk}/logs/"', f'data-score-url="/api/v1/services/{service.pk}/score"',
                 "vendor/chart.js/chart.umd.min.js"):
        assert text in html, text
    assert service.primary_key not in html  # keys only on demand, through the keys endpoint
    # A reader sees no change forms.
    assert 'data-testid="update-form"' not in html and "Regenerate primary" not in html


def test_contributors_see_the_change_forms_and_owners_the_delete_button(page_client, contributor, owner, service):
    html = page_client(contributor).get(f"/services/{service.pk}/").content.decode()
    assert 'data-testid="update-form"' in html and "Regenerate primary" in html and "btn-danger" not in html
    assert "btn-danger" in page_client(owner).get(f"/services/{service.pk}/").content.decode()


def test_names_and_messages_are_escaped(page_client, owner, service):
    services.event(service.pk, '<script>alert("x")</script>')
    Service.objects.update(error="<img src=x onerror=alert(1)>")
    html = page_client(owner).get(f"/services/{service.pk}/").content.decode()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and "&lt;img src=x" in html


def test_outsiders_get_404_for_every_service_and_environment_page(page_client, outsider, service):
    client = page_client(outsider)
    for ref in (service.name, str(service.pk)):
        assert client.get(f"/services/{ref}/").status_code == 404
        for action in ("update", "rollback", "scale", "regenerate-key", "delete"):
            assert client.post(f"/services/{ref}/{action}/", {"replicas": 2, "key": "primary"}).status_code == 404, action
    for ref in ("local", str(Environment.objects.get().pk)):
        assert client.get(f"/environments/{ref}/").status_code == 404
        assert client.post(f"/environments/{ref}/activate/").status_code == 404
        assert client.post(f"/environments/{ref}/delete/").status_code == 404
    assert "churnpred" not in client.get("/services/").content.decode()


def test_readers_get_403_on_page_actions(page_client, reader, service):
    client = page_client(reader)
    assert client.post(f"/services/{service.pk}/scale/", {"replicas": 2}).status_code == 403
    assert client.post(f"/services/{service.pk}/delete/").status_code == 403
    assert client.post("/environments/local/delete/").status_code == 403


def test_a_change_refused_by_the_service_is_shown_as_a_message(page_client, owner, service):
    response = page_client(owner).post(f"/services/{service.pk}/scale/", {"replicas": 2}, follow=True)
    assert "is creating: wait until it is healthy" in response.content.decode()


def test_the_owner_deletes_from_the_page(page_client, owner, service):
    response = page_client(owner).post(f"/services/{service.pk}/delete/", follow=True)
    assert "Deleting service" in response.content.decode()
    assert Service.objects.get().status == "deleting"


def test_the_one_shot_form_creates_the_service_and_shows_mistakes_next_to_the_field(page_client, owner, workspace, churn):
    client = page_client(owner)
    assert client.get("/services/new/").status_code == 200

    def files(**extra):
        data = {"mode": "realtime", "name": "churnpred", "replicas": 1, "model_name": "", "environment": "", **extra}
        for field, name, content in (("model_file", "model.pkl", churn["model"]), ("score_file", "score.py", churn["score"]),
                                     ("schema_file", "service_schema.json", churn["schema"])):
            handle = io.BytesIO(content)
            handle.name = name
            data[field] = handle
        return data

    bad = client.post("/services/new/", files(replicas=0))
    assert bad.status_code == 200 and "Replicas must be at least 1" in bad.content.decode()
    assert not Service.objects.exists()
    done = client.post("/services/new/", files(), follow=True)
    html = done.content.decode()
    assert "created environment &#x27;local&#x27;" in html and "is being created" in html
    assert Service.objects.get().name == "churnpred"


def test_environments_are_set_up_activated_and_deleted_from_the_pages(page_client, owner, workspace):
    client = page_client(owner)
    bad = client.post("/environments/", {"name": "remote", "engine_url": "http://nope"})
    assert bad.status_code == 200 and "not supported" in bad.content.decode()
    created = client.post("/environments/", {"name": "staging", "labels": '{"stage": "staging"}'}, follow=True)
    assert "Environment &#x27;staging&#x27; created." in created.content.decode()
    environment = Environment.objects.get()
    assert environment.labels == {"stage": "staging"}
    listed = client.get("/environments/?q=stag").content.decode()
    assert "staging" in listed and "stage=staging" in listed
    activated = client.post(f"/environments/{environment.pk}/activate/", follow=True).content.decode()
    assert "your active environment" in activated
    assert client.post(f"/environments/{environment.pk}/delete/", follow=True).status_code == 200
    assert not Environment.objects.exists()


def test_an_environment_in_use_is_not_deleted_from_the_page(page_client, owner, service):
    response = page_client(owner).post("/environments/local/delete/", follow=True)
    assert "runs service churnpred" in response.content.decode()
    assert Environment.objects.exists()
    page = page_client(owner).get("/environments/local/").content.decode()
    assert "churnpred" in page and 'data-testid="engine-status"' in page


def test_an_environment_is_edited_on_its_page_and_mistakes_show_next_to_the_field(page_client, owner, reader, workspace):
    client = page_client(owner)
    client.post("/environments/", {"name": "staging", "labels": '{"stage": "staging"}'})
    environment = Environment.objects.get()
    page = client.get(f"/environments/{environment.pk}/").content.decode()
    assert 'data-testid="environment-edit-form"' in page and "{&quot;stage&quot;: &quot;staging&quot;}" in page
    bad = client.post(f"/environments/{environment.pk}/", {"labels": "[1]", "publish_address": "127.0.0.1"})
    assert bad.status_code == 200 and "Write a JSON object" in bad.content.decode()
    bad = client.post(f"/environments/{environment.pk}/", {"engine_url": "http://nope", "publish_address": "127.0.0.1"})
    assert "not supported" in bad.content.decode()
    environment.refresh_from_db()
    assert (environment.labels, environment.engine_url) == ({"stage": "staging"}, "")
    saved = client.post(f"/environments/{environment.pk}/", {"description": "<b>staging</b> host",
                                                             "labels": '{"stage": "staging", "team": "ml"}',
                                                             "engine_url": "", "publish_address": "127.0.0.1"}, follow=True)
    html = saved.content.decode()
    assert "Environment &#x27;staging&#x27; saved." in html and "&lt;b&gt;staging&lt;/b&gt; host" in html
    environment.refresh_from_db()
    assert environment.labels == {"stage": "staging", "team": "ml"} and environment.description == "<b>staging</b> host"
    # Readers see no form and cannot post one.
    assert 'environment-edit-form' not in page_client(reader).get(f"/environments/{environment.pk}/").content.decode()
    assert page_client(reader).post(f"/environments/{environment.pk}/", {"description": "x"}).status_code == 403


def test_an_environment_in_use_keeps_its_engine_when_edited_on_the_page(page_client, owner, service):
    response = page_client(owner).post("/environments/local/", {"engine_url": "tcp://10.0.0.5:2375", "publish_address": "127.0.0.1"})
    assert response.status_code == 200 and "runs service churnpred: its engine cannot change" in response.content.decode()
    assert Environment.objects.get(name="local").engine_url == ""
