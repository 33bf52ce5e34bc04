"""The Storage page: usage per project, model and image, the retention form, what it frees next."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render

from retention import selectors, services
from retention.models import RetentionPolicy
from core.errors import PortalError
from workspaces.models import Role
from workspaces.selectors import has_role, role_in
from core.views_base import require_page_role

LABELS = {
    "run_files_keep_days": "Runs' logs and outputs: keep days",
    "run_files_keep_last": "Runs' logs and outputs: keep the last N per project",
    "unused_images_keep_days": "Images no service uses: keep days",
    "unused_images_keep_last": "Images no service uses: keep the last N per name",
    "capture_keep_days": "Captured scoring data: keep days",
}


@login_required
def storage_page(request):
    workspace = request.workspace
    if workspace is None:
        raise Http404("You belong to no workspace yet.")
    require_page_role(request, workspace, Role.READER)
    is_owner = has_role(role_in(request.user, workspace.pk), Role.OWNER)
    errors = {}
    if request.method == "POST":
        require_page_role(request, workspace, Role.OWNER)
        if request.POST.get("action") == "apply":
            from retention.tasks import apply_retention

            workspace_id = str(workspace.pk)
            transaction.on_commit(lambda: apply_retention.delay(workspace_id))
            messages.success(request, "Retention is being applied on the maintenance worker.")
            return redirect("storage")
        try:
            services.retention_policy_update(workspace=workspace, user=request.user,
                                             **{name: request.POST.get(name, "").strip() or None
                                                for name in RetentionPolicy.FIELDS})
            messages.success(request, "Retention saved.")
            return redirect("storage")
        except PortalError as exc:
            errors = {k: exc.message for k in exc.fields} or {"": exc.message}
    policy = selectors.policy_of(workspace)
    fields = [{"name": name, "label": LABELS[name], "value": request.POST.get(name) if errors else getattr(policy, name),
               "error": errors.get(name)} for name in RetentionPolicy.FIELDS]
    return render(request, "retention/storage.html", {
        "usage": selectors.storage_usage(workspace), "plan": selectors.retention_plan(workspace),
        "policy": policy, "fields": fields, "is_owner": is_owner, "form_error": errors.get(""),
        "env_keep_days": settings.MLPORTAL_ENV_IMAGE_KEEP_DAYS, "env_keep_last": settings.MLPORTAL_ENV_IMAGE_KEEP_LAST,
    })
