from django.urls import path

from runs import views

urlpatterns = [
    path("projects/", views.project_list, name="project-list"),
    path("projects/<str:ref>/", views.project_detail, name="project-detail"),
    path("projects/<str:ref>/run/", views.project_run, name="project-run"),
    path("projects/<str:ref>/prepare/", views.project_prepare, name="project-prepare"),
    path("projects/<str:ref>/settings/", views.project_settings, name="project-settings"),
    path("projects/<str:ref>/upload/", views.project_upload, name="project-upload"),
    path("projects/<str:ref>/new-file/", views.project_file_new, name="project-file-new"),
    path("projects/<str:ref>/files/<path:path>", views.project_file, name="project-file"),
    path("runs/", views.run_list, name="run-list"),
    path("runs/compare/", views.run_compare, name="run-compare"),
    path("runs/<uuid:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<uuid:run_id>/annotate/", views.run_annotate, name="run-annotate"),
    path("runs/<uuid:run_id>/outputs/<path:path>", views.run_output, name="run-output"),
]
