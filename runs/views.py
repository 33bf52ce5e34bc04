"""Pages: projects (files, settings, run form, prepare), all runs, run details, compare."""
from __future__ import annotations

import gzip
import mimetypes
import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from core.errors import PortalError
from core.paths import clean_path
from core.storage import open_file
from core.views_base import form_error, get_scoped_or_404, page_action, paginate, require_page_role, scoped
from runs import catalog, chart_cache, selectors, services
from runs.api import attachment, runs_to_compare
from runs.forms import EditFileForm, NewFileForm, ProjectForm, RunForm, SettingsForm, UploadForm
from runs.models import Project, Run
from workspaces.models import Role
from workspaces.selectors import has_role, role_in

PREVIEW_TEXT_BYTES = 256 * 1024
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def _is_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data[:8192].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > 8180  # a multi-byte character cut at the sample's end
    return True


# --- projects -------------------------------------------------------------------------------------

@login_required
def project_list(request):
    templates = catalog.all_templates()
    tq = request.GET.get("tq", "").strip()
    shown_templates = [t for t in templates if t.matches(tq)]
    form = ProjectForm(request.POST or None, templates=templates, initial={"template": request.GET.get("template", "")})
    if request.method == "POST":
        if request.workspace is None:
            raise Http404("Create or pick a workspace first.")
        require_page_role(request, request.workspace, Role.CONTRIBUTOR)
        if form.is_valid():
            try:
                project = services.project_create(workspace=request.workspace, user=request.user, **form.cleaned_data)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Project '{project.name}' created" + (f" from template '{project.template}'." if project.template else "."))
                return redirect(project.get_absolute_url())
    qs = scoped(request, Project.objects.select_related("created_by").annotate(file_count=Count("files"), run_count=Count("runs", distinct=True)))
    q = request.GET.get("q", "").strip()
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    ordering = request.GET.get("ordering", "name")
    if ordering.lstrip("-") not in ("name", "created_at", "template"):
        ordering = "name"
    return render(request, "runs/project_list.html", {
        "page": paginate(request, qs.order_by(ordering)), "q": q, "form": form, "templates": shown_templates, "tq": tq,
        "ordering": ordering, "can_write": has_role(request.role, Role.CONTRIBUTOR),
    })


def _project(request, ref) -> Project:
    return get_scoped_or_404(request, Project.objects.select_related("workspace", "created_by"), ref)


@login_required
def project_detail(request, ref):
    project = _project(request, ref)
    role = role_in(request.user, project.workspace_id)
    scripts = selectors.project_scripts(project)
    template = catalog.get_template(project.template) if project.template else None
    default_script = template.default_script if template and template.default_script in scripts else (scripts[0] if scripts else None)
    run_form = RunForm(scripts=scripts, initial={"script": default_script, "target": project.default_target})
    settings_form = SettingsForm(initial={
        "requirements": project.requirements, "default_target": project.default_target, "time_limit_s": project.time_limit_s,
        "memory_mb": project.memory_mb, "cpus": project.cpus, "allow_network": project.allow_network,
        "outputs_max_mb": project.outputs_max_mb,
    })
    return _render_project(request, project, role, run_form=run_form, settings_form=settings_form)


def _render_project(request, project, role, *, run_form=None, settings_form=None, upload_form=None, new_file_form=None, status=200):
    files = project.files.order_by("path")
    fq = request.GET.get("fq", "").strip()
    if fq:
        files = files.filter(path__icontains=fq)
    if run_form is None:
        run_form = RunForm(scripts=selectors.project_scripts(project), initial={"target": project.default_target})
    if settings_form is None:
        settings_form = SettingsForm(initial={
            "requirements": project.requirements, "default_target": project.default_target,
            "time_limit_s": project.time_limit_s, "memory_mb": project.memory_mb, "cpus": project.cpus,
            "allow_network": project.allow_network, "outputs_max_mb": project.outputs_max_mb,
        })
    runs = list(project.runs.select_related("created_by", "project").order_by("-created_at")[:10])
    selectors.attach_metric_summaries(runs)
    last_prepare = project.runs.filter(kind=Run.Kind.PREPARE).order_by("-created_at").first()
    return render(request, "runs/project_detail.html", {
        "project": project, "role": role, "can_write": has_role(role, Role.CONTRIBUTOR), "files_page": paginate(request, files, 50),
        "fq": fq, "run_form": run_form, "settings_form": settings_form, "upload_form": upload_form or UploadForm(),
        "new_file_form": new_file_form or NewFileForm(), "runs": runs, "last_prepare": last_prepare,
        "metric_names": sorted({n for r in runs for n in r.metric_values}),
    }, status=status)


