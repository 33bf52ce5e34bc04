from importlib import import_module

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from mlportal.csp import csp_report
from mlportal.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("mlportal.api_urls")),
    # MLflow's REST tracking API (a subset), for the stock client: MLFLOW_TRACKING_URI=<portal>/mlflow
    path("mlflow/", include("runs.mlflow_api")),
    path("healthz", healthz, name="healthz"),
    path("csp-report/", csp_report, name="csp-report"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin, Swagger UI's fallback).
    path("favicon.ico", RedirectView.as_view(url=static("img/favicon.svg"), permanent=True)),
    path("", include("workspaces.urls")),
]
# Each app's pages live under its own prefix; apps without pages yet are skipped.
for app, prefix in (("runs", ""), ("registry", ""), ("deployments", ""), ("retention", ""), ("pipelines", "")):
    try:
        import_module(f"{app}.urls")
    except ModuleNotFoundError as exc:
        if exc.name != f"{app}.urls":
            raise
        continue
    urlpatterns.append(path(prefix, include(f"{app}.urls")))
