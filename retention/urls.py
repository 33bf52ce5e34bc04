from django.urls import path

from retention import views

urlpatterns = [path("storage/", views.storage_page, name="storage")]
