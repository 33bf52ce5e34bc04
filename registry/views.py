"""Pages: Models (grouped by name), Register model, Manifests, Create manifest, Images (live build log)."""
from __future__ import annotations

import json
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_POST

from core.errors import PortalError
from core.views_base import (
    can, current_workspace, form_error, page_action, paginate, require_page_role, scoped, sorted_by,
)
from registry import aliases, model_scan, selectors, services
from registry.api import model_file_response
from registry.forms import ImageCreateForm, ManifestForm, ModelEditForm, ModelRegisterForm
from registry.models import Image, Manifest, Model
from workspaces.models import Role


def _find(request, qs, ref: str, *, tag: bool = False):
    """The object ``ref`` names among the user's workspaces (current one first), else 404."""
    qs = scoped(request, qs, current_only=False)
    obj = selectors.find_by_ref(qs, ref, current_workspace_id=getattr(request.workspace, "pk", None), tag=tag)
    if obj is None:
        raise Http404("No such resource in your workspaces.")
    return obj


# --- models ---------------------------------------------------------------------------------------

@login_required
def model_list(request):
    q = request.GET.get("q", "").strip()
    sort = request.GET.get("sort", "name")
    groups = selectors.model_groups(scoped(request, Model.objects.all()), q=q, ordering=sort)
    page = paginate(request, groups)
    latest = selectors.latest_versions(scoped(request, Model.objects.all()), [g["name"] for g in page])
    rows = [{**g, "model": latest.get(g["name"])} for g in page]
    return render(request, "registry/model_list.html", {"page": page, "rows": rows, "q": q, "sort": sort})


def _run_output(request, run_ref: str, path: str):
    """(run, output) for the Register model action on a run's output; 404 when not the user's."""
    from runs.models import Run

    try:
        run = scoped(request, Run.objects.select_related("project", "workspace"), current_only=False).filter(
            pk=uuid.UUID(run_ref)).first()
    except ValueError:
        run = None
    if run is None:
        raise Http404("No such run in your workspaces.")
    try:
        return run, services.run_output(run=run, path=path)
    except PortalError as exc:
        raise Http404(exc.message) from None


