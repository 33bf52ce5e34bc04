"""Pages: dashboard, workspaces and members, API tokens, activity log."""
from __future__ import annotations

from django.apps import apps
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from core.errors import PortalError
from core.views_base import form_error, paginate, scoped
from workspaces import selectors, services
from workspaces.forms import MemberForm, PortalPasswordChangeForm, RoleForm, TokenForm, WorkspaceForm
from workspaces.models import ApiToken, Role

# (label, "app.Model", list url name): counted on the dashboard when the app provides the model.
DASHBOARD_COUNTS = [
    ("Projects", "runs.Project", "project-list"),
    ("Runs", "runs.Run", "run-list"),
    ("Models", "registry.Model", "model-list"),
    ("Manifests", "registry.Manifest", "manifest-list"),
    ("Images", "registry.Image", "image-list"),
    ("Services", "deployments.Service", "service-list"),
]


def _model(label: str):
    try:
        return apps.get_model(label)
    except LookupError:
        return None


def _url(name: str) -> str:
    try:
        return reverse(name)
    except NoReverseMatch:
        return "#"


@login_required
def dashboard(request):
    workspace = request.workspace
    counts, latest_runs, latest_services = [], [], []
    if workspace is not None:
        for label, model_label, url_name in DASHBOARD_COUNTS:
            model = _model(model_label)
            if model is not None:
                counts.append({"label": label, "count": model.objects.filter(workspace=workspace).count(), "url": _url(url_name)})
        run_model, service_model = _model("runs.Run"), _model("deployments.Service")
        if run_model is not None:
            latest_runs = run_model.objects.filter(workspace=workspace).select_related("project", "created_by").order_by("-created_at")[:8]
        if service_model is not None:
            latest_services = service_model.objects.filter(workspace=workspace).order_by("-created_at")[:8]
    activity = selectors.activity_for_user(request.user).filter(workspace=workspace)[:10] if workspace else []
    return render(request, "workspaces/dashboard.html", {
        "counts": counts, "latest_runs": latest_runs, "latest_services": latest_services, "activity": activity,
    })


@login_required
def workspace_list(request):
    form = WorkspaceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            workspace = services.workspace_create(user=request.user, **form.cleaned_data)
        except PortalError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Workspace '{workspace.name}' created; it is now your current workspace.")
            return redirect("workspace-detail", ref=workspace.name)
    qs = selectors.workspaces_for_user(request.user).order_by("name")
    if q := request.GET.get("q", "").strip():
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    return render(request, "workspaces/workspace_list.html", {"page": paginate(request, qs), "form": form, "q": q})


@login_required
def workspace_detail(request, ref: str):
    workspace = selectors.workspace_by_ref(request.user, ref)
    if workspace is None:
        from django.http import Http404

        raise Http404("No such workspace among yours.")
    role = selectors.role_in(request.user, workspace.id)
    form = MemberForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.membership_add(workspace=workspace, user=request.user, **form.cleaned_data)
        except PortalError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"{form.cleaned_data['username']} added as {form.cleaned_data['role']}.")
            return redirect("workspace-detail", ref=workspace.name)
    return render(request, "workspaces/workspace_detail.html", {
        "workspace": workspace, "role": role, "is_owner": role == Role.OWNER,
        "members": selectors.members_of(workspace), "form": form, "roles": Role.choices,
    })


@login_required
@require_POST
def member_change(request, ref: str, username: str):
    workspace = selectors.workspace_by_ref(request.user, ref)
    membership = workspace and selectors.members_of(workspace).filter(user__username=username).first()
    if membership is None:
        from django.http import Http404

        raise Http404("No such member.")
    try:
        if request.POST.get("action") == "remove":
            services.membership_remove(membership=membership, user=request.user)
            messages.success(request, f"{username} removed from {workspace.name}.")
        else:
            form = RoleForm(request.POST)
            if not form.is_valid():
                raise PortalError("Choose a role: reader, contributor or owner.")
            services.membership_set_role(membership=membership, role=form.cleaned_data["role"], user=request.user)
            messages.success(request, f"{username} is now {form.cleaned_data['role']}.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("workspace-detail", ref=workspace.name)


@login_required
@require_POST
def workspace_switch(request):
    workspace = selectors.workspace_by_ref(request.user, request.POST.get("workspace", ""))
    if workspace is None:
        messages.error(request, "No such workspace among yours.")
    else:
        services.profile_set_current_workspace(user=request.user, workspace=workspace)
    target = request.POST.get("next") or ""
    # Only a path of this site: '/\\evil.com' and '//evil.com' are other hosts to a browser.
    if not (target.startswith("/") and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure())):
        target = reverse("dashboard")
    return redirect(target)


@login_required
def token_list(request):
    form = TokenForm(request.POST or None)
    new_secret = None
    if request.method == "POST" and form.is_valid():
        try:
            token, new_secret = services.token_create(user=request.user, name=form.cleaned_data["name"],
                                                      expires_in_days=form.cleaned_data["expires_in_days"],
                                                      read_only=form.cleaned_data["read_only"])
        except PortalError as exc:
            form_error(form, exc)
        else:
            form = TokenForm()
            messages.success(request, f"Token '{token.name}' created. Copy it now: it will not be shown again.")
    tokens = selectors.tokens_of(request.user)
    return render(request, "workspaces/token_list.html", {"page": paginate(request, tokens), "form": form, "new_secret": new_secret})


@login_required
@require_POST
def token_revoke(request, token_id):
    token = get_object_or_404(ApiToken, id=token_id, user=request.user)
    services.token_revoke(token=token, user=request.user)
    messages.success(request, f"Token '{token.name}' revoked: it stops working at once.")
    return redirect("token-list")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change; the user's API tokens are revoked with it (workspaces.signals) unless
    they tick "Keep my API tokens"."""

    form_class = PortalPasswordChangeForm
    template_name = "workspaces/password_change.html"

    def form_valid(self, form):
        form.user.keep_api_tokens = bool(form.cleaned_data.get("keep_tokens"))  # read by workspaces.signals
        response = super().form_valid(form)
        count = getattr(form.user, "revoked_token_count", 0)
        if count:
            messages.info(self.request, f"{count} API token(s) revoked with the old password: make new ones on the API tokens page.")
        return response


@login_required
def activity_list(request):
    qs = scoped(request, selectors.activity_for_user(request.user))
    filters = {k: request.GET.get(k, "").strip() for k in ("q", "actor", "target_type", "verb")}
    if filters["q"]:
        qs = qs.filter(Q(target_name__icontains=filters["q"]) | Q(verb__icontains=filters["q"]))
    if filters["actor"]:
        qs = qs.filter(actor__username=filters["actor"])
    if filters["target_type"]:
        qs = qs.filter(target_type=filters["target_type"])
    if filters["verb"]:
        qs = qs.filter(verb__startswith=filters["verb"])
    types = scoped(request, selectors.activity_for_user(request.user)).order_by().values_list("target_type", flat=True).distinct()
    return render(request, "workspaces/activity_list.html", {"page": paginate(request, qs), "filters": filters, "types": sorted(set(types))})
