"""Issue 19, Kubernetes manifests: a service written as a Secret, a Deployment, a Service and an
autoscaling/v2 HorizontalPodAutoscaler, from the pure generator, the API, the service page and the
CLI. Every object is validated (strict) against the Kubernetes schemas of ``KUBERNETES_VERSION``
with kubernetes-validate; the keys must appear in the Secret and nowhere else."""
from __future__ import annotations

import base64

import kubernetes_validate
import pytest
import yaml

from deployments import kubernetes

PRIMARY = "primary-" + "p" * 40
SECONDARY = "secondary-" + "s" * 40
TAG = "mlportal/churnpred:3-0a1b2c3d"


def plain(**overrides) -> dict:
    return {"name": "churnpred", "workspace": "team", "image": TAG, "replicas": 2, "cpus": 0.5,
            "memory_mb": 768, "primary_key": PRIMARY, "secondary_key": SECONDARY, **overrides}


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        # raises ValidationError (with the path of the wrong field) on any mismatch, unknown fields included
        kubernetes_validate.validate(obj, kubernetes.KUBERNETES_VERSION, strict=True)


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = {obj["kind"]: obj for obj in objects}
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Secret", "Service"]
    return kinds


def keys_only_in_secret(text_objects: list[dict]) -> None:
    kinds = by_kind(text_objects)
    secret = kinds.pop("Secret")
    assert base64.b64decode(secret["data"]["primary"]).decode() == PRIMARY
    assert base64.b64decode(secret["data"]["secondary"]).decode() == SECONDARY
    rest = yaml.safe_dump_all(list(kinds.values()))
    for key in (PRIMARY, SECONDARY):
        for form in (key, base64.b64encode(key.encode()).decode()):
            assert form not in rest


# --- the pure generator ---------------------------------------------------------------------------

def test_the_validator_refuses_a_wrong_object_so_the_checks_below_can_fail():
    objects = kubernetes.manifests(plain())
    deployment = by_kind(objects)["Deployment"]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes.KUBERNETES_VERSION, strict=True)
    hpa = by_kind(objects)["HorizontalPodAutoscaler"]
    hpa["spec"]["targetCPUUtilizationPercentage"] = 70  # an autoscaling/v1 field: unknown in v2 (strict)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, kubernetes.KUBERNETES_VERSION, strict=True)


