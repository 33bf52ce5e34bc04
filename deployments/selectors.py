"""Read queries about environments and services, and what the pages and API show of them:
engine status, the one-shot's steps, usage samples, container logs and metrics."""
from __future__ import annotations

import hmac
import json
import shlex
import uuid
from collections import defaultdict

from django.db.models import Q, QuerySet

from deployments.models import ActiveEnvironment, Environment, Service, ServiceReplica

SAMPLE_KEY = "<service-key>"
LOGS_TIMEOUT = 5  # seconds a logs request waits for the engine (the page asks again later)


def engine_status(environment: Environment) -> dict:
    """What the worker side last saw of the environment's engine, from its row (never a call to
    the engine): ``{"ok", "version", "error", "checked_at", "answered_at"}``; ``ok`` is None until
    the first check (the reconciler's, or the one after a create or engine change)."""
    return {"ok": environment.engine_ok, "version": environment.engine_version or None,
            "error": environment.engine_error or None, "checked_at": environment.engine_checked_at,
            "answered_at": environment.engine_answered_at,
            "checked_seconds_ago": seconds_since(environment.engine_checked_at)}


def seconds_since(moment) -> int | None:
    """Whole seconds since ``moment`` (None stays None): the "checked 4 s ago" of pages and API."""
    from django.utils import timezone

    return None if moment is None else max(0, int((timezone.now() - moment).total_seconds()))


def swarm_of(environment: Environment) -> dict | None:
    """A cluster environment's swarm as the worker side last saw it, from its row (never a call to
    the engine): {"state", "manager", "nodes", "managers", "error", "checked_at",
    "checked_seconds_ago"}, state ``unknown`` until the first check; None for a local one."""
    if environment.kind != Environment.Kind.CLUSTER:
        return None
    seen = environment.swarm or {}
    return {"state": seen.get("state") or "unknown", "manager": bool(seen.get("manager")),
            "nodes": seen.get("nodes") or 0, "managers": seen.get("managers") or 0, "error": seen.get("error") or "",
            "checked_at": environment.swarm_checked_at, "checked_seconds_ago": seconds_since(environment.swarm_checked_at)}


def active_environment(user, workspace) -> Environment | None:
    if workspace is None:
        return None
    active = ActiveEnvironment.objects.filter(user=user, workspace=workspace).select_related("environment").first()
    return active.environment if active else None


def services_in(environment: Environment) -> QuerySet[Service]:
    return environment.services.exclude(status=Service.Status.DELETED).order_by("name")


def filter_services(qs: QuerySet[Service], *, q: str = "", status: str = "", environment: str = "") -> QuerySet[Service]:
    """The services list's search (name, image name) and filters (status, environment id or name)."""
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(image__name__icontains=q))
    if status:
        qs = qs.filter(status=status)
    if environment:
        try:
            qs = qs.filter(environment_id=uuid.UUID(environment))
        except ValueError:
            qs = qs.filter(environment__name=environment)
    return qs


def ready_replicas(service: Service) -> list[ServiceReplica]:
    """The live revision's replicas (a canary's or shadow's take traffic only through the gateway)."""
    return list(service.replica_set.exclude(revision__role__in=["canary", "shadow"]).order_by("number"))


def service_plain_keys(row) -> tuple[str, str, str]:
    """(primary, secondary, proxy) keys of a service row (a model instance or a ``values()`` dict)
    as callers and containers use them: the gateway's key cache reads them through here."""
    get = row.get if isinstance(row, dict) else (lambda name: getattr(row, name))
    return get("primary_key"), get("secondary_key"), get("proxy_key")


def find_for_scoring(ref: str, key: str) -> Service | None:
    """The service ``ref`` (id or name) whose primary or secondary key is ``key``; names are unique
    per workspace only, so among same-named services the key decides. Keys are compared in
    constant time, every candidate's both keys, so timing tells nothing."""
    qs = Service.objects.exclude(status__in=[Service.Status.DELETING, Service.Status.DELETED])
    try:
        candidates = list(qs.filter(pk=uuid.UUID(ref))[:1])
    except ValueError:
        candidates = list(qs.filter(name=ref)[:100])
    given = key.encode("utf-8", "replace")
    found = None
    for service in candidates:
        matched = False
        for stored in service.keys:
            matched |= hmac.compare_digest(given, stored.encode())
        if matched and found is None:
            found = service
    return found


