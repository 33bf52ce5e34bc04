"""The request side of environments and services: what a view, a viewset or a CLI call does.

Each function checks (``deployments.checks``), records rows and enqueues the worker's task when the
transaction commits, then returns; none of them calls a Docker engine but the set-up of a cluster
environment (``environment_create``, which says why). What the ``deploy`` worker
does with the containers is in ``deployments.worker``; the periodic comparison with the engines in
``deployments.reconcile``.

A service's status moves by guarded updates (``UPDATE … WHERE status = <expected>``), so a request
and a worker never both move it. Longer than 500 lines on purpose: environments and every change
of a service (create, one-shot, update, rollback, scale, keys, delete) share the one change path.
"""
from __future__ import annotations

import logging
import re
import secrets
import uuid
from contextlib import contextmanager
from typing import IO, Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, PortalError
from core.storage import delete_files
from deployments.checks import (
    check_cluster_engine,
    check_cluster_labels,
    check_cpus,
    check_deployable,
    check_engine_url,
    check_image_deployable,
    check_labels,
    check_memory,
    check_publish_address,
    check_replicas,
    check_request_timeout,
    field_error,
    whole_number,
)
from deployments.models import ActiveEnvironment, Environment, Service, ServiceEvent
from gateway.table import mark_changed
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role

logger = logging.getLogger(__name__)