def test_every_object_validates_and_the_deployment_carries_image_probes_resources_and_rolling_update():
    objects = kubernetes.manifests(plain())
    validate_all(objects)
    kinds = by_kind(objects)
    spec = kinds["Deployment"]["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == TAG
    assert container["ports"] == [{"name": "scoring", "containerPort": 5001, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "scoring"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "scoring"}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "768Mi"},
                                      "limits": {"cpu": "500m", "memory": "768Mi"}}
    # the Service selects the Deployment's pods and forwards to the scoring port
    assert kinds["Service"]["spec"]["selector"] == spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "scoring"
    # the keys reach the scoring server from the Secret only
    env = {item["name"]: item for item in container["env"]}
    assert env["MLPORTAL_PRIMARY_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "churnpred-keys", "key": "primary"}
    assert env["MLPORTAL_SECONDARY_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "churnpred-keys", "key": "secondary"}
    assert env["MLPORTAL_SERVICE_KEYS"]["value"] == "$(MLPORTAL_PRIMARY_KEY),$(MLPORTAL_SECONDARY_KEY)"
    assert kinds["Secret"]["metadata"]["name"] == "churnpred-keys"
    keys_only_in_secret(objects)


def test_the_hpa_uses_azure_mls_defaults_and_says_so_when_the_service_has_no_autoscale_settings():
    text = kubernetes.to_yaml(plain())
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    validate_all(objects)
    hpa = by_kind(objects)["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "churnpred"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "# The service has no autoscale settings: the HorizontalPodAutoscaler uses Azure ML's defaults (min 1, max 10" in text
    assert "&id" not in text and "*id" not in text  # no YAML anchors


def test_the_hpa_carries_the_services_autoscale_settings():
    text = kubernetes.to_yaml(plain(autoscale={"min_replicas": 2, "max_replicas": 5, "target_utilization": 55}))
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    validate_all(objects)
    spec = by_kind(objects)["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
    assert "Azure ML's defaults" not in text and "autoscale settings (min 2, max 5, target 55%)" in text


@pytest.mark.parametrize("autoscale, message", [
    ({"min_replicas": 4, "max_replicas": 2}, "1 <= min_replicas <= max_replicas"),
    ({"min_replicas": 0}, "1 <= min_replicas"),
    ({"target_utilization": 101}, "from 1 to 100"),
])
def test_impossible_autoscale_settings_are_refused(autoscale, message):
    with pytest.raises(ValueError, match=message.replace("<", r"\<")):
        kubernetes.manifests(plain(autoscale=autoscale))


def test_names_become_valid_kubernetes_names_and_small_cpus_round_up():
    objects = kubernetes.manifests(plain(name="Churn_Pred.v2", cpus=0.0001, memory_mb=64))
    validate_all(objects)
    kinds = by_kind(objects)
    assert kinds["Deployment"]["metadata"]["name"] == "churn-pred-v2"
    assert kinds["Secret"]["metadata"]["name"] == "churn-pred-v2-keys"
    resources = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "1m", "memory": "64Mi"}
    assert kubernetes.manifests(plain(name="9lives"))[1]["metadata"]["name"] == "svc-9lives"


def test_a_dict_without_the_keys_is_refused():
    with pytest.raises(ValueError, match="lacks primary_key"):
        kubernetes.manifests(plain(primary_key=""))


# --- API, page and CLI on a recorded service --------------------------------------------------------

@pytest.fixture
def service(db, owner, workspace):
    from deployments.models import Environment, Service
    from registry.models import Image, Manifest

    manifest = Manifest.objects.create(workspace=workspace, name="churnpred", version=3, content_hash="0" * 64, created_by=owner)
    image = Image.objects.create(workspace=workspace, manifest=manifest, name="churnpred", version=3, tag=TAG,
                                 status=Image.Status.SUCCEEDED, created_by=owner)
    environment = Environment.objects.create(workspace=workspace, name="local")
    return Service.objects.create(workspace=workspace, name="churnsvc", environment=environment, image=image,
                                  status="healthy", replicas=3, cpus=1.5, memory_mb=2048, created_by=owner,
                                  primary_key=PRIMARY, secondary_key=SECONDARY, proxy_key="proxy-" + "x" * 40)


def test_the_api_answers_valid_yaml_by_name_and_by_id(owner_api, service):
    for ref in ("churnsvc", str(service.pk)):
        response = owner_api.get(f"/api/v1/services/{ref}/export/?format=kubernetes")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("application/yaml")
        assert response["Content-Disposition"] == 'attachment; filename="churnsvc-kubernetes.yaml"'
        assert response["Cache-Control"] == "no-store"
        objects = [doc for doc in yaml.safe_load_all(response.content.decode()) if doc]
        validate_all(objects)
        kinds = by_kind(objects)
        spec = kinds["Deployment"]["spec"]
        assert spec["replicas"] == 3
        container = spec["template"]["spec"]["containers"][0]
        assert container["image"] == TAG
        assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "2048Mi"}
        assert kinds["Deployment"]["metadata"]["labels"]["mlportal/workspace"] == "team"
        assert (kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"], kinds["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]) == (1, 10)
        keys_only_in_secret(objects)


def test_the_export_follows_the_services_current_image(owner_api, service, owner, workspace):
    from registry.models import Image

    newer = Image.objects.create(workspace=workspace, manifest=service.image.manifest, name="churnpred", version=4,
                                 tag="mlportal/churnpred:4-ffff", status=Image.Status.SUCCEEDED, created_by=owner)
    type(service).objects.filter(pk=service.pk).update(image=newer)
    body = owner_api.get("/api/v1/services/churnsvc/export/?format=kubernetes").content.decode()
    deployment = by_kind([d for d in yaml.safe_load_all(body) if d])["Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "mlportal/churnpred:4-ffff"


def test_an_unknown_or_missing_format_is_a_400_naming_the_formats(owner_api, service):
    for query, said in (("?format=helm", "Unknown export format 'helm'"), ("", "Say which export format")):
        response = owner_api.get(f"/api/v1/services/churnsvc/export/{query}")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid" and error["message"].startswith(said) and "kubernetes" in error["message"]
        assert error["fields"] == {"format": ["One of: kubernetes."]}


def test_outsiders_get_404_and_readers_of_the_workspace_may_export(outsider_api, reader_api, service):
    response = outsider_api.get("/api/v1/services/churnsvc/export/?format=kubernetes")
    assert response.status_code == 404
    assert PRIMARY not in response.content.decode()
    assert outsider_api.get(f"/api/v1/services/{service.pk}/export/?format=kubernetes").status_code == 404
    # a reader already sees the keys (GET keys/): the export shows no more than that
    assert reader_api.get("/api/v1/services/churnsvc/export/?format=kubernetes").status_code == 200


def test_the_service_page_links_the_download(page_client, owner, service):
    page = page_client(owner).get(f"/services/{service.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    href = f"/api/v1/services/{service.pk}/export/?format=kubernetes"
    assert f'href="{href}" download data-testid="export-kubernetes"' in html
    download = page_client(owner).get(href)  # the page's session is enough
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment;")
    validate_all([doc for doc in yaml.safe_load_all(download.content.decode()) if doc])


def test_the_hpa_reacts_as_fast_as_the_services_refresh_and_stable_window_say():
    autoscale = {"min_replicas": 1, "max_replicas": 4, "target_utilization": 60, "refresh_seconds": 2, "stable_seconds": 30}
    text = kubernetes.to_yaml(plain(autoscale=autoscale))
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    validate_all(objects)
    behavior = by_kind(objects)["HorizontalPodAutoscaler"]["spec"]["behavior"]
    assert behavior["scaleDown"] == {"stabilizationWindowSeconds": 30}
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleUp"]["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 2}]
    assert "refresh 2 s, scale-down window 30 s" in text
    assert "behavior" not in by_kind(kubernetes.manifests(plain()))["HorizontalPodAutoscaler"]["spec"]