def service_steps(service: Service) -> list[dict]:
    """register → manifest → image → service, each with its id, status and page, as the one-shot
    create shows them (any service has this lineage)."""
    from django.urls import reverse

    image = service.image
    manifest = image.manifest
    model = manifest.model_versions.order_by("manifest_models__position").first()
    steps = []
    if model is not None:
        steps.append({"step": "register", "label": "Register model", "id": str(model.pk), "ref": model.ref,
                      "status": "succeeded", "url": reverse("model-detail", args=[model.pk])})
    steps.append({"step": "manifest", "label": "Create manifest", "id": str(manifest.pk), "ref": manifest.ref,
                  "status": "succeeded", "url": reverse("manifest-detail", args=[manifest.pk])})
    steps.append({"step": "image", "label": "Build image", "id": str(image.pk), "ref": image.ref, "status": image.status,
                  "error": image.error, "url": reverse("image-detail", args=[image.pk])})
    steps.append({"step": "service", "label": "Start service", "id": str(service.pk), "ref": service.name,
                  "status": service.status, "error": service.error, "url": service.get_absolute_url()})
    return steps


def sample_body(service: Service) -> dict:
    from mlportal_runtime.schema import example_body, load_schema
    from registry.models import Manifest
    from registry.services import manifest_file

    return example_body(load_schema(manifest_file(service.image.manifest, Manifest.SCHEMA)))


def service_usage(service: Service, *, portal_url: str) -> dict:
    """How to call the service: the portal's scoring URL, the container's own, its OpenAPI
    document, headers, the schema's example body, a curl line and the CLI line."""
    body = sample_body(service)
    body_json = json.dumps(body)
    scoring_url = f"{portal_url.rstrip('/')}/api/v1/services/{service.name}/score"
    replica = service.replica_set.order_by("number").first()
    container_url = f"{replica.url}/score" if replica else None
    headers = {"Authorization": f"Bearer {SAMPLE_KEY}", "Content-Type": "application/json"}
    curl = (f"curl -X POST {shlex.quote(scoring_url)} -H {shlex.quote('Authorization: ' + headers['Authorization'])} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body_json)}")
    return {
        "scoring_url": scoring_url,
        "container_url": container_url,
        "swagger_url": f"{replica.url}/swagger.json" if replica else None,
        "headers": headers,
        "sample_body": body,
        "curl": curl,
        "cli": f"mlportal service run realtime -i {shlex.quote(service.name)} -d {shlex.quote(body_json)}",
    }


def _cluster_logs(service: Service, *, tail: int) -> dict:
    """A cluster service's logs as a local one's: one entry per replica row (its task's lines), the
    lines of tasks no row holds any more (Swarm replaced them, or the service rolled) after them as
    ``[task <id>]``. A canary or shadow is a Swarm service of its own (deployments/cluster_rollout.py):
    its rows and tasks follow the live ones', labelled with their role (``[canary replica 101]``,
    ``[canary task <id>]``). One question to Swarm per Swarm service, each within LOGS_TIMEOUT; a
    swarm that did not answer is not asked again in the same request."""
    from compute.engine import EngineError, EngineUnreachable
    from deployments import cluster

    rows = sorted(service.replica_set.select_related("revision"), key=lambda row: row.number)
    groups: dict[int | None, tuple[str, list[ServiceReplica]]] = {None: ("live", [])}  # revision → (role, rows)
    for row in rows:
        if row.revision is None or row.revision.role == "live":
            groups[None][1].append(row)
        else:
            groups.setdefault(row.revision.number, (row.revision.role, []))[1].append(row)
    replicas, parts, unreachable = [], [], None
    for number, (role, group) in groups.items():
        lines, error = [], unreachable
        if error is None:
            try:
                lines = cluster.logs(service, tail=tail, timeout=LOGS_TIMEOUT, revision=number)
            except EngineUnreachable as exc:
                error = unreachable = (f"the swarm of environment '{service.environment.name}' did not give the logs "
                                       f"within {LOGS_TIMEOUT} s: {exc}")
            except EngineError as exc:
                error = str(exc)
        by_task: dict[str, list[str]] = defaultdict(list)
        for task, line in lines:
            by_task[task].append(line)
        prefix = "" if role == "live" else f"{role} "
        for row in group:
            own = by_task.pop(row.task_id, []) if row.task_id else []
            replicas.append({"replica": row.number, "role": role, "container_id": row.container_id, "task_id": row.task_id,
                             "text": "".join(f"{line}\n" for line in own), "error": error})
            parts.extend(f"[{prefix}replica {row.number}] {line}" for line in own)
            if error:
                parts.append(f"[{prefix}replica {row.number}] (logs unavailable: {error})")
        for task, own in by_task.items():
            label = f"{prefix}task {task[:12]}" if task else f"{prefix}swarm".strip()
            replicas.append({"replica": None, "role": role, "container_id": "", "task_id": task,
                             "text": "".join(f"{line}\n" for line in own), "error": None})
            parts.extend(f"[{label}] {line}" for line in own)
        if error and not group:
            replicas.append({"replica": None, "role": role, "container_id": "", "task_id": "", "text": "", "error": error})
            parts.append(f"(logs unavailable: {error})")
    return {"text": "\n".join(parts) + ("\n" if parts else ""), "replicas": replicas,
            "done": service.status in (Service.Status.FAILED, Service.Status.DELETED)}


