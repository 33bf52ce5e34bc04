"""Concurrent first services of a workspace (each would make the automatic `local` environment)
share one and never fail: 20 API requests released together against the real database
(transactional_db), as issue 12 asks of every race it lists."""
import pytest

from tests.platform.test_races import THREADS, race
from tests.registry.conftest import REQUIREMENTS, SCORE, upload

# The session worker, when it runs, deploys the 20 services from the committed rows: their
# containers go after the test (20 churn containers stayed running after a full run).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("remove_our_containers")]


def test_concurrent_first_services_share_one_automatic_local_environment(owner, workspace, churn_schema, api_for):
    from deployments.models import Environment, Service
    from registry import services as registry
    from registry.models import Image

    model = registry.model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload("model.pkl", b"m"),
                                           filename="model.pkl", user=owner)
    manifest = registry.manifest_create(workspace=workspace, name="churnpred", models=[model], score=SCORE,
                                        schema=churn_schema, requirements=REQUIREMENTS, user=owner)
    image = registry.image_create(manifest=manifest, user=owner)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.SUCCEEDED)
    clients = [api_for(owner) for _ in range(THREADS)]
    answers = race(THREADS, lambda i: clients[i].post("/api/v1/services/", {"name": f"svc{i}", "image": image.ref},
                                                       format="json"))
    codes = [getattr(a, "status_code", a) for a in answers]
    assert codes == [201] * THREADS, [getattr(a, "content", a) for a in answers if getattr(a, "status_code", 0) != 201][:3]
    assert sorted(a.json()["environment"] for a in answers) == ["local"] * THREADS
    assert list(Environment.objects.filter(workspace=workspace).values_list("name", flat=True)) == ["local"]
    assert Service.objects.filter(workspace=workspace, environment__name="local").count() == THREADS