def environment_create(*, workspace: Workspace, name: str, user, kind: str = Environment.Kind.LOCAL, init_swarm: bool = False,
                       engine_url: str = "", publish_address: str = "", labels: Any = None,
                       description: str = "") -> Environment:
    """Creates an environment (the lab's ``az ml env setup``): ``local`` (one engine) or ``cluster``
    (a Docker Swarm manager). Choosing an engine URL or a publish address (a machine the portal will
    talk to) takes the owner role. Setting up a cluster environment is the one request that asks an
    engine (``checks.check_cluster_engine``: is it a swarm manager, or make it one with
    ``init_swarm``), because the owner asked for exactly that and must hear at once what to change;
    it runs before any transaction, within ``checks.DOOR_TIMEOUT`` seconds, and what it saw is
    written on the row (the pages read that). Moving a cluster to another engine
    (``environment_update``) passes the same door."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    if str(engine_url or "").strip() or str(publish_address or "").strip() not in ("", "127.0.0.1"):
        require_role(user=user, workspace=workspace, role=Role.OWNER)
    name = check_name(name, what="environment name")
    kind = (kind or Environment.Kind.LOCAL).strip() if isinstance(kind, str) else kind
    if kind not in Environment.Kind.values:
        raise field_error("kind", f"Unknown kind {str(kind)[:20]!r}: use 'local' or 'cluster' (a Docker Swarm).")
    if init_swarm and kind != Environment.Kind.CLUSTER:
        raise field_error("init_swarm", "init_swarm goes with kind 'cluster' (a Docker Swarm).")
    engine_url = check_engine_url(engine_url)
    publish_address = check_publish_address(publish_address)
    labels = check_labels(labels)
    notice, seen = None, {}
    if kind == Environment.Kind.CLUSTER:
        seen, notice = check_cluster_engine(engine_url=engine_url, labels=labels, init_swarm=bool(init_swarm))
    description = (description or "").strip() if isinstance(description, str) else ""
    if len(description) > 2000:
        raise field_error("description", "The description is over 2000 characters: shorten it.")
    if Environment.objects.filter(workspace=workspace, name=name).exists():
        raise field_error("name", f"Workspace '{workspace.name}' has an environment named '{name}' already: choose another name.")
    seen_at = timezone.now() if seen else None
    try:
        with transaction.atomic():
            environment = Environment.objects.create(
                workspace=workspace, name=name, kind=kind, engine_url=engine_url, publish_address=publish_address,
                labels=labels, description=description, created_by=user, swarm=seen or {}, swarm_checked_at=seen_at,
            )
            activity_record(workspace=workspace, actor=user, verb="environment.created", target=environment,
                            detail={"kind": kind, "engine": environment.engine_label})
            check_engine_soon(environment)
    except IntegrityError:
        raise field_error("name", f"Workspace '{workspace.name}' has an environment named '{name}' already: choose another name.") from None
    environment.notice = notice  # said to the user (the API's "notice", a page message)
    return environment


def check_engine_soon(environment: Environment) -> None:
    """A new or moved environment's engine is asked by a task once the row commits (pages only
    read what the worker side saw); until then it shows "not checked yet"."""
    from deployments.tasks import check_environment

    _enqueue(check_environment, environment.pk)


def _services_listed(environment: Environment) -> str:
    """The names of the services in ``environment`` for a message (five at most, then "…"); "" for none."""
    names = list(environment.services.order_by("name").values_list("name", flat=True)[:6])
    return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")


UPDATABLE_ENVIRONMENT_FIELDS = ("description", "labels", "engine_url", "publish_address")


def environment_update(*, environment: Environment, user, changes: dict[str, Any]) -> Environment:
    """Changes an environment's description, labels, engine URL or publish address (only the keys
    given). The engine and the publish address stay as they are while services run in it (those
    replicas live on that engine, at that address): refused, naming the services. Names and kinds
    do not change (scripts and services refer to environments by name). A cluster's new engine is
    asked at the door, as at its set-up (``checks.check_cluster_engine``, within DOOR_TIMEOUT):
    one that does not answer, or is no swarm manager, is refused and nothing changes."""
    require_role(user=user, workspace=environment.workspace, role=Role.CONTRIBUTOR)
    unknown = sorted(set(changes) - set(UPDATABLE_ENVIRONMENT_FIELDS))
    if unknown:
        message = (f"Only {', '.join(UPDATABLE_ENVIRONMENT_FIELDS)} can change; not {', '.join(unknown)}"
                   + (" (to rename, set up a new environment and move the services)" if "name" in unknown else "") + ".")
        raise PortalError(message, fields={k: "Cannot change." for k in unknown})
    values: dict[str, Any] = {}
    if "description" in changes:
        description = changes["description"]
        if not isinstance(description, str) or len(description.strip()) > 2000:
            raise field_error("description", "The description must be text of at most 2000 characters.")
        values["description"] = description.strip()
    if "labels" in changes:
        values["labels"] = check_labels(changes["labels"])
    if "engine_url" in changes or "publish_address" in changes:  # which machines the portal talks to
        require_role(user=user, workspace=environment.workspace, role=Role.OWNER)
    if "engine_url" in changes:
        values["engine_url"] = check_engine_url(changes["engine_url"])
    if "publish_address" in changes:
        values["publish_address"] = check_publish_address(changes["publish_address"])
    seen = None
    if environment.kind == Environment.Kind.CLUSTER:
        if "labels" in values:
            check_cluster_labels(values["labels"])
        if "engine_url" in values and values["engine_url"] != environment.engine_url:
            # The same door as the set-up: a cluster moves only to an engine that is a swarm manager.
            seen, _ = check_cluster_engine(engine_url=values["engine_url"], labels=values.get("labels", environment.labels),
                                                init_swarm=False)
    with transaction.atomic():
        environment = Environment.objects.select_for_update().get(pk=environment.pk)
        moved = [f for f in ("engine_url", "publish_address") if f in values and values[f] != getattr(environment, f)]
        if moved:
            listed = _services_listed(environment)
            if listed:
                what = " and ".join("engine" if f == "engine_url" else "publish address" for f in moved)
                raise Conflict(f"Environment '{environment.name}' runs service {listed}: its {what} cannot change "
                               "under them; delete those services first, or set up another environment.", code="in_use")
        changed = {k: v for k, v in values.items() if getattr(environment, k) != v}
        if "engine_url" in changed:  # what was seen of the old engine says nothing about the new one
            changed.update(engine_ok=None, engine_version="", engine_error="", engine_checked_at=None,
                           engine_answered_at=None, swarm=seen or {}, swarm_checked_at=timezone.now() if seen else None)
        for key, value in changed.items():
            setattr(environment, key, value)
        if changed:
            environment.save(update_fields=list(changed))
            activity_record(workspace=environment.workspace, actor=user, verb="environment.updated", target=environment,
                            detail={"changed": sorted(k for k in changed if k in values)})
            if "engine_url" in changed:
                check_engine_soon(environment)
    return environment


@transaction.atomic
def environment_delete(*, environment: Environment, user) -> None:
    """Deletes an environment; refused while services are in it (naming them)."""
    require_role(user=user, workspace=environment.workspace, role=Role.OWNER)
    listed = _services_listed(environment)
    if listed:
        raise Conflict(f"Environment '{environment.name}' runs service {listed}: delete those services first.",
                       code="in_use")
    activity_record(workspace=environment.workspace, actor=user, verb="environment.deleted", target=environment)
    environment.delete()


def environment_activate(*, environment: Environment, user) -> ActiveEnvironment:
    """Makes ``environment`` the user's active one in its workspace (the lab's ``az ml env set``)."""
    require_role(user=user, workspace=environment.workspace, role=Role.READER)
    active, _ = ActiveEnvironment.objects.update_or_create(
        user=user, workspace=environment.workspace, defaults={"environment": environment},
    )
    return active


def environment_by_ref(*, workspace: Workspace, ref: Any) -> Environment:
    """The environment of ``workspace`` with this id or name; PortalError (field ``environment``)
    naming the workspace's environments when there is none."""
    ref = str(ref or "").strip()
    qs = Environment.objects.filter(workspace=workspace)
    try:
        found = qs.filter(pk=uuid.UUID(ref)).first()
    except ValueError:
        found = qs.filter(name=ref).first()
    if found is None:
        names = list(qs.order_by("name").values_list("name", flat=True)[:10])
        known = f"its environments are {', '.join(names)}" if names else "it has no environments yet"
        raise field_error("environment", f"Unknown environment {ref[:80]!r} in workspace '{workspace.name}'; {known}.")
    return found


