from django.urls import path

from pipelines import views

urlpatterns = [
    path("pipelines/", views.pipeline_list, name="pipeline-list"),
    path("pipelines/<str:ref>/", views.pipeline_detail, name="pipeline-detail"),
    path("pipelines/<str:ref>/run/", views.pipeline_run_now, name="pipeline-run-now"),
    path("pipelines/<str:ref>/delete/", views.pipeline_delete, name="pipeline-delete"),
    path("pipeline-runs/<str:ref>/", views.pipeline_run_detail, name="pipeline-run-detail"),
    path("pipeline-runs/<str:ref>/cancel/", views.pipeline_run_cancel, name="pipeline-run-cancel"),
]
