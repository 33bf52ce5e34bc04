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
from workspaces.views import _form_error
from core.views_base import get_scoped_or_404, paginate, require_page_role, scoped


def _can(request, obj, role: str = Role.CONTRIBUTOR) -> bool:
    return has_role(role_in(request.user, obj.workspace_id), role)


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
                _form_error(form, exc)
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
    pipeline = _pipeline(request, ref)
    runs = pipeline.runs.select_related("model", "image", "run", "triggered_by").order_by("-number")
    return render(request, "pipelines/pipeline_detail.html", {
        "pipeline": pipeline, "page": paginate(request, runs), "can_change": _can(request, pipeline),
        "can_delete": _can(request, pipeline, Role.OWNER),
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
    require_page_role(request, pipeline.workspace, Role.OWNER)
    try:
        services.pipeline_delete(pipeline=pipeline, user=request.user)
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("pipeline-detail", ref=str(pipeline.pk))
    messages.success(request, f"Pipeline '{pipeline.name}' deleted.")
    return redirect("pipeline-list")


@login_required
def pipeline_run_detail(request, ref: str):
    run = get_scoped_or_404(request, PipelineRun.objects.select_related(
        "pipeline__service", "pipeline__project", "run__project", "model", "served_model", "manifest", "image",
        "triggered_by"), ref, name_field=None)
    return render(request, "pipelines/pipeline_run_detail.html", {
        "prun": run, "steps": run.steps.order_by("position"),
        "status_url": reverse("api-pipeline-run-detail", kwargs={"pk": run.pk}),
        "can_change": _can(request, run),
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
