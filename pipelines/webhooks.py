"""Outgoing webhooks: per workspace, HMAC-signed POSTs on run finished, model registered, image
built, service updated, pipeline finished (and drift detected, once monitoring reports drift).

Request side: ``webhook_create/update/delete``, ``webhook_send_test``. Worker side:
``events_scan`` reads what happened from the rows the other apps write anyway (a run's end, a
new model version, a finished build, a new service revision, a finished pipeline run), with a
look-back so a row committed late is not missed, and makes one delivery per webhook, event and
object (a unique constraint, so reading a row twice sends it once); ``delivery_attempt`` POSTs it
signed ``X-MLPortal-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`` and on anything but a
2xx tries again with a doubling back-off, ``MLPORTAL_WEBHOOK_ATTEMPTS`` times in all.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import urllib3

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from pipelines.models import PipelineRun, Webhook, WebhookCursor, WebhookDelivery
from core.errors import PortalError
from deployments.hosts import NotAllowed, check_public_host
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role

LOOK_BACK = timedelta(seconds=120)  # rows committed this late after their timestamp are still seen
TIMEOUT_SECONDS = 10
# A claimed attempt (status sending) is another worker's for this long: past it, it is tried again.
LEASE_SECONDS = 2 * TIMEOUT_SECONDS + 30
SIGNATURE_HEADER = "X-MLPortal-Signature-256"


# --- checks ---------------------------------------------------------------------------------------

def check_url(value: Any) -> str:
    text = str(value or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        message = (f"Webhook URL {text[:100]!r} is not an http(s) URL: give the full address the portal should POST to, "
                   "like https://hooks.example.com/mlportal.")
        raise PortalError(message, code="invalid_url", fields={"url": message})
    if parts.username or parts.password:
        message = "Put no user name or password in the webhook URL: the receiver checks the signature instead."
        raise PortalError(message, code="invalid_url", fields={"url": message})
    if len(text) > 500:
        raise PortalError("The webhook URL is too long (at most 500 characters).", fields={"url": "Too long."})
    try:  # a name that does not resolve yet passes; every delivery checks again
        check_public_host(parts.hostname, settings.MLPORTAL_WEBHOOK_HOSTS, setting="MLPORTAL_WEBHOOK_HOSTS", resolve=False)
    except NotAllowed as exc:
        raise PortalError(str(exc), code="invalid_url", fields={"url": str(exc)}) from None
    return text


def check_events(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    known = [e for e in Webhook.Event.values if e != Webhook.Event.PING]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PortalError(f"events must be a list of event names: {', '.join(known)}.", fields={"events": "Not a list."})
    unknown = [v for v in value if v not in known]
    if unknown:
        message = f"Unknown event {unknown[0][:40]!r}: use {', '.join(known)} (none: all of them)."
        raise PortalError(message, fields={"events": message})
    return sorted(set(value))


# --- request side ---------------------------------------------------------------------------------

def webhook_create(*, workspace: Workspace, name: Any, url: Any, user, events: Any = None) -> Webhook:
    """Creates an outgoing webhook (owners); its secret is on the returned row, shown this once."""
    require_role(user=user, workspace=workspace, role=Role.OWNER)
    name = check_name(name, what="webhook name")
    url, events = check_url(url), check_events(events)
    try:
        with transaction.atomic():
            webhook = Webhook.objects.create(workspace=workspace, name=name, url=url, events=events,
                                             secret=secrets.token_urlsafe(32), created_by=user)
            activity_record(workspace=workspace, actor=user, verb="webhook.created", target=webhook,
                            detail={"url": url, "events": events})
    except IntegrityError:
        message = f"Workspace '{workspace.name}' has a webhook named '{name}' already: choose another name."
        raise PortalError(message, fields={"name": message}) from None
    return webhook


def webhook_update(*, webhook: Webhook, user, changes: dict) -> Webhook:
    require_role(user=user, workspace=webhook.workspace, role=Role.OWNER)
    unknown = sorted(set(changes) - {"url", "events", "enabled"})
    if unknown:
        raise PortalError(f"Only url, events and enabled can be changed; not {', '.join(unknown)}.",
                          fields={k: "Cannot be changed." for k in unknown})
    fields = []
    if "url" in changes:
        webhook.url = check_url(changes["url"])
        fields.append("url")
    if "events" in changes:
        webhook.events = check_events(changes["events"])
        fields.append("events")
    if "enabled" in changes:
        webhook.enabled = changes["enabled"] if isinstance(changes["enabled"], bool) else str(changes["enabled"]).lower() in ("1", "true", "yes", "on")
        fields.append("enabled")
    if fields:
        with transaction.atomic():
            webhook.save(update_fields=fields)
            activity_record(workspace=webhook.workspace, actor=user, verb="webhook.updated", target=webhook,
                            detail={"fields": fields})
    return webhook


def webhook_delete(*, webhook: Webhook, user) -> None:
    require_role(user=user, workspace=webhook.workspace, role=Role.OWNER)
    with transaction.atomic():
        activity_record(workspace=webhook.workspace, actor=user, verb="webhook.deleted", target=webhook)
        webhook.delete()


def webhook_send_test(*, webhook: Webhook, user) -> WebhookDelivery:
    """Queues a ``ping`` delivery ("send test"); the worker sends it like any event."""
    require_role(user=user, workspace=webhook.workspace, role=Role.CONTRIBUTOR)
    data = {"message": f"A test from {user.username}: this webhook works.", "webhook": webhook.name}
    with transaction.atomic():
        delivery = _delivery(webhook, Webhook.Event.PING, uuid.uuid4().hex, data)
    return delivery


# --- events ---------------------------------------------------------------------------------------

def _payload(webhook: Webhook, event: str, data: dict, event_id: str) -> dict:
    return {"id": event_id, "event": event, "workspace": webhook.workspace.name, "data": data}


def _delivery(webhook: Webhook, event: str, object_id: str, data: dict) -> WebhookDelivery | None:
    """One delivery, queued after commit; None when this webhook had this event of this object already."""
    from pipelines.tasks import deliver_webhook

    event_id = uuid.uuid4()
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                id=event_id, webhook=webhook, event=event, object_id=str(object_id)[:64],
                payload=json.loads(json.dumps(_payload(webhook, event, data, str(event_id)), cls=DjangoJSONEncoder)))
    except IntegrityError:
        return None
    did = str(delivery.pk)
    transaction.on_commit(lambda: deliver_webhook.delay(did))
    return delivery


def _run_events(since):
    from runs.models import Run

    for run in Run.objects.filter(ended_at__gte=since, status__in=Run.FINISHED).select_related("project")[:1000]:
        yield run.workspace_id, Webhook.Event.RUN_FINISHED, run.pk, {
            "id": str(run.pk), "project": run.project.name, "number": run.number, "script": run.script,
            "status": run.status, "reason": run.status_reason, "duration_s": run.duration_s}


def _model_events(since):
    from registry.models import Model

    for model in Model.objects.filter(created_at__gte=since)[:1000]:
        yield model.workspace_id, Webhook.Event.MODEL_REGISTERED, model.pk, {
            "id": str(model.pk), "name": model.name, "version": model.version, "ref": model.ref,
            "sha256": model.sha256, "run_id": str(model.run_id) if model.run_id else None}


def _image_events(since):
    from registry.models import Image

    for image in Image.objects.filter(finished_at__gte=since, status__in=[Image.Status.SUCCEEDED, Image.Status.FAILED])[:1000]:
        yield image.workspace_id, Webhook.Event.IMAGE_BUILT, image.pk, {
            "id": str(image.pk), "ref": image.ref, "tag": image.tag, "status": image.status, "error": image.error,
            "build_seconds": image.build_seconds}


def _service_events(since):
    from deployments.models import ServiceRevision

    for revision in ServiceRevision.objects.filter(started_at__gte=since).select_related("service")[:1000]:
        yield revision.service.workspace_id, Webhook.Event.SERVICE_UPDATED, f"{revision.service_id}:{revision.number}", {
            "service": revision.service.name, "service_id": str(revision.service_id), "revision": revision.number,
            "image": revision.image_ref, "reason": revision.reason, "role": revision.role}


def _pipeline_events(since):
    for run in PipelineRun.objects.filter(ended_at__gte=since).select_related("pipeline", "model")[:1000]:
        yield run.workspace_id, Webhook.Event.PIPELINE_FINISHED, run.pk, {
            "id": str(run.pk), "pipeline": run.pipeline.name, "number": run.number, "status": run.status,
            "reason": run.reason, "trigger": run.trigger, "model": run.model.ref if run.model_id else None,
            "revision": run.revision}


def _drift_events(since):
    from pipelines.models import DriftSignal

    for signal in DriftSignal.objects.filter(created_at__gte=since).select_related("service")[:1000]:
        yield signal.workspace_id, Webhook.Event.DRIFT_DETECTED, signal.pk, {
            "service": signal.service.name, "service_id": str(signal.service_id), "detail": signal.detail,
            "at": signal.created_at}


SOURCES = (_run_events, _model_events, _image_events, _service_events, _pipeline_events, _drift_events)


def events_scan() -> int:
    """Makes the deliveries for what happened since the last scan (minus the look-back); returns
    how many. One scan at a time (the cursor row's lock)."""
    now = timezone.now()
    made = 0
    with transaction.atomic():
        cursor, _ = WebhookCursor.objects.select_for_update().get_or_create(name="events", defaults={"scanned_until": now})
        hooks: dict = {}
        for hook in Webhook.objects.filter(enabled=True).select_related("workspace"):
            hooks.setdefault(hook.workspace_id, []).append(hook)
        if hooks:
            since = cursor.scanned_until - LOOK_BACK
            for source in SOURCES:
                for workspace_id, event, object_id, data in source(since):
                    for hook in hooks.get(workspace_id, []):
                        if hook.wants(event) and _delivery(hook, event, str(object_id), data) is not None:
                            made += 1
        cursor.scanned_until = now
        cursor.save(update_fields=["scanned_until"])
    return made


# --- sending --------------------------------------------------------------------------------------

def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_attempt(*, delivery_id) -> float | None:
    """Sends one delivery once; returns the seconds until the next attempt, or None when it is over
    (succeeded, failed for good, or someone else has it).

    No row lock is held across the POST (up to TIMEOUT_SECONDS): the delivery is claimed in one
    short transaction (status sending, with a lease in ``next_attempt_at``), sent, and its outcome
    written in another. A worker lost mid-POST leaves the lease to run out; ``deliveries_due`` then
    hands it out again (a receiver may see an attempt twice: the delivery id says it is the same)."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True).select_related("webhook")
                    .filter(Q(status__in=[WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING])
                            | Q(status=WebhookDelivery.Status.SENDING, next_attempt_at__lt=now), pk=delivery_id)
                    .first())
        if delivery is None:
            return None
        delivery.status = WebhookDelivery.Status.SENDING
        delivery.next_attempt_at = now + timedelta(seconds=LEASE_SECONDS)
        delivery.save(update_fields=["status", "next_attempt_at"])
    webhook = delivery.webhook
    body = json.dumps({**delivery.payload, "sent_at": timezone.now().isoformat(), "attempt": delivery.attempts + 1},
                      separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "MLPortal-Webhook/1",
               "X-MLPortal-Event": delivery.event, "X-MLPortal-Delivery": str(delivery.pk),
               SIGNATURE_HEADER: sign(webhook.secret, body)}
    started = time.monotonic()
    code, error = None, ""
    try:
        code = post_pinned(webhook.url, body, headers)
        if not 200 <= code < 300:
            error = f"the receiver answered {code}" + (" (a redirect: the portal does not follow them)" if 300 <= code < 400 else "")
    except NotAllowed as exc:
        error = f"not sent: {exc}"
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    latency = round((time.monotonic() - started) * 1000, 1)
    with transaction.atomic():
        claimed = (WebhookDelivery.objects.select_for_update()
                   .filter(pk=delivery.pk, status=WebhookDelivery.Status.SENDING).first())
        if claimed is None:
            return None  # deleted with its webhook meanwhile
        return _record_attempt(claimed, code=code, latency=latency, error=error)


def _record_attempt(delivery: WebhookDelivery, *, code: int | None, latency: float, error: str) -> float | None:
    now = timezone.now()
    delivery.attempts += 1
    delivery.log = [*delivery.log, {"at": now.isoformat(), "response_code": code, "latency_ms": latency, "error": error}][-20:]
    delivery.response_code, delivery.latency_ms, delivery.error = code, latency, error
    wait = None
    if not error:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = WebhookDelivery.Status.SUCCEEDED, now, None
    elif delivery.attempts >= settings.MLPORTAL_WEBHOOK_ATTEMPTS:
        delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
        delivery.error = f"{error}; gave up after {delivery.attempts} attempts"
    else:
        wait = settings.MLPORTAL_WEBHOOK_RETRY_SECONDS * 2 ** (delivery.attempts - 1)
        delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.RETRYING, now + timedelta(seconds=wait)
    delivery.save(update_fields=["attempts", "log", "response_code", "latency_ms", "error", "status", "delivered_at",
                                 "next_attempt_at"])
    return wait


def post_pinned(url: str, body: bytes, headers: dict) -> int:
    """POSTs ``body`` to ``url`` and returns the status code, connecting to the very address that
    was checked (``check_public_host``, at each attempt: a name may since resolve to an address of
    the portal's network). A second lookup by the HTTP client could answer another address (DNS
    rebinding), so the connection goes to the checked address, with the name in ``Host`` and, for
    https, in SNI and the certificate check. Redirects are not followed."""
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    addresses = check_public_host(hostname, settings.MLPORTAL_WEBHOOK_HOSTS, setting="MLPORTAL_WEBHOOK_HOSTS")
    address = str(addresses[0])
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    timeout = urllib3.Timeout(connect=TIMEOUT_SECONDS, read=TIMEOUT_SECONDS)
    if https:
        import certifi

        pool = urllib3.HTTPSConnectionPool(address, port, timeout=timeout, retries=False, server_hostname=hostname,
                                           assert_hostname=hostname, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    default_port = port == (443 if https else 80)
    host_header = hostname if ":" not in hostname else f"[{hostname}]"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with pool:
        response = pool.urlopen("POST", target, body=body, redirect=False, preload_content=True,
                                headers={**headers, "Host": host_header if default_port else f"{host_header}:{port}"})
        return response.status


def deliveries_due() -> list[str]:
    """Retries whose time came (their countdown message lost with a restarted worker), and attempts
    whose worker was lost mid-POST (their lease ran out)."""
    now = timezone.now()
    stale = now - timedelta(seconds=60)
    due = WebhookDelivery.objects.filter(status__in=[WebhookDelivery.Status.RETRYING, WebhookDelivery.Status.SENDING],
                                         next_attempt_at__lt=stale)
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, created_at__lt=stale)
    return [str(pk) for pk in (due | pending).values_list("pk", flat=True)[:500]]