def environment_for_new_service(*, workspace: Workspace, user, ref: Any = None) -> tuple[Environment, str | None]:
    """Returns (the environment a new service goes to, a notice for the user or None).

    Without ``ref``: the user's active environment, else the workspace's ``local`` one, else its only
    one. A workspace with no environment at all gets a ``local`` one (this machine's engine), made
    the user's active one, so the lab's one-shot ``service create realtime`` works out of the box."""
    if ref not in (None, ""):
        environment = environment_by_ref(workspace=workspace, ref=ref)
        check_deployable(environment)
        return environment, None
    active = ActiveEnvironment.objects.filter(user=user, workspace=workspace).select_related("environment").first()
    if active is not None:
        check_deployable(active.environment)
        return active.environment, None
    environments = list(Environment.objects.filter(workspace=workspace).order_by("name")[:20])
    chosen = next((e for e in environments if e.name == "local"), None)
    if chosen is None and len(environments) == 1:
        chosen = environments[0]
    if chosen is not None:
        check_deployable(chosen)
        return chosen, None
    if environments:
        names = ", ".join(e.name for e in environments[:10])
        raise field_error("environment", f"Choose an environment ({names}) or set your active one first "
                                          "(POST /api/v1/environments/<name>/activate/).")
    # First services racing each other: they queue on the workspace's row and the later ones find
    # the 'local' environment the first one made (instead of failing on its unique name).
    list(Workspace.objects.select_for_update(no_key=True).filter(pk=workspace.pk).values_list("pk", flat=True))
    made = Environment.objects.filter(workspace=workspace, name="local").first()
    if made is not None:
        check_deployable(made)
        return made, None
    environment = environment_create(workspace=workspace, name="local", user=user,
                                     description="Made automatically for the first service: the workers' own Docker engine.")
    environment_activate(environment=environment, user=user)
    return environment, ("No environment was set up in this workspace: created environment 'local' (the workers' own "
                         "Docker engine) and made it your active one.")


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _check_name_free(workspace: Workspace, name: str) -> None:
    if Service.objects.filter(workspace=workspace, name=name).exists():
        raise field_error("name", f"Workspace '{workspace.name}' has a service named '{name}' already: choose another "
                                   "name, or update that service to the new image.")


def _create_row(*, workspace: Workspace, name: str, environment: Environment, image, user, replicas: int,
                cpus: float, memory_mb: int, request_timeout_s: float | None = None) -> Service:
    try:
        with transaction.atomic():
            service = Service.objects.create(
                workspace=workspace, name=name, environment=environment, image=image, replicas=replicas, cpus=cpus,
                memory_mb=memory_mb, request_timeout_s=request_timeout_s, primary_key=new_key(), secondary_key=new_key(),
                proxy_key=new_key(), created_by=user,
            )
    except IntegrityError:
        raise field_error("name", f"Workspace '{workspace.name}' has a service named '{name}' already: choose another name.") from None
    return service


