"""The REST API under /api/v1/: one router; each app lists its collections in `<app>.api.ROUTES`."""
from importlib import import_module

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from mlportal.csp import ApiDocsView
from mlportal.health import healthz

router = DefaultRouter(trailing_slash="/?")
extra_urls = []
for app in ("workspaces", "runs", "registry", "deployments", "retention", "pipelines"):
    try:
        module = import_module(f"{app}.api")
    except ModuleNotFoundError as exc:
        if exc.name != f"{app}.api":
            raise
        continue
    for prefix, viewset, basename in getattr(module, "ROUTES", []):
        router.register(prefix, viewset, basename=basename)
    extra_urls += getattr(module, "EXTRA_URLS", [])

from workspaces.api import MeView  # noqa: E402

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz/", healthz, name="api-healthz"),
    path("me/", MeView.as_view(), name="api-me"),
    *extra_urls,
    path("", include(router.urls)),
]