@login_required
def model_register(request):
    run_ref, path = request.GET.get("run", ""), request.GET.get("path", "")
    run = output = None
    if run_ref:
        run, output = _run_output(request, run_ref, path)
        workspace = run.workspace
        require_page_role(request, workspace, Role.CONTRIBUTOR)
    else:
        workspace = current_workspace(request)
    initial = {"name": path.rsplit("/", 1)[-1]} if run else {}
    form = ModelRegisterForm(request.POST or None, request.FILES or None, from_run=bool(run), initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        common = {"name": data["name"], "user": request.user, "description": data["description"],
                  "tags": data["tags"] or None, "framework": data["framework"]}
        try:
            if run is not None:
                model = services.model_register_from_run(run=run, path=path, **common)
            elif data.get("file") is None:
                raise PortalError("Choose the model file to upload.", fields={"file": "This field is required."})
            else:
                upload = data["file"]
                model = services.model_register_upload(workspace=workspace, fileobj=upload, filename=upload.name, **common)
        except PortalError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Registered {model.name} version {model.version}.")
            if model.scan_verdict in ("dangerous", "unknown") or model.scan_needs_confirmation:
                messages.warning(request, f"Scan: {model.get_scan_verdict_display().lower()}. {model.scan_reason}")
            return redirect("model-detail", ref=str(model.pk))
    return render(request, "registry/model_register.html", {
        "form": form, "run": run, "output": output, "path": path, "workspace": workspace,
        "run_url": _url("run-detail", getattr(run, "pk", None)),
    })


@login_required
def model_detail(request, ref: str):
    model = _find(request, Model.objects.select_related("workspace", "created_by", "run__project", "project", "accepted_by"), ref)
    edit_form = ModelEditForm(initial={"description": model.description, "tags": json.dumps(model.tags) if model.tags else ""})
    versions = list(selectors.versions_of(model).select_related("created_by"))
    for version in versions:
        version.run_url = _url("run-detail", getattr(version, "run_id", None))
    return render(request, "registry/model_detail.html", {
        "model": model, "versions": versions, "usage": selectors.model_usage(model),
        "edit_form": edit_form, "can_edit": can(request, model, Role.CONTRIBUTOR), "can_delete": can(request, model, Role.OWNER),
        "lineage": _lineage(model), "can_accept": can(request, model, Role.OWNER),
        "aliases": aliases.aliases_of(model.workspace_id, model.name),
        "alias_history": aliases.alias_history(model.workspace_id, model.name),
    })


@login_required
@require_POST
def model_alias_set(request, ref: str):
    """Points an alias (production, staging, any name) at the chosen version of this model."""
    model = _find(request, Model.objects.all(), ref)
    require_page_role(request, model.workspace, Role.CONTRIBUTOR)
    target = Model.objects.filter(workspace=model.workspace, name=model.name,
                                  version=request.POST.get("version") if str(request.POST.get("version", "")).isdigit() else -1).first()
    try:
        if target is None:
            raise PortalError("Choose one of the model's versions.")
        aliases.model_alias_set(model=target, alias=request.POST.get("alias"), user=request.user, reason="set by hand")
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{target.name}@{request.POST.get('alias')} is v{target.version} now.")
    return redirect(f"{reverse('model-detail', args=[model.pk])}#aliases")


@login_required
@require_POST
def model_accept(request, ref: str):
    """An owner accepts (or, with ``withdraw``, withdraws the acceptance of) a version that is not safe."""
    model = _find(request, Model.objects.all(), ref)
    require_page_role(request, model.workspace, Role.OWNER)
    try:
        if request.POST.get("withdraw"):
            model_scan.model_accept_withdraw(model=model, user=request.user)
            messages.success(request, f"Withdrew the acceptance of {model.ref}: new manifests refuse it again.")
        else:
            model_scan.model_accept(model=model, user=request.user)
            messages.success(request, f"Accepted {model.ref}: manifests may bundle it (recorded in the activity log).")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("model-detail", ref=str(model.pk))


def _url(name: str, pk) -> str | None:
    """The page of a resource another app owns; None while that app has no such page."""
    if pk is None:
        return None
    try:
        return reverse(name, args=[pk])
    except NoReverseMatch:
        return None


def _lineage(model: Model) -> dict:
    run, project = model.run, model.project
    return {"run": run, "project": project, "run_url": _url("run-detail", getattr(run, "pk", None)),
            "project_url": _url("project-detail", getattr(project, "pk", None))}


@login_required
def model_download(request, ref: str):
    return model_file_response(_find(request, Model.objects.all(), ref))


@login_required
@require_POST
def model_edit(request, ref: str):
    model = _find(request, Model.objects.all(), ref)
    require_page_role(request, model.workspace, Role.CONTRIBUTOR)
    form = ModelEditForm(request.POST)
    if form.is_valid():
        try:
            services.model_update(model=model, user=request.user, description=form.cleaned_data["description"],
                                  tags=form.cleaned_data["tags"] or {})
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Saved {model.ref}.")
    return redirect("model-detail", ref=str(model.pk))


@login_required
@require_POST
def model_delete(request, ref: str):
    model = _find(request, Model.objects.all(), ref)
    return page_action(request, model.workspace, role=Role.OWNER,
                       act=lambda: services.model_delete(model=model, user=request.user), done=f"Deleted {model.ref}.",
                       back=reverse("model-detail", kwargs={"ref": str(model.pk)}), then="model-list")


# --- manifests ------------------------------------------------------------------------------------

@login_required
def manifest_list(request):
    q = request.GET.get("q", "").strip()
    qs = scoped(request, Manifest.objects.select_related("created_by").prefetch_related("model_versions"))
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(content_hash__startswith=q.lower()))
    qs, sort = sorted_by(request, qs, {"name": "name", "-created": "-created_at", "created": "created_at"}, "-created")
    return render(request, "registry/manifest_list.html", {"page": paginate(request, qs), "q": q, "sort": sort})


def _project_choices(request, workspace) -> list[tuple[str, str]]:
    from runs.models import Project

    return [(str(p.pk), p.name) for p in Project.objects.filter(workspace=workspace).order_by("name")[:500]]


def _model_choice(model: Model) -> str:
    """The version as the manifest form lists it; a scan other than safe is said."""
    label = f"{model.name} v{model.version} ({model.file_name})"
    if model.scan_verdict == "safe":
        return label
    scan = model.get_scan_verdict_display() if model.scan_verdict else "not scanned yet"
    accepted = ", accepted by an owner" if model.is_accepted else ""
    return f"{label} · scan: {scan}{accepted}"


