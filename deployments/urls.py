from django.urls import path

from deployments import views

urlpatterns = [
    path("services/", views.service_list, name="service-list"),
    path("services/new/", views.service_create, name="service-create"),
    path("services/<str:ref>/", views.service_detail, name="service-detail"),
    path("services/<str:ref>/update/", views.service_update, name="service-update"),
    path("services/<str:ref>/rollback/", views.service_rollback, name="service-rollback"),
    path("services/<str:ref>/traffic/", views.service_traffic, name="service-traffic"),
    path("services/<str:ref>/scale/", views.service_scale, name="service-scale"),
    path("services/<str:ref>/autoscale/", views.service_autoscale, name="service-autoscale"),
    path("services/<str:ref>/request-timeout/", views.service_request_timeout, name="service-request-timeout"),
    path("services/<str:ref>/regenerate-key/", views.service_regenerate_key, name="service-regenerate-key"),
    path("services/<str:ref>/delete/", views.service_delete, name="service-delete"),
    path("environments/", views.environment_list, name="environment-list"),
    path("environments/<str:ref>/", views.environment_detail, name="environment-detail"),
    path("environments/<str:ref>/activate/", views.environment_activate, name="environment-activate"),
    path("environments/<str:ref>/delete/", views.environment_delete, name="environment-delete"),
]
