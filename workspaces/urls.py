from django.contrib.auth import views as auth_views
from django.urls import path

from workspaces import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(template_name="workspaces/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(template_name="workspaces/password_change_done.html"), name="password_change_done"),
    path("workspaces/", views.workspace_list, name="workspace-list"),
    path("workspaces/switch/", views.workspace_switch, name="workspace-switch"),
    path("workspaces/<str:ref>/", views.workspace_detail, name="workspace-detail"),
    path("workspaces/<str:ref>/members/<str:username>/", views.member_change, name="member-change"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<uuid:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("activity/", views.activity_list, name="activity-list"),
]