@login_required
@require_POST
def project_run(request, ref):
    project = _project(request, ref)
    role = require_page_role(request, project.workspace, Role.CONTRIBUTOR)
    form = RunForm(request.POST, scripts=selectors.project_scripts(project))
    if form.is_valid():
        try:
            args = shlex.split(form.cleaned_data["args"] or "")
        except ValueError as exc:
            form.add_error("args", f"Cannot read the arguments ({exc}): close every quote.")
        else:
            try:
                run = services.run_submit(project=project, script=form.cleaned_data["script"], args=args,
                                          target=form.cleaned_data["target"], user=request.user)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Run {run} submitted.")
                return redirect(run.get_absolute_url())
    return _render_project(request, project, role, run_form=form, status=400)


@login_required
@require_POST
def project_prepare(request, ref):
    project = _project(request, ref)
    return page_action(request, project.workspace, role=Role.CONTRIBUTOR,
                       act=lambda: services.run_prepare(project=project, target="docker", user=request.user),
                       done=lambda run: f"Preparing the Docker environment of '{project.name}' ({run}).",
                       back=project.get_absolute_url(), then=lambda run: run.get_absolute_url())


@login_required
@require_POST
def project_settings(request, ref):
    project = _project(request, ref)
    role = require_page_role(request, project.workspace, Role.CONTRIBUTOR)
    form = SettingsForm(request.POST)
    if form.is_valid():
        data = dict(form.cleaned_data)
        if data["requirements"] == project.requirements:
            data["requirements"] = None  # unchanged: don't rewrite requirements.txt
        try:
            services.project_update_settings(project=project, user=request.user, **data)
        except PortalError as exc:
            form_error(form, exc)
        else:
            messages.success(request, "Settings saved.")
            return redirect(project.get_absolute_url() + "#settings")
    return _render_project(request, project, role, settings_form=form, status=400)


@login_required
@require_POST
def project_upload(request, ref):
    project = _project(request, ref)
    role = require_page_role(request, project.workspace, Role.CONTRIBUTOR)
    form = UploadForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            rows = services.project_files_upload(
                project=project, fileobj=upload, filename=upload.name or "", user=request.user,
                path=form.cleaned_data["path"] or None, extract=form.cleaned_data["extract"], replace=form.cleaned_data["replace"],
            )
        except PortalError as exc:
            form_error(form, exc)
            return _render_project(request, project, role, upload_form=form, status=exc.status_code)
        messages.success(request, f"{len(rows)} file{'s' if len(rows) != 1 else ''} uploaded.")
        return redirect(project.get_absolute_url() + "#files")
    return _render_project(request, project, role, upload_form=form, status=400)


@login_required
@require_POST
def project_file_new(request, ref):
    project = _project(request, ref)
    role = require_page_role(request, project.workspace, Role.CONTRIBUTOR)
    form = NewFileForm(request.POST)
    if form.is_valid():
        try:
            path = clean_path(form.cleaned_data["path"])
            if project.files.filter(path=path).exists():
                raise PortalError(f"'{path}' exists already: open it to edit it.", fields={"path": "Exists already."})
            services.project_file_put(project=project, path=path, content=b"", user=request.user)
        except PortalError as exc:
            form_error(form, exc)
        else:
            return redirect(reverse("project-file", args=[project.pk, path]) + "?edit=1")
    return _render_project(request, project, role, new_file_form=form, status=400)


@login_required
def project_file(request, ref, path):
    """Views a file (text shown escaped; others offered for download), downloads it, or edits it."""
    project = _project(request, ref)
    role = role_in(request.user, project.workspace_id)
    row = project.files.filter(path=path).first()
    if row is None:
        raise Http404("No such file in this project.")
    if request.GET.get("download"):
        return attachment(open_file(row.storage_name), row.path.rsplit("/", 1)[-1])
    with open_file(row.storage_name) as handle:
        head = handle.read(PREVIEW_TEXT_BYTES + 1)
    is_text = _is_text(head)
    editable = is_text and row.size <= services.EDITABLE_MAX_BYTES
    form = None
    if request.method == "POST":
        if not has_role(role, Role.CONTRIBUTOR):
            raise PermissionDenied(f"Editing files needs the contributor role in workspace '{project.workspace.name}'; you are a {role}.")
        if request.POST.get("action") == "delete":
            services.project_file_delete(project=project, path=row.path, user=request.user)
            messages.success(request, f"'{row.path}' deleted.")
            return redirect(project.get_absolute_url() + "#files")
        if not editable:
            raise PermissionDenied("Only text files up to 512 KiB can be edited in the browser: upload a new version instead.")
        form = EditFileForm(request.POST)
        if form.is_valid():
            try:
                services.project_file_put(project=project, path=row.path, content=form.cleaned_data["content"].replace("\r\n", "\n").encode(), user=request.user)
            except PortalError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"'{row.path}' saved.")
                return redirect(reverse("project-file", args=[project.pk, row.path]))
    text = services.decode_text(head[:PREVIEW_TEXT_BYTES]) if is_text else None
    if form is None and request.GET.get("edit") and editable and has_role(role, Role.CONTRIBUTOR):
        form = EditFileForm(initial={"content": text})
    return render(request, "runs/project_file.html", {
        "project": project, "file": row, "text": text, "truncated": len(head) > PREVIEW_TEXT_BYTES, "editable": editable,
        "can_write": has_role(role, Role.CONTRIBUTOR), "form": form,
    }, status=400 if form is not None and form.errors else 200)


