from django.urls import path

from pipelines import views

urlpatterns = [
    path("pipelines/", views.pipeline_list, name="pipeline-list"),
    path("pipelines/<str:ref>/", views.pipeline_detail, name="pipeline-detail"),
    path("pipelines/<str:ref>/run/", views.pipeline_run_now, name="pipeline-run-now"),
    path("pipelines/<str:ref>/delete/", views.pipeline_delete, name="pipeline-delete"),
    path("pipeline-runs/<str:ref>/", views.pipeline_run_detail, name="pipeline-run-detail"),
    path("pipeline-runs/<str:ref>/cancel/", views.pipeline_run_cancel, name="pipeline-run-cancel"),
    path("webhooks/", views.webhook_list, name="webhook-list"),
    path("webhooks/<str:ref>/", views.webhook_detail, name="webhook-detail"),
    path("webhooks/<str:ref>/test/", views.webhook_test, name="webhook-test"),
    path("webhooks/<str:ref>/delete/", views.webhook_delete, name="webhook-delete"),
]
