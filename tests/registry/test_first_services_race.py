"""Concurrent first services of a workspace (each would make the automatic `local` environment)
share one and never fail (threads against the real database, transactional_db)."""
import pytest

from tests.platform.test_races import race
from tests.registry.conftest import REQUIREMENTS, SCORE, upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_first_services_share_one_automatic_local_environment(owner, workspace, churn_schema):
    from deployments import services as deploy
    from deployments.models import Environment, Service
    from registry import services as registry
    from registry.models import Image

    model = registry.model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload("model.pkl", b"m"),
                                           filename="model.pkl", user=owner)
    manifest = registry.manifest_create(workspace=workspace, name="churnpred", models=[model], score=SCORE,
                                        schema=churn_schema, requirements=REQUIREMENTS, user=owner)
    image = registry.image_create(manifest=manifest, user=owner)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.SUCCEEDED)
    image.refresh_from_db()
    count = 6
    results = race(count, lambda i: deploy.service_create(workspace=workspace, name=f"svc{i}", image=image, user=owner)[0].name)
    assert sorted(results) == sorted(f"svc{i}" for i in range(count)), results
    assert list(Environment.objects.filter(workspace=workspace).values_list("name", flat=True)) == ["local"]
    assert Service.objects.filter(workspace=workspace, environment__name="local").count() == count
