"""Pages: Pipelines (list + create), a pipeline (settings, "Retrain now", its runs) and a
pipeline run (its steps with status, duration, log and links, live)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from deployments.models import Service
from pipelines import services
from pipelines.forms import PipelineForm
from pipelines.models import Pipeline, PipelineRun
from runs.models import Project
from core.errors import PortalError
from workspaces.models import Role
from workspaces.selectors import has_role, role_in
from core.views_base import (
    can, form_error, get_scoped_or_404, page_action, paginate, require_page_role, scoped,
)


@login_required
def pipeline_list(request):
    q = request.GET.get("q", "").strip()
    qs = scoped(request, Pipeline.objects.select_related("project", "service")).order_by("name")
    if q:
        qs = qs.filter(name__icontains=q) | qs.filter(service__name__icontains=q)
    form, can_create = None, False
    workspace = request.workspace
    if workspace is not None and has_role(role_in(request.user, workspace.pk), Role.CONTRIBUTOR):
        can_create = True
        projects = [(p.name, p.name) for p in Project.objects.filter(workspace=workspace).order_by("name")[:200]]
        service_choices = [(s.name, s.name) for s in Service.objects.filter(workspace=workspace).order_by("name")[:200]]
        form = PipelineForm(request.POST if request.method == "POST" else None, projects=projects, services=service_choices)
        if request.method == "POST" and form.is_valid():
            try:
                pipeline = services.pipeline_create(workspace=workspace, user=request.user, **form.cleaned_data)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Pipeline '{pipeline.name}' created.")
                return redirect("pipeline-detail", ref=str(pipeline.pk))
    elif request.method == "POST":
        raise Http404("You cannot create pipelines here.")
    return render(request, "pipelines/pipeline_list.html", {"page": paginate(request, qs), "q": q, "form": form,
                                                            "can_create": can_create})


def _pipeline(request, ref: str) -> Pipeline:
    return get_scoped_or_404(request, Pipeline.objects.select_related("workspace", "project", "service", "created_by"), ref)


@login_required
def pipeline_detail(request, ref: str):
    from pipelines.forms import PipelineEditForm

    pipeline = _pipeline(request, ref)
    can_change = can(request, pipeline)
    initial = {f: getattr(pipeline, f) for f in ("gate", "schedule", "trigger_on_data", "trigger_on_drift", "mode",
                                                  "rollout", "when_busy", "enabled")}
    form = PipelineEditForm(request.POST if request.method == "POST" and can_change else None, initial=initial)
    new_secret = ""
    if request.method == "POST":
        require_page_role(request, pipeline.workspace, Role.CONTRIBUTOR)
        if request.POST.get("webhook") in ("new", "off"):
            new_secret = services.pipeline_webhook_secret(pipeline=pipeline, user=request.user,
                                                          enable=request.POST["webhook"] == "new")
            if not new_secret:
                messages.success(request, "The incoming webhook is off.")
                return redirect("pipeline-detail", ref=str(pipeline.pk))
        elif form.is_valid():
            try:
                services.pipeline_update(pipeline=pipeline, user=request.user, changes=form.cleaned_data)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Pipeline '{pipeline.name}' saved.")
                return redirect("pipeline-detail", ref=str(pipeline.pk))
    runs = pipeline.runs.select_related("model", "image", "run", "triggered_by").order_by("-number")
    hook_url = request.build_absolute_uri(reverse("api-pipeline-hook", kwargs={"pk": pipeline.pk}))
    return render(request, "pipelines/pipeline_detail.html", {
        "pipeline": pipeline, "page": paginate(request, runs), "can_change": can_change, "form": form,
        "can_delete": can(request, pipeline, Role.OWNER), "new_secret": new_secret, "hook_url": hook_url,
    })


@login_required
@require_POST
def pipeline_run_now(request, ref: str):
    pipeline = _pipeline(request, ref)
    require_page_role(request, pipeline.workspace, Role.CONTRIBUTOR)
    try:
        run = services.pipeline_trigger(pipeline=pipeline, user=request.user, detail="Retrain now (page)")
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("pipeline-detail", ref=str(pipeline.pk))
    if run.status == PipelineRun.Status.SKIPPED:
        messages.info(request, f"Skipped: {run.reason}")
        return redirect("pipeline-detail", ref=str(pipeline.pk))
    messages.success(request, f"Pipeline run #{run.number} is queued.")
    return redirect("pipeline-run-detail", ref=str(run.pk))


@login_required
@require_POST
def pipeline_delete(request, ref: str):
    pipeline = _pipeline(request, ref)
    return page_action(request, pipeline.workspace, role=Role.OWNER,
                       act=lambda: services.pipeline_delete(pipeline=pipeline, user=request.user),
                       done=f"Pipeline '{pipeline.name}' deleted.",
                       back=reverse("pipeline-detail", kwargs={"ref": str(pipeline.pk)}), then="pipeline-list")


@login_required
def pipeline_run_detail(request, ref: str):
    run = get_scoped_or_404(request, PipelineRun.objects.select_related(
        "pipeline__service", "pipeline__project", "run__project", "model", "served_model", "manifest", "image",
        "triggered_by"), ref, name_field=None)
    return render(request, "pipelines/pipeline_run_detail.html", {
        "prun": run, "steps": run.steps.order_by("position"),
        "status_url": reverse("api-pipeline-run-detail", kwargs={"pk": run.pk}),
        "can_change": can(request, run),
    })


@login_required
@require_POST
def pipeline_run_cancel(request, ref: str):
    run = get_scoped_or_404(request, PipelineRun.objects.select_related("pipeline"), ref, name_field=None)
    require_page_role(request, run.workspace, Role.CONTRIBUTOR)
    try:
        services.pipeline_run_cancel(pipeline_run=run, user=request.user)
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("pipeline-run-detail", ref=str(run.pk))


# --- outgoing webhooks ----------------------------------------------------------------------------

def _webhook(request, ref: str):
    from pipelines.models import Webhook

    return get_scoped_or_404(request, Webhook.objects.select_related("workspace", "created_by"), ref)


def _webhook_page(request, webhook, *, new_secret: str = ""):
    return render(request, "pipelines/webhook_detail.html", {
        "webhook": webhook, "page": paginate(request, webhook.deliveries.order_by("-created_at")),
        "new_secret": new_secret, "can_test": can(request, webhook), "can_delete": can(request, webhook, Role.OWNER),
    })


@login_required
def webhook_list(request):
    from pipelines import webhooks
    from pipelines.forms import WebhookForm
    from pipelines.models import Webhook

    qs = scoped(request, Webhook.objects.all()).order_by("name")
    workspace = request.workspace
    can_create = workspace is not None and has_role(role_in(request.user, workspace.pk), Role.OWNER)
    form = WebhookForm(request.POST if request.method == "POST" and can_create else None)
    if request.method == "POST":
        if not can_create:
            raise Http404("Only the workspace's owners create webhooks.")
        if form.is_valid():
            try:
                webhook = webhooks.webhook_create(workspace=workspace, user=request.user, **form.cleaned_data)
            except PortalError as exc:
                form_error(form, exc)
            else:
                # The secret is shown on this answer only (never stored in a message or a cookie).
                return _webhook_page(request, webhook, new_secret=webhook.secret)
    return render(request, "pipelines/webhook_list.html", {"page": paginate(request, qs), "form": form,
                                                           "can_create": can_create})


@login_required
def webhook_detail(request, ref: str):
    return _webhook_page(request, _webhook(request, ref))


@login_required
@require_POST
def webhook_test(request, ref: str):
    from pipelines import webhooks

    webhook = _webhook(request, ref)
    require_page_role(request, webhook.workspace, Role.CONTRIBUTOR)
    webhooks.webhook_send_test(webhook=webhook, user=request.user)
    messages.success(request, "A test delivery is on its way: it appears below with the receiver's answer.")
    return redirect("webhook-detail", ref=str(webhook.pk))


@login_required
@require_POST
def webhook_delete(request, ref: str):
    from pipelines import webhooks

    webhook = _webhook(request, ref)
    require_page_role(request, webhook.workspace, Role.OWNER)
    webhooks.webhook_delete(webhook=webhook, user=request.user)
    messages.success(request, f"Webhook '{webhook.name}' deleted.")
    return redirect("webhook-list")