@login_required
def manifest_create(request):
    workspace = current_workspace(request)
    models = Model.objects.filter(workspace=workspace).order_by("name", "-version")[:500]
    form = ManifestForm(request.POST or None, request.FILES or None,
                        model_choices=[(str(m.pk), _model_choice(m)) for m in models],
                        project_choices=_project_choices(request, workspace),
                        initial={"models": request.GET.getlist("model")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        chosen = list(Model.objects.filter(workspace=workspace, pk__in=data["models"]))
        chosen.sort(key=lambda m: data["models"].index(str(m.pk)))
        try:
            if data.get("source") == "project":
                manifest = services.manifest_create_from_project(
                    workspace=workspace, name=data["name"], models=chosen, project_ref=data["project"],
                    score_path=data["score_path"], schema_path=data["schema_path"],
                    requirements_path=data["requirements_path"] or None, user=request.user,
                    confirm_unknown=data["confirm_unknown"],
                )
            else:
                missing = [f for f in ("score_file", "schema_file") if not data.get(f)]
                if missing:
                    raise PortalError("Upload score.py and service_schema.json.", fields={f: "This file is required." for f in missing})
                requirements = data.get("requirements_file")
                manifest = services.manifest_create(
                    workspace=workspace, name=data["name"], models=chosen, score=data["score_file"].read(),
                    schema=data["schema_file"].read(), requirements=requirements.read() if requirements else None,
                    user=request.user, confirm_unknown=data["confirm_unknown"],
                )
        except PortalError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Created manifest {manifest.name} version {manifest.version}.")
            return redirect("manifest-detail", ref=str(manifest.pk))
    return render(request, "registry/manifest_create.html", {"form": form, "has_models": bool(models)})


@login_required
def manifest_detail(request, ref: str):
    manifest = _find(request, Manifest.objects.select_related("workspace", "created_by", "project"), ref)
    files = []
    for path in sorted(manifest.files, key=lambda p: (p != Manifest.SCORE, p)):
        data = services.manifest_file(manifest, path)
        files.append({"path": path, "size": len(data), "sha256": manifest.files[path]["sha256"],
                      "text": data.decode("utf-8", "replace")})
    return render(request, "registry/manifest_detail.html", {
        "manifest": manifest, "files": files, "fields": selectors.schema_fields(manifest),
        "models": [mm.model for mm in manifest.manifest_models.select_related("model").order_by("position")],
        "images": manifest.images.order_by("-created_at")[:50], "image_form": ImageCreateForm(),
        "can_build": can(request, manifest, Role.CONTRIBUTOR), "can_delete": can(request, manifest, Role.OWNER),
        "project_url": _url("project-detail", manifest.project_id),
    })


@login_required
@require_POST
def manifest_build(request, ref: str):
    manifest = _find(request, Manifest.objects.all(), ref)
    require_page_role(request, manifest.workspace, Role.CONTRIBUTOR)
    form = ImageCreateForm(request.POST)
    try:
        if not form.is_valid():
            raise PortalError("The image name is not valid.")
        image = services.image_create(manifest=manifest, user=request.user, name=form.cleaned_data["name"] or None)
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("manifest-detail", ref=str(manifest.pk))
    messages.success(request, f"Image {image.tag} queued for building.")
    return redirect("image-detail", ref=str(image.pk))


@login_required
@require_POST
def manifest_delete(request, ref: str):
    manifest = _find(request, Manifest.objects.all(), ref)

    def done(images) -> str:
        gone = f" and its image{'s' if len(images) > 1 else ''} {', '.join(i.ref for i in images)}" if images else ""
        return f"Deleted manifest {manifest.ref}{gone}."

    return page_action(request, manifest.workspace, role=Role.OWNER,
                       act=lambda: services.manifest_delete(manifest=manifest, user=request.user), done=done,
                       back=reverse("manifest-detail", kwargs={"ref": str(manifest.pk)}), then="manifest-list")


# --- images ---------------------------------------------------------------------------------------

@login_required
def image_list(request):
    q = request.GET.get("q", "").strip()
    status = request.GET.get("status", "").strip()
    qs = scoped(request, Image.objects.select_related("manifest", "created_by"))
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(tag__icontains=q) | Q(manifest__name__icontains=q))
    if status:
        qs = qs.filter(status=status)
    qs, sort = sorted_by(request, qs, {"-created": "-created_at", "created": "created_at", "name": "name", "size": "size",
                                     "status": "status"}, "-created")
    return render(request, "registry/image_list.html", {"page": paginate(request, qs), "q": q, "sort": sort,
                                                        "status": status, "statuses": Image.Status.values})


@login_required
def image_detail(request, ref: str):
    image = _find(request, Image.objects.select_related("workspace", "manifest", "created_by"), ref, tag=True)
    usage = selectors.image_usage(image)
    return render(request, "registry/image_detail.html", {
        "image": image, "usage": usage, "sample_json": json.dumps(usage["sample_body"], indent=2),
        "models": [mm.model for mm in image.manifest.manifest_models.select_related("model").order_by("position")],
        "services": selectors.services_using_images([image.pk]),
        "can_delete": can(request, image, Role.OWNER), "can_build": can(request, image, Role.CONTRIBUTOR),
        "log_url": reverse("api-image-log", kwargs={"pk": image.pk}),
        "status_url": reverse("api-image-detail", kwargs={"pk": image.pk}),
    })


@login_required
@require_POST
def image_delete(request, ref: str):
    image = _find(request, Image.objects.all(), ref, tag=True)
    return page_action(request, image.workspace, role=Role.OWNER,
                       act=lambda: services.image_delete(image=image, user=request.user), done=f"Deleted image {image.tag}.",
                       back=reverse("image-detail", kwargs={"ref": str(image.pk)}), then="image-list")