def service_logs(service: Service, *, tail: int = 200) -> dict:
    """The last ``tail`` lines of each replica's container: ``{"text", "replicas": [...], "done"}``
    (``text`` joins them, each line prefixed with its replica)."""
    from compute.containers import container_logs
    from compute.engine import EngineError, EngineUnreachable

    replicas = []
    parts = []
    base_url = service.environment.docker_url
    if service.environment.kind == Environment.Kind.CLUSTER:
        return _cluster_logs(service, tail=tail)
    engine_error = None  # one engine that does not answer is asked once per request, not per replica
    for replica in service.replica_set.order_by("number"):
        text, error = "", engine_error
        if engine_error is None:
            try:
                text = container_logs(replica.container_id, tail=tail, base_url=base_url, timeout=LOGS_TIMEOUT)
            except EngineUnreachable as exc:
                error = engine_error = (f"the Docker engine of environment '{service.environment.name}' did not give "
                                        f"the logs within {LOGS_TIMEOUT} s: {exc}")
            except EngineError as exc:
                error = str(exc)
        replicas.append({"replica": replica.number, "container_id": replica.container_id, "text": text, "error": error})
        lines = text.splitlines()
        parts.extend(f"[replica {replica.number}] {line}" for line in lines)
        if error:
            parts.append(f"[replica {replica.number}] (logs unavailable: {error})")
    return {"text": "\n".join(parts) + ("\n" if parts else ""), "replicas": replicas,
            "done": service.status in (Service.Status.FAILED, Service.Status.DELETED)}


def service_metrics(service: Service, *, live: bool = False) -> dict:
    """Scoring requests and latency of every replica and the totals, from the snapshots the
    worker side took (``live``: asked now, with a short timeout): ``deployments.replica_metrics``."""
    from deployments import replica_metrics

    return replica_metrics.combine(service, live=live)


def service_export(service: Service, fmt: str | None) -> tuple[str, str]:
    """(text, file name) of the service written for another platform; ``fmt`` is one of
    ``kubernetes.FORMATS``. The text carries the keys (in the Secret): members only."""
    from deployments import kubernetes
    from core.errors import PortalError

    if fmt not in kubernetes.FORMATS:
        said = f"Unknown export format {fmt!r}" if fmt else "Say which export format"
        raise PortalError(f"{said}: use one of {', '.join(kubernetes.FORMATS)} (?format=kubernetes).",
                          fields={"format": f"One of: {', '.join(kubernetes.FORMATS)}."})
    autoscale = {key: getattr(service, f"autoscale_{key}") for key in (*kubernetes.AUTOSCALE_DEFAULTS, *kubernetes.BEHAVIOUR_LIMITS)}
    enabled = service.autoscale_enabled
    data = {"name": service.name, "workspace": service.workspace.name if service.workspace_id else "",
            "image": service.image.tag, "replicas": service.replicas, "cpus": service.cpus,
            "memory_mb": service.memory_mb, "primary_key": service.primary_key, "secondary_key": service.secondary_key,
            # a service without autoscaling gets Azure ML's defaults (the header says so)
            "autoscale": autoscale if enabled else None}
    return kubernetes.to_yaml(data), f"{service.name}-kubernetes.yaml"