def _enqueue(task, service_id) -> None:
    sid = str(service_id)
    transaction.on_commit(lambda: task.delay(sid))


def service_create(*, workspace: Workspace, name: str, image, user, environment: Any = None, replicas: Any = 1,
                   cpus: Any = 1.0, memory_mb: Any = 1024, request_timeout_s: Any = None) -> tuple[Service, str | None]:
    """Creates a service from a built image, status ``creating``; the deploy task starts its
    replicas once the transaction commits. Returns (service, notice or None). Nothing is started
    when any check fails."""
    from deployments.tasks import deploy_service

    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_name(name, what="service name")
    replicas, cpus, memory_mb = check_replicas(replicas), check_cpus(cpus), check_memory(memory_mb)
    request_timeout_s = check_request_timeout(request_timeout_s)
    if image.workspace_id != workspace.pk:
        raise field_error("image", f"Image {image.ref} is not in workspace '{workspace.name}'.")
    check_image_deployable(image)
    with transaction.atomic():
        _check_name_free(workspace, name)
        env, notice = environment_for_new_service(workspace=workspace, user=user, ref=environment)
        service = _create_row(workspace=workspace, name=name, environment=env, image=image, user=user,
                              replicas=replicas, cpus=cpus, memory_mb=memory_mb, request_timeout_s=request_timeout_s)
        activity_record(workspace=workspace, actor=user, verb="service.created", target=service,
                        detail={"image": image.ref, "environment": env.name, "replicas": replicas})
        event(service.pk, f"Created from image {image.ref} in environment '{env.name}' with {replicas} replica(s).")
        _enqueue(deploy_service, service.pk)
    return service, notice


def manifest_name_for(service_name: str) -> str:
    """A manifest/image name for a service name (Docker allows single separators only)."""
    return re.sub(r"[-_.]{2,}", "-", service_name).strip("-_.") or "service"


def service_create_realtime(*, workspace: Workspace, name: str, model_file: IO[bytes], model_filename: str,
                            score: bytes, schema: bytes, requirements: bytes | None, user,
                            runtime: str = "python", model_name: str | None = None, environment: Any = None,
                            replicas: Any = 1, cpus: Any = 1.0, memory_mb: Any = 1024,
                            confirm_unknown: bool = False, request_timeout_s: Any = None) -> tuple[Service, str | None]:
    """The lab's ``az ml service create realtime``: registers the model (next version when the name
    exists), creates the manifest and the image (its build queued), and records the service in
    ``creating``; its deploy waits for the build. One transaction: any check that fails (of any
    step) leaves nothing stored, files included; the model's scan gates it as it gates a manifest.
    Returns (service, notice or None)."""
    from deployments.tasks import deploy_service
    from registry import services as registry

    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_name(name, what="service name")
    replicas, cpus, memory_mb = check_replicas(replicas), check_cpus(cpus), check_memory(memory_mb)
    request_timeout_s = check_request_timeout(request_timeout_s)
    # The registry checks these again in its steps; checking first refuses a bad upload before the
    # transaction (and its write lock) starts and before the model file is copied into storage.
    with _step_fields({"name": "model_name", "file": "model_file"}):
        registry.check_model_name(model_filename or "", field="file", what="file name")
        registry.check_model_name(model_name or model_filename or "")
    with _step_fields({"score": "score_file", "schema": "schema_file", "requirements": "requirements_file"}):
        registry.check_score(score, run_function=registry.check_schema(schema).run_function)
        registry.parse_requirements(requirements)
    stored: list[str] = []
    try:
        _check_name_free(workspace, name)  # again under the transaction; first before copying the upload
        # The model file (it may be hundreds of MB) is stored and scanned before the transaction.
        with _step_fields({"name": "model_name", "file": "model_file"}):
            staged = registry.model_stage_upload(workspace=workspace, fileobj=model_file, filename=model_filename,
                                                 user=user)
        stored.append(staged.storage_name)
        with transaction.atomic():
            _check_name_free(workspace, name)
            env, notice = environment_for_new_service(workspace=workspace, user=user, ref=environment)
            with _step_fields({"name": "model_name", "file": "model_file"}):
                model = registry.model_register_staged(workspace=workspace, name=model_name or model_filename,
                                                       staged=staged, user=user)
            with _step_fields({"score": "score_file", "schema": "schema_file", "requirements": "requirements_file",
                               "models": "model_file"}):
                manifest = registry.manifest_create(workspace=workspace, name=manifest_name_for(name), models=[model],
                                                    score=score, schema=schema, requirements=requirements, user=user,
                                                    runtime=runtime, confirm_unknown=confirm_unknown, one_shot=True)
            stored += [info["storage"] for info in manifest.files.values()]
            image = registry.image_create(manifest=manifest, user=user)
            service = _create_row(workspace=workspace, name=name, environment=env, image=image, user=user,
                                  replicas=replicas, cpus=cpus, memory_mb=memory_mb, request_timeout_s=request_timeout_s)
            activity_record(workspace=workspace, actor=user, verb="service.created", target=service,
                            detail={"image": image.ref, "environment": env.name, "replicas": replicas,
                                    "model": model.ref, "manifest": manifest.ref})
            event(service.pk, f"Registered {model.ref}, created manifest {manifest.ref} and queued image {image.ref}; "
                              f"the service starts in '{env.name}' once the image is built.")
            _enqueue(deploy_service, service.pk)
    except BaseException:
        delete_files(stored)
        raise
    return service, notice


