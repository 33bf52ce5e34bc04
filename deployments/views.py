"""Pages: Services (list, create, the service page with Usage / Test / Logs / Metrics), Environments."""
from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import PortalError
from core.views_base import (
    can, current_workspace, form_error, get_scoped_or_404, page_action, paginate, require_page_role, scoped,
    sorted_by,
)
from deployments import autoscaling, selectors, services
from deployments.checks import effective_request_timeout
from deployments.forms import EnvironmentEditForm, EnvironmentForm, FromImageForm, RealtimeForm
from deployments.models import Environment, Service
from workspaces.models import Role
from workspaces.selectors import has_role


def _service(request, ref: str) -> Service:
    return get_scoped_or_404(request, Service.objects.select_related("workspace", "environment", "image__manifest",
                                                                     "created_by"), ref)


def _environment(request, ref: str) -> Environment:
    return get_scoped_or_404(request, Environment.objects.select_related("workspace", "created_by"), ref)


def _environment_choices(workspace) -> list[tuple[str, str]]:
    return [(e.name, e.name) for e in Environment.objects.filter(workspace=workspace).order_by("name")[:200]]


# --- services -------------------------------------------------------------------------------------

@login_required
def service_list(request):
    filters = {k: request.GET.get(k, "").strip() for k in ("q", "status", "environment")}
    qs = selectors.filter_services(scoped(request, Service.objects.select_related("environment", "image", "created_by")),
                                   **filters)
    qs, sort = sorted_by(request, qs, {"name": "name", "-name": "-name", "status": "status", "-created": "-created_at",
                                     "created": "created_at"}, "name")
    environments = scoped(request, Environment.objects.all()).order_by("name")
    return render(request, "deployments/service_list.html", {
        "page": paginate(request, qs), "sort": sort, "statuses": Service.Status.values, "environments": environments,
        "active": selectors.active_environment(request.user, request.workspace), **filters,
    })


@login_required
def service_create(request):
    from registry.models import Image

    workspace = current_workspace(request)
    environments = _environment_choices(workspace)
    images = Image.objects.filter(workspace=workspace, status=Image.Status.SUCCEEDED).order_by("-created_at")[:200]
    image_choices = [(str(i.pk), f"{i.name} v{i.version} ({i.tag})") for i in images]
    mode = request.POST.get("mode", "realtime")
    realtime = RealtimeForm(request.POST if mode == "realtime" else None, request.FILES if mode == "realtime" else None,
                            environment_choices=environments)
    from_image = FromImageForm(request.POST if mode == "image" else None, image_choices=image_choices,
                               environment_choices=environments, initial={"image": request.GET.get("image", "")})
    form = realtime if mode == "realtime" else from_image
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            if mode == "realtime":
                model = data["model_file"]
                requirements = data.get("requirements_file")

                def create(replicas):
                    return services.service_create_realtime(
                        workspace=workspace, name=data["name"], model_file=model, model_filename=model.name,
                        score=data["score_file"].read(), schema=data["schema_file"].read(),
                        requirements=requirements.read() if requirements else None, user=request.user,
                        model_name=data["model_name"] or None, environment=data["environment"] or None,
                        replicas=replicas, confirm_unknown=data["confirm_unknown"],
                        request_timeout_s=data["request_timeout_s"],
                    )
            else:
                image = Image.objects.filter(workspace=workspace, pk=data["image"]).first()
                if image is None:
                    raise PortalError("Choose a built image.", fields={"image": "Unknown image."})

                def create(replicas):
                    return services.service_create(
                        workspace=workspace, name=data["name"], image=image, user=request.user,
                        environment=data["environment"] or None, replicas=replicas, cpus=data["cpus"],
                        memory_mb=data["memory_mb"], request_timeout_s=data["request_timeout_s"],
                    )
            service, notice = autoscaling.create_autoscaled(create, given=form.autoscale_given(), replicas=data["replicas"],
                                                            user=request.user)
        except PortalError as exc:
            form_error(form, exc)
        else:
            if notice:
                messages.info(request, notice)
            messages.success(request, f"Service '{service.name}' is being created.")
            return redirect("service-detail", ref=str(service.pk))
    return render(request, "deployments/service_create.html", {
        "realtime": realtime, "from_image": from_image, "mode": mode, "has_images": bool(image_choices),
    })