# --- runs -----------------------------------------------------------------------------------------

@login_required
def run_list(request):
    """All runs of the current workspace with a column per metric and per chosen param (`?params=a,b`),
    the filter language (`?filter=`), the classic filters, sorting by any column and pagination."""
    base = scoped(request, selectors.runs_base())
    ordering = request.GET.get("ordering", "-created_at")
    workspace_ids = [request.workspace.pk] if request.workspace else []
    error = None
    try:
        qs = selectors.order_runs(selectors.filter_runs(base, request.GET, workspace_ids), ordering)
    except PortalError as exc:
        error, qs = exc.message, base.order_by("-created_at")
    page = paginate(request, qs.values_list("pk", flat=True))
    page.object_list = selectors.runs_in_order(page.object_list)
    runs = selectors.attach_metric_summaries(list(page.object_list))
    selectors.attach_params_and_tags(runs)
    names = selectors.metric_names(workspace_ids)
    all_params = selectors.param_names(workspace_ids)
    if "params" in request.GET:
        chosen = [p for p in (n.strip() for n in request.GET.get("params", "").split(",")) if p][:20]
    else:
        chosen = all_params[:5]  # until someone chooses, the first few
    for run in runs:
        run.param_cells = [run.param_values.get(n, "") for n in chosen]
        run.metric_cells = [run.metric_values.get(n) for n in names]
    projects = list(scoped(request, Project.objects.all()).order_by("name").values_list("name", flat=True)[:200])
    filters = {k: request.GET.get(k, "") for k in ("project", "script", "status", "user", "target", "q", "metric",
                                                    "metric_gt", "metric_lt", "filter")}
    columns = [("number", "Run"), ("script", "Script"), ("status", "Status"), ("duration", "Duration"),
               ("started_at", "Started"), ("user", "User"), ("target", "Target")]
    columns += [(f"param:{n}", n) for n in chosen]
    columns += [(f"metric:{n}", n) for n in names]
    headers = []
    for key, label in columns:
        active = ordering.lstrip("-") == key
        desc = active and ordering.startswith("-")
        # First click sorts descending (newest, biggest first); a second click flips it.
        headers.append({"label": label, "ordering": key if desc else f"-{key}", "arrow": ("▼" if desc else "▲") if active else "",
                        "metric": key.startswith("metric:"), "param": key.startswith("param:")})
    return render(request, "runs/run_list.html", {
        "page": page, "runs": runs, "metric_names": names, "filters": filters, "ordering": ordering, "error": error,
        "headers": headers, "statuses": Run.Status.choices, "projects": projects, "param_names": all_params,
        "chosen_params": ",".join(chosen),
    }, status=400 if error else 200)


def _run(request, run_id) -> Run:
    return get_scoped_or_404(request, Run.objects.select_related("project", "workspace", "created_by"), run_id, name_field=None)


@login_required
def run_detail(request, run_id):
    run = _run(request, run_id)
    role = role_in(request.user, run.workspace_id)
    summaries = list(selectors.summaries_of(run))
    selectors.attach_params_and_tags([run])
    outputs = list(run.outputs.order_by("path"))
    for output in outputs:
        ext = "." + output.path.rsplit(".", 1)[-1].lower() if "." in output.path else ""
        output.is_image = ext in IMAGE_TYPES
        output.is_text = (mimetypes.guess_type(output.path)[0] or "").startswith("text/") or ext in (".json", ".log", ".txt", ".csv", ".md", ".yaml", ".yml", ".py")
    has_series = any(m.step is not None for m in summaries)
    # A finished run's chart answer is kept (runs/chart_cache.py): the page carries it, so the
    # metrics tab draws without a second request queueing behind the page's scripts.
    series_data = chart_cache.whole_series_data_block(run) if has_series and not run.is_active else ""
    response = render(request, "runs/run_detail.html", {
        "run": run, "can_write": has_role(role, Role.CONTRIBUTOR), "summaries": summaries, "outputs": outputs,
        "has_series": has_series, "series_data": series_data,
    })
    return gzipped_page(request, response) if series_data else response


