"""Read queries about models, manifests and images, and about what uses them."""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from django.apps import apps
from django.db.models import Count, Max, Q, QuerySet

from core.logs import read_log
from registry.models import Image, Manifest, Model

REF_RE = re.compile(r"^(?P<name>[^:]+):(?P<version>\d{1,9})$")


def split_ref(ref: str) -> tuple[str, int | None]:
    """'model.pkl:2' → ('model.pkl', 2); 'model.pkl' → ('model.pkl', None)."""
    match = REF_RE.match(ref)
    if match:
        return match["name"], int(match["version"])
    return ref, None


def find_by_ref(qs: QuerySet, ref: str, *, current_workspace_id=None, tag: bool = False):
    """Returns the object of ``qs`` that ``ref`` names: an id, ``name:version``, a name (its latest
    version) or, for images (``tag=True``), a Docker tag. Among several workspaces, the current
    one wins. None when nothing matches."""
    ref = (ref or "").strip()
    if not ref:
        return None
    try:
        return qs.filter(pk=uuid.UUID(ref)).first()
    except ValueError:
        pass
    if tag and "/" in ref:
        matches = qs.filter(tag=ref)
    else:
        name, version = split_ref(ref)
        matches = qs.filter(name=name)
        if version is not None:
            matches = matches.filter(version=version)
    matches = list(matches.order_by("-version")[:50])
    if not matches:
        return None
    if current_workspace_id is not None:
        matches.sort(key=lambda o: o.workspace_id != current_workspace_id)  # stable: latest first within each
    return matches[0]


def find_project(workspace, ref: str):
    """The project of ``workspace`` named ``ref`` (or with that id); None when there is none."""
    from runs.models import Project

    qs = Project.objects.filter(workspace=workspace)
    try:
        return qs.filter(pk=uuid.UUID(ref)).first()
    except ValueError:
        return qs.filter(name=ref).first()


def model_groups(qs: QuerySet[Model], *, q: str = "", ordering: str = "name") -> QuerySet:
    """One row per model name: {"name", "latest", "versions", "updated"}, for the grouped Models list."""
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q) | Q(framework__icontains=q))
    orderings = {"name": "name", "-name": "-name", "updated": "updated", "-updated": "-updated",
                 "versions": "versions", "-versions": "-versions"}
    return (
        qs.order_by().values("name").annotate(latest=Max("version"), versions=Count("id"), updated=Max("created_at"))
        .order_by(orderings.get(ordering, "name"), "name")
    )


def latest_versions(qs: QuerySet[Model], names: list[str]) -> dict[str, Model]:
    """The latest version of each of ``names`` in ``qs`` (one workspace), keyed by name."""
    out: dict[str, Model] = {}
    for model in qs.filter(name__in=names).order_by("name", "-version"):
        out.setdefault(model.name, model)
    return out


def versions_of(model: Model) -> QuerySet[Model]:
    return Model.objects.filter(workspace_id=model.workspace_id, name=model.name).order_by("-version")


def manifests_using(model: Model) -> QuerySet[Manifest]:
    return Manifest.objects.filter(manifest_models__model=model).order_by("name", "-version")


def images_of_manifests(manifest_ids: Iterable) -> QuerySet[Image]:
    return Image.objects.filter(manifest_id__in=list(manifest_ids)).order_by("name", "-version")


def service_model():
    """deployments.Service when the deployments app has one with an ``image`` link, else None."""
    try:
        model = apps.get_model("deployments", "Service")
    except LookupError:
        return None
    try:
        model._meta.get_field("image")
    except Exception:  # noqa: BLE001 - FieldDoesNotExist: no link to images yet
        return None
    return model


def services_using_images(image_ids: Iterable, *, include_deleted: bool = False) -> list:
    """The services (not deleted, unless ``include_deleted``) that run one of these images; [] without
    a deployments.Service."""
    service = service_model()
    ids = list(image_ids)
    if service is None or not ids:
        return []
    qs = service.objects.filter(image_id__in=ids)
    try:
        service._meta.get_field("status")
        if not include_deleted:
            qs = qs.exclude(status="deleted")
    except Exception:  # noqa: BLE001 - no status field: every service counts
        pass
    return list(qs.order_by("pk")[:50])


def model_usage(model: Model) -> dict:
    """What uses a model version: {"manifests", "images", "services"}."""
    manifests = list(manifests_using(model))
    images = list(images_of_manifests([m.pk for m in manifests]))
    return {"manifests": manifests, "images": images, "services": services_using_images([i.pk for i in images])}


def image_log(image: Image, offset: int = 0) -> dict:
    """Returns the build log after chunk ``offset`` (core.logs): {"text", "offset", "done", "status"}
    as MLPortal.tailLog reads it. ``done`` once the build finished and the whole log was sent."""
    from registry.models import ImageLogChunk

    # Status first: a finished status read before the chunks guarantees the chunks are complete.
    status = Image.objects.filter(pk=image.pk).values_list("status", flat=True).first() or image.status
    page = read_log(ImageLogChunk.objects.filter(image_id=image.pk), offset, finished=status in Image.FINISHED)
    return {**page, "status": status}


SAMPLE_KEY = "<your-service-key>"


def image_usage(image: Image) -> dict:
    """How to run and call the image: {"docker_run", "curl", "sample_body", "scoring_path"}.
    The sample body is the schema's example (mlportal_runtime.schema.example_body)."""
    import json
    import shlex

    from mlportal_runtime.schema import example_body, load_schema
    from registry.services import manifest_file

    body = example_body(load_schema(manifest_file(image.manifest, Manifest.SCHEMA)))
    path = "/score"
    docker_run = f"docker run -p 127.0.0.1:5001:5001 -e MLPORTAL_SERVICE_KEYS={SAMPLE_KEY} {image.tag}"
    curl = (
        f"curl -X POST http://127.0.0.1:5001{path} -H 'Authorization: Bearer {SAMPLE_KEY}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )
    return {"docker_run": docker_run, "curl": curl, "sample_body": body, "scoring_path": path}


def schema_fields(manifest: Manifest) -> list[dict]:
    """The schema as rows for a table: {"input", "kind", "name", "dtype", "example"} per field."""
    from mlportal_runtime.schema import load_schema
    from registry.services import manifest_file

    schema = load_schema(manifest_file(manifest, Manifest.SCHEMA))
    rows = []
    for input_name, spec in schema.inputs.items():
        data = spec.to_dict()
        example = data.get("example")
        first = example[0] if isinstance(example, list) and example else example
        if data.get("kind") == "pandas":
            for column in data.get("columns", []):
                value = first.get(column["name"]) if isinstance(first, dict) else None
                rows.append({"input": input_name, "kind": "pandas", "name": column["name"], "dtype": column["dtype"], "example": value})
        elif data.get("kind") == "numpy":
            rows.append({"input": input_name, "kind": "numpy", "name": input_name, "dtype": f"{data.get('dtype')} {data.get('shape')}", "example": first})
        else:
            rows.append({"input": input_name, "kind": "json", "name": input_name, "dtype": data.get("type", "object"), "example": first})
    return rows
