from django.urls import path

from registry import views

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/register/", views.model_register, name="model-register"),
    path("models/<str:ref>/", views.model_detail, name="model-detail"),
    path("models/<str:ref>/download/", views.model_download, name="model-download"),
    path("models/<str:ref>/edit/", views.model_edit, name="model-edit"),
    path("models/<str:ref>/delete/", views.model_delete, name="model-delete"),
    path("models/<str:ref>/accept/", views.model_accept, name="model-accept"),
    path("models/<str:ref>/alias/", views.model_alias_set, name="model-alias-set"),
    path("manifests/", views.manifest_list, name="manifest-list"),
    path("manifests/new/", views.manifest_create, name="manifest-create"),
    path("manifests/<str:ref>/", views.manifest_detail, name="manifest-detail"),
    path("manifests/<str:ref>/build/", views.manifest_build, name="manifest-build"),
    path("manifests/<str:ref>/delete/", views.manifest_delete, name="manifest-delete"),
    path("images/", views.image_list, name="image-list"),
    path("images/<str:ref>/", views.image_detail, name="image-detail"),
    path("images/<str:ref>/delete/", views.image_delete, name="image-delete"),
]