@contextmanager
def _step_fields(renames: dict[str, str]):
    """Re-raises a registry step's PortalError with its fields named as the one-shot's form names them."""
    try:
        yield
    except PortalError as exc:
        exc.fields = {renames.get(k, k): v for k, v in exc.fields.items()}
        raise


def _start_change(service: Service, *, user, op: dict, verb: str, detail: dict, fields: dict | None = None) -> Service:
    """Moves a healthy or unhealthy service to ``updating`` with ``op`` pending and enqueues the
    worker; Conflict while it is doing something else."""
    from deployments.tasks import update_service

    rollout = Service.objects.filter(pk=service.pk).values_list("rollout", flat=True).first()
    if rollout:  # its replicas are the canary's or shadow's too: finish that first
        raise Conflict(f"Service '{service.name}' has a {rollout.get('mode')} of image {rollout.get('image_ref')} in progress: "
                       "promote or abort it first.", code="rollout_in_progress")
    with transaction.atomic():
        moved = 0
        for status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
            moved = Service.objects.filter(pk=service.pk, status=status).update(
                status=Service.Status.UPDATING, pending={**op, "from": status, "by": getattr(user, "pk", None)},
                **(fields or {}),
            )
            if moved:
                break
        if not moved:
            current = Service.objects.filter(pk=service.pk).values_list("status", flat=True).first()
            raise Conflict(f"Service '{service.name}' is {current}: wait until it is healthy, then try again.",
                           code="busy")
        activity_record(workspace=service.workspace, actor=user, verb=verb, target=service, detail=detail)
        _enqueue(update_service, service.pk)
        if fields:  # new keys: the gateway takes them (and drops the old ones) at once
            transaction.on_commit(mark_changed)
    service.refresh_from_db()
    return service


def _image_in_workspace(service: Service, ref: Any, *, field: str = "image"):
    from registry import selectors as registry_selectors
    from registry.models import Image

    if hasattr(ref, "pk") and hasattr(ref, "tag"):
        image = ref if ref.workspace_id == service.workspace_id else None
    else:
        image = registry_selectors.find_by_ref(Image.objects.filter(workspace_id=service.workspace_id), str(ref or ""), tag=True)
    if image is None:
        raise field_error(field, f"Unknown image {str(ref)[:80]!r} in workspace '{service.workspace.name}'.")
    return image


