"""Service keys are encrypted at rest (Fernet, a key derived from SECRET_KEY) and shown again on
demand as before; plain keys of older rows are encrypted by the migration."""
import importlib

import pytest
from django.apps import apps
from django.db import connection

from registry import services
from tests.registry.conftest import upload
from tests.registry.conftest import REQUIREMENTS, SCORE
from workspaces.crypto import is_encrypted

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(owner, workspace, churn_schema):
    from deployments.models import Environment, Service

    model = services.model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload("model.pkl", b"m"),
                                           filename="model.pkl", user=owner)
    manifest = services.manifest_create(workspace=workspace, name="churnpred", models=[model], score=SCORE,
                                        schema=churn_schema, requirements=REQUIREMENTS, user=owner)
    image = services.image_create(manifest=manifest, user=owner)
    environment = Environment.objects.create(workspace=workspace, name="local")
    return Service.objects.create(workspace=workspace, name="churnsvc", environment=environment, image=image,
                                  status="healthy", primary_key="primary-" + "p" * 40, secondary_key="secondary-" + "s" * 40,
                                  proxy_key="proxy-" + "x" * 40)


def _raw(service_id):
    with connection.cursor() as cursor:
        cursor.execute("SELECT primary_key, secondary_key, proxy_key FROM deployments_service WHERE id = %s", [service_id.hex if connection.vendor == "sqlite" else service_id])
        return cursor.fetchone()


def test_the_database_holds_only_tokens(service):
    raw = _raw(service.pk)
    assert all(is_encrypted(value) for value in raw)
    assert not any("p" * 40 in value or "s" * 40 in value or "x" * 40 in value for value in raw)


def test_the_keys_are_shown_again_on_demand(owner_api, service):
    from deployments.models import Service

    fresh = Service.objects.get(pk=service.pk)
    assert fresh.primary_key == "primary-" + "p" * 40 and fresh.proxy_key == "proxy-" + "x" * 40
    keys = owner_api.get("/api/v1/services/churnsvc/keys/").json()
    assert keys == {"primary": "primary-" + "p" * 40, "secondary": "secondary-" + "s" * 40}


def test_another_secret_key_cannot_read_them_but_a_fallback_can(service, settings):
    from deployments.models import Service

    old = settings.SECRET_KEY
    settings.SECRET_KEY = "another-secret-key-" + "z" * 40
    with pytest.raises(ValueError, match="SECRET_KEY_FALLBACKS"):
        Service.objects.get(pk=service.pk)
    settings.SECRET_KEY_FALLBACKS = [old]
    assert Service.objects.get(pk=service.pk).primary_key == "primary-" + "p" * 40


def test_the_migration_encrypts_plain_keys_of_older_rows(service):
    from deployments.models import Service

    with connection.cursor() as cursor:
        cursor.execute("UPDATE deployments_service SET primary_key = %s, secondary_key = %s, proxy_key = %s WHERE id = %s",
                       ["plain-primary", "plain-secondary", "plain-proxy", service.pk.hex if connection.vendor == "sqlite" else service.pk])
    assert Service.objects.get(pk=service.pk).primary_key == "plain-primary"  # read as it is until migrated
    migration = importlib.import_module("deployments.migrations.0002_encrypt_service_keys")
    migration.encrypt_plain_keys(apps, None)
    raw = _raw(service.pk)
    assert all(is_encrypted(value) for value in raw)
    assert Service.objects.get(pk=service.pk).keys == ["plain-primary", "plain-secondary"]
