from importlib import import_module

from django.contrib import admin
from django.urls import include, path

from mlportal.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("mlportal.api_urls")),
    # MLflow's REST tracking API (a subset), for the stock client: MLFLOW_TRACKING_URI=<portal>/mlflow
    path("mlflow/", include("runs.mlflow_api")),
    path("healthz", healthz, name="healthz"),
    path("", include("workspaces.urls")),
]
# Each app's pages live under its own prefix; apps without pages yet are skipped.
for app, prefix in (("runs", ""), ("registry", ""), ("deployments", "")):
    try:
        import_module(f"{app}.urls")
    except ModuleNotFoundError as exc:
        if exc.name != f"{app}.urls":
            raise
        continue
    urlpatterns.append(path(prefix, include(f"{app}.urls")))