@login_required
def service_detail(request, ref: str):
    from registry.models import Image

    service = _service(request, ref)
    try:
        usage = selectors.service_usage(service, portal_url=request.build_absolute_uri("/"))
    except (ValueError, PortalError) as exc:  # SchemaError is a ValueError: the page still shows the rest
        usage, usage_error = None, str(exc)
    else:
        usage_error = ""
    images = Image.objects.filter(workspace=service.workspace_id, status=Image.Status.SUCCEEDED).exclude(
        pk=service.image_id).order_by("-created_at")[:100]
    return render(request, "deployments/service_detail.html", {
        "service": service, "usage": usage, "usage_error": usage_error, "images": images,
        "engine": selectors.engine_status(service.environment),
        "metrics": selectors.service_metrics(service),  # the worker side's snapshot, never asked now
        "sample_json": json.dumps(usage["sample_body"], indent=2) if usage else "{}",
        "revisions": service.revisions.select_related("image", "created_by")[:50],
        "events": service.events.all()[:50], "steps": selectors.service_steps(service),
        "can_change": can(request, service, Role.CONTRIBUTOR), "can_delete": can(request, service, Role.OWNER),
        "max_replicas": settings.MLPORTAL_MAX_REPLICAS,
        "request_timeout": effective_request_timeout(service),
        "max_request_timeout": settings.MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS,
        "status_url": reverse("api-service-detail", kwargs={"pk": service.pk}),
        "logs_url": reverse("api-service-logs", kwargs={"pk": service.pk}),
        "metrics_url": reverse("api-service-metrics", kwargs={"pk": service.pk}),
        "keys_url": reverse("api-service-keys", kwargs={"pk": service.pk}),
        "export_url": reverse("api-service-export", kwargs={"pk": service.pk}) + "?format=kubernetes",
        "score_url": reverse("api-service-score", kwargs={"ref": service.pk}),
        "traffic_url": reverse("api-service-traffic", kwargs={"pk": service.pk}),
        "autoscale_url": reverse("api-service-autoscale", kwargs={"pk": service.pk}),
        "autoscale_max_shown": min(service.autoscale_max_replicas, settings.MLPORTAL_MAX_REPLICAS),
        "rollout": service.rollout or {},
    })


def _service_action(request, ref: str, role: str, act, done: str):
    service = _service(request, ref)
    return page_action(request, service.workspace, role=role, act=lambda: act(service), done=done.format(service=service),
                       back=reverse("service-detail", kwargs={"ref": str(service.pk)}))


@login_required
@require_POST
def service_update(request, ref: str):
    from gateway import services as gateway_services

    how = request.POST.get("how", "all")
    if how in ("canary", "shadow"):
        return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: gateway_services.service_rollout_start(
            service=s, image=request.POST.get("image", ""), user=request.user,
            canary=request.POST.get("percent") if how == "canary" else None,
            shadow=request.POST.get("percent") if how == "shadow" else None,
            bake_seconds=request.POST.get("bake_seconds") or None),
            f"Starting a {how} of the new image on '{{service.name}}': see the Traffic tab.")
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: services.service_update(
        service=s, image=request.POST.get("image", ""), user=request.user), "Updating '{service.name}': the new replicas start before the old ones stop.")


@login_required
@require_POST
def service_traffic(request, ref: str):
    """The Traffic tab's forms: a new canary weight, promote, abort."""
    from gateway import services as gateway_services

    action = request.POST.get("action", "weight")
    if action in ("promote", "abort"):
        return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: gateway_services.service_rollout_finish(
            service=s, user=request.user, action=action), f"{'Promoting' if action == 'promote' else 'Aborting'} the new revision of '{{service.name}}'.")
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: gateway_services.service_rollout_weight(
        service=s, weight=request.POST.get("weight", ""), user=request.user), "Changed the canary's weight on '{service.name}'.")


@login_required
@require_POST
def service_rollback(request, ref: str):
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: services.service_rollback(
        service=s, revision=request.POST.get("revision"), user=request.user), "Rolling '{service.name}' back.")


@login_required
@require_POST
def service_scale(request, ref: str):
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: services.service_scale(
        service=s, replicas=request.POST.get("replicas", ""), user=request.user), "Scaling '{service.name}'.")


@login_required
@require_POST
def service_autoscale(request, ref: str):
    """The Autoscale tab's form: an unticked box turns autoscaling off."""
    given = autoscaling.given_in(request.POST)
    given["enabled"] = request.POST.get("autoscale_enabled") == "true"
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: autoscaling.service_set_autoscale(
        service=s, user=request.user, given=given), "Saved the autoscaling of '{service.name}'.")