def gzipped_page(request, response):
    """``response`` gzipped at level 1 for a client that takes it: a page carrying a chart's
    numbers (about a third of the bytes once compressed; level 1 is a fifth of level 6's time).
    Its CSRF tokens are masked afresh in every response, so compression leaks no secret (BREACH)."""
    response["Vary"] = "Accept-Encoding" if not response.has_header("Vary") else response["Vary"] + ", Accept-Encoding"
    if "gzip" in request.META.get("HTTP_ACCEPT_ENCODING", "") and not response.has_header("Content-Encoding"):
        response.content = gzip.compress(response.content, compresslevel=1, mtime=0)
        response["Content-Encoding"] = "gzip"
    return response


@login_required
@require_POST
def run_annotate(request, run_id):
    """The run page's tag and note forms (contributor+): `note` replaces the note; `tag_key` +
    `tag_value` set a tag; `delete_tag` removes one. Errors come back as a message on the page."""
    run = _run(request, run_id)
    require_page_role(request, run.workspace, Role.CONTRIBUTOR)
    tags, delete, note = {}, [], None
    if "note" in request.POST:
        note = request.POST["note"].replace("\r\n", "\n")
    key = request.POST.get("tag_key", "").strip()
    if key:
        tags[key] = request.POST.get("tag_value", "")
    elif request.POST.get("tag_value"):
        messages.error(request, "Name the tag: a tag needs a key as well as a value.")
        return redirect(run.get_absolute_url() + "#overview")
    if request.POST.get("delete_tag"):
        delete.append(request.POST["delete_tag"])
    try:
        services.run_annotate(run=run, user=request.user, tags=tags, delete_tags=delete, note=note)
        messages.success(request, "Note saved." if note is not None else "Tags saved.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(run.get_absolute_url() + "#overview")


@login_required
@require_POST
def run_cancel(request, run_id):
    run = _run(request, run_id)
    return page_action(request, run.workspace, role=Role.CONTRIBUTOR,
                       act=lambda: services.run_cancel(run=run, user=request.user), done=f"Run {run} canceled.",
                       back=run.get_absolute_url())


@login_required
def run_output(request, run_id, path):
    """An output file: an attachment by default; `?inline=1` shows png/jpg/gif with their own type
    (nothing else is ever served inline); `?preview=1` shows text escaped in a page."""
    run = _run(request, run_id)
    row = run.outputs.filter(path=path).first()
    if row is None:
        raise Http404("No such output of this run.")
    ext = "." + row.path.rsplit(".", 1)[-1].lower() if "." in row.path else ""
    if request.GET.get("inline") and ext in IMAGE_TYPES:
        from django.http import FileResponse

        response = FileResponse(open_file(row.storage_name), content_type=IMAGE_TYPES[ext])
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response
    if request.GET.get("preview"):
        with open_file(row.storage_name) as handle:
            head = handle.read(PREVIEW_TEXT_BYTES + 1)
        return render(request, "runs/run_output_preview.html", {
            "run": run, "output": row, "text": services.decode_text(head[:PREVIEW_TEXT_BYTES]) if _is_text(head) else None,
            "truncated": len(head) > PREVIEW_TEXT_BYTES, "is_image": ext in IMAGE_TYPES,
        })
    return attachment(open_file(row.storage_name), row.path.rsplit("/", 1)[-1],
                      content_type=mimetypes.guess_type(row.path)[0])


@login_required
def run_compare(request):
    ids = ",".join(request.GET.getlist("ids"))
    qs = scoped(request, selectors.runs_base(), current_only=False)
    try:
        runs = runs_to_compare(qs, ids)
    except PortalError as exc:
        if exc.status_code == 404:
            raise Http404(exc.message) from None
        messages.error(request, exc.message)
        return redirect(reverse("run-list") + ("?" + urlencode({"ids": ids}) if ids else ""))
    data = selectors.compare(runs, with_series=False)
    import json

    sources = [{"url": f"/api/v1/runs/{r.pk}/series/", "label": str(r)} for r in runs]
    return render(request, "runs/run_compare.html", {**data, "chart_sources": json.dumps(sources),
                                                      "parallel_json": json.dumps(data["parallel"])})