def service_update(*, service: Service, image: Any, user) -> Service:
    """Starts an update to another built image: new replicas start, and only once all are ready
    does traffic switch and the old ones stop. A new image that never gets ready leaves the old one
    serving, with the reason in ``last_update_error``."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    image = _image_in_workspace(service, image)
    check_image_deployable(image)
    if image.pk == service.image_id:
        raise field_error("image", f"Service '{service.name}' runs image {image.ref} already: choose another image.")
    return _start_change(service, user=user, op={"op": "update", "image": str(image.pk)}, verb="service.updating",
                         detail={"from": service.image.ref, "to": image.ref})


def service_rollback(*, service: Service, user, revision: Any = None, image: Any = None) -> Service:
    """Goes back to the image of an earlier revision (``revision`` number, or ``image`` ref that
    the service served before) the way an update does."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    revisions = service.revisions.select_related("image")
    if revision not in (None, ""):
        number = whole_number(revision, "revision", "revision must be a revision number, like 1.")
        found = revisions.filter(number=number).first()
        if found is None:
            numbers = ", ".join(str(n) for n in revisions.values_list("number", flat=True)[:20]) or "none"
            raise field_error("revision", f"Service '{service.name}' has no revision {number}; its revisions are {numbers}.")
        target = found.image
        if target is None:
            raise field_error("revision", f"Revision {number} served image {found.image_ref}, which was deleted since.")
    elif image not in (None, ""):
        target = _image_in_workspace(service, image)
        if not revisions.filter(image=target).exists():
            raise field_error("image", f"Service '{service.name}' never served image {target.ref}: roll back to an image "
                                        "from its history, or update to it.")
    else:
        raise PortalError("Say what to roll back to: {\"revision\": n} or {\"image\": ref}.",
                          fields={"revision": "Give a revision number or an image."})
    if target.pk == service.image_id:
        raise field_error("revision", f"Service '{service.name}' serves image {target.ref} already.")
    check_image_deployable(target, field="revision")
    return _start_change(service, user=user, op={"op": "rollback", "image": str(target.pk)}, verb="service.rolling_back",
                         detail={"from": service.image.ref, "to": target.ref})


def service_scale(*, service: Service, replicas: Any, user) -> Service:
    """Scales to ``replicas`` (1 … MLPORTAL_MAX_REPLICAS); the current count is a no-op."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    replicas = check_replicas(replicas)
    if service.autoscale_enabled:
        raise Conflict(f"Service '{service.name}' is autoscaled ({service.autoscale_min_replicas} to "
                       f"{service.autoscale_max_replicas} replicas): change autoscale_min_replicas/autoscale_max_replicas, "
                       "or turn autoscaling off first.", code="autoscaled")
    if replicas == service.replicas and service.status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
        return service
    return _start_change(service, user=user, op={"op": "scale", "replicas": replicas}, verb="service.scaling",
                         detail={"from": service.replicas, "to": replicas})


def service_set_request_timeout(*, service: Service, value: Any, user) -> Service:
    """Sets how long one scoring request may run in the service's replicas (``None``: the portal's
    MLPORTAL_SCORING_TIMEOUT_SECONDS); the replicas restart with it one set at a time, and the
    service keeps its old limit if the new replicas never get ready. The same value is a no-op."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    seconds = check_request_timeout(value)
    if seconds == service.request_timeout_s and service.status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
        return service
    return _start_change(service, user=user, op={"op": "request_timeout", "request_timeout_s": seconds},
                         verb="service.request_timeout", detail={"from": service.request_timeout_s, "to": seconds})


def service_regenerate_key(*, service: Service, which: Any, user) -> Service:
    """Replaces the primary or the secondary key. The portal's proxy takes the new key at once (and
    the old one no longer); the containers are restarted with it one set at a time (no downtime)."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    if which not in ("primary", "secondary"):
        raise field_error("key", f"Say which key to regenerate: 'primary' or 'secondary' (not {str(which)[:20]!r}).")
    return _start_change(service, user=user, op={"op": "keys", "key": which}, verb="service.key_regenerated",
                         detail={"key": which}, fields={f"{which}_key": new_key()})


def service_delete(*, service: Service, user) -> Service:
    """Marks the service ``deleting``; the worker removes its containers, then the row."""
    from deployments.tasks import delete_service

    require_role(user=user, workspace=service.workspace, role=Role.OWNER)
    with transaction.atomic():
        moved = Service.objects.filter(pk=service.pk).exclude(
            status__in=[Service.Status.DELETING, Service.Status.DELETED]).update(status=Service.Status.DELETING)
        if moved:
            activity_record(workspace=service.workspace, actor=user, verb="service.deleting", target=service)
            event(service.pk, "Deletion requested: removing its containers.")
            _enqueue(delete_service, service.pk)
            transaction.on_commit(mark_changed)  # its keys stop working at the gateway at once
    service.refresh_from_db()
    return service


def event(service_id, message: str, level: str = ServiceEvent.Level.INFO) -> None:
    ServiceEvent.objects.create(service_id=service_id, level=level, message=message[:4000])