@login_required
@require_POST
def service_request_timeout(request, ref: str):
    value = request.POST.get("request_timeout_s", "").strip() or None  # empty: back to the portal's default
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: services.service_set_request_timeout(
        service=s, value=value, user=request.user),
        "New request time limit for '{service.name}': the replicas restart with it.")


@login_required
@require_POST
def service_regenerate_key(request, ref: str):
    which = request.POST.get("key", "")
    return _service_action(request, ref, Role.CONTRIBUTOR, lambda s: services.service_regenerate_key(
        service=s, which=which, user=request.user),
        f"New {which} key for '{{service.name}}': the portal takes it now; the replicas restart with it.")


@login_required
@require_POST
def service_delete(request, ref: str):
    service = _service(request, ref)
    return page_action(request, service.workspace, role=Role.OWNER,
                       act=lambda: services.service_delete(service=service, user=request.user),
                       done=f"Deleting service '{service.name}': its containers are being removed.",
                       back=reverse("service-detail", kwargs={"ref": str(service.pk)}), then="service-list")


# --- environments ---------------------------------------------------------------------------------

@login_required
def environment_list(request):
    form = EnvironmentForm(request.POST or None)
    if request.method == "POST":
        workspace = current_workspace(request)
        if form.is_valid():
            try:
                environment = services.environment_create(workspace=workspace, user=request.user, **form.cleaned_data)
            except PortalError as exc:
                form_error(form, exc)
            else:
                if getattr(environment, "notice", None):
                    messages.info(request, environment.notice)
                messages.success(request, f"Environment '{environment.name}' created.")
                return redirect("environment-detail", ref=str(environment.pk))
    q = request.GET.get("q", "").strip()
    qs = scoped(request, Environment.objects.select_related("created_by"))
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q) | Q(engine_url__icontains=q))
    qs, sort = sorted_by(request, qs, {"name": "name", "-name": "-name", "-created": "-created_at", "created": "created_at"}, "name")
    page = paginate(request, qs)
    rows = [{"env": e, "engine": selectors.engine_status(e), "services": selectors.services_in(e).count()} for e in page]
    return render(request, "deployments/environment_list.html", {
        "page": page, "rows": rows, "form": form, "q": q, "sort": sort,
        "active": selectors.active_environment(request.user, request.workspace),
        "can_create": request.workspace is not None and has_role(request.role, Role.CONTRIBUTOR),
    })


@login_required
def environment_detail(request, ref: str):
    environment = _environment(request, ref)
    can_edit = can(request, environment, Role.CONTRIBUTOR)
    current = {"description": environment.description, "labels": environment.labels,
               "engine_url": environment.engine_url, "publish_address": environment.publish_address}
    form = EnvironmentEditForm(request.POST or None,
                               initial={**current, "labels": json.dumps(environment.labels) if environment.labels else ""})
    if request.method == "POST":
        require_page_role(request, environment.workspace, Role.CONTRIBUTOR)
        if form.is_valid():
            changes = {k: v for k, v in form.cleaned_data.items() if v != current[k]}
            try:
                services.environment_update(environment=environment, user=request.user, changes=changes)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Environment '{environment.name}' saved." if changes else "Nothing changed.")
                return redirect("environment-detail", ref=str(environment.pk))
    active = selectors.active_environment(request.user, environment.workspace)
    return render(request, "deployments/environment_detail.html", {
        "environment": environment, "engine": selectors.engine_status(environment),
        "swarm": selectors.swarm_of(environment),  # what the worker side saw, never asked for this page
        "services": selectors.services_in(environment).select_related("image"),
        "is_active": active is not None and active.pk == environment.pk,
        "can_delete": can(request, environment, Role.OWNER), "can_edit": can_edit, "form": form,
    })


@login_required
@require_POST
def environment_activate(request, ref: str):
    environment = _environment(request, ref)
    services.environment_activate(environment=environment, user=request.user)
    messages.success(request, f"'{environment.name}' is now your active environment in {environment.workspace.name}.")
    return redirect("environment-detail", ref=str(environment.pk))


@login_required
@require_POST
def environment_delete(request, ref: str):
    environment = _environment(request, ref)
    return page_action(request, environment.workspace, role=Role.OWNER,
                       act=lambda: services.environment_delete(environment=environment, user=request.user),
                       done=f"Deleted environment '{environment.name}'.",
                       back=reverse("environment-detail", kwargs={"ref": str(environment.pk)}), then="environment-list")
