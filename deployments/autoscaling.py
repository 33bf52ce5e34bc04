"""The autoscaler's worker side: one tick chain for every autoscaled service.

One task (``deployments.tasks.autoscale_services``) at a time takes a round: every service whose
refresh period is up gets its tick, and the task re-sends itself for when the next one is due,
carrying each service's next time. A tick reads every serving replica's ``/metrics`` (its
busy-seconds counter and worker count), writes a ``ServiceLoad`` sample (busy workers averaged
since the last tick), asks the rule in ``deployments/autoscale.py`` what to run, and when that
differs from what runs (and the service is healthy, with no other change or rollout under way)
records the decision as an event with its figures and starts the scale as any other change.
``Service.autoscale_token`` names the chain a service belongs to: turning autoscaling on (or
changing its settings, or the reconciler finding a chain gone) starts a new chain and gives it
every autoscaled service, so the old chain finds none of its own at its next round and ends. So
the maintenance worker spends at most one slot on the autoscaler, however many services it scales,
where it spent one task per service per second before.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from deployments import autoscale, proxy
from deployments.models import Service, ServiceEvent, ServiceLoad

logger = logging.getLogger(__name__)

KEEP = timedelta(hours=24)
METRICS_TIMEOUT = 2.0  # a saturated replica answers /metrics after the requests queued before it


MAX_WAIT = 30.0  # a round at least this often, whatever the refresh periods (a message waits no longer in the broker)
PARALLEL = 8  # services whose ticks run at once in a round (each mostly waits on its replicas' /metrics)


def autoscale_start(service_id=None) -> str:
    """Starts a new tick chain and gives it every autoscaled service (``service_id``'s included,
    whose row may just have been turned on in this transaction); a chain running before ends at
    its next round, finding no service of its own. Returns the new chain's token."""
    from deployments.tasks import autoscale_services

    token = str(uuid.uuid4())
    mine = Service.objects.filter(autoscale_enabled=True)
    if service_id is not None:
        mine = mine | Service.objects.filter(pk=service_id)
    Service.objects.filter(pk__in=list(mine.values_list("pk", flat=True))).update(autoscale_token=token)
    transaction.on_commit(lambda: autoscale_services.delay(token))
    return token


def adopt_old_tick(*, service_id: str, token: str) -> bool:
    """An old per-service tick message (``deployments.tasks.autoscale_service``): when ``token`` is
    still its service's and autoscaling on, starts one chain for every autoscaled service and
    returns True; else nothing (another message or the reconciler did it, or autoscaling went off)."""
    try:
        owned = Service.objects.filter(pk=service_id, autoscale_token=token, autoscale_enabled=True).exists()
    except (ValueError, ValidationError):  # not an id: a message nothing of ours sent
        return False
    if owned:
        with transaction.atomic():
            autoscale_start()
    return owned


def autoscale_round(*, token: str, schedule: dict[str, float], clock=time.time) -> tuple[float | None, dict[str, float]]:
    """One round of the chain ``token``: ticks each of its services whose time in ``schedule``
    (service id → epoch seconds; a service not in it is due now) has come, several at once.
    Returns (seconds until the next round, the schedule for it), or (None, {}) when the chain has
    no service left (another chain took them, or autoscaling went off everywhere). A tick that
    raises is logged and tried again after its refresh period; the others go on."""
    services = {str(pk): refresh for pk, refresh in Service.objects.filter(autoscale_token=token, autoscale_enabled=True)
                .exclude(status__in=(Service.Status.DELETING, Service.Status.DELETED, Service.Status.FAILED))
                .values_list("pk", "autoscale_refresh_seconds")}
    if not services:
        return None, {}
    started = clock()
    due = [sid for sid in services if schedule.get(sid, 0.0) <= started + 0.02]
    following = {sid: float(schedule[sid]) for sid in services if sid not in due}
    for sid, wait in _ticks(due, token).items():
        if wait is not None:
            following[sid] = started + (wait if wait >= 0 else float(services[sid]))
    if not following:
        return None, {}
    return min(MAX_WAIT, max(0.05, min(following.values()) - clock())), following


def _ticks(service_ids: list[str], token: str) -> dict[str, float | None]:
    """service id → what its tick returned (-1: it raised); several at once in threads of their own
    (each with its own database connection, closed after)."""
    if len(service_ids) <= 1:
        return {sid: _one_tick(sid, token) for sid in service_ids}
    from concurrent.futures import ThreadPoolExecutor

    def in_thread(sid: str) -> float | None:
        from django.db import connections

        try:
            return _one_tick(sid, token)
        finally:
            connections.close_all()  # this thread's own

    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(service_ids)), thread_name_prefix="autoscale") as pool:
        return dict(zip(service_ids, pool.map(in_thread, service_ids)))


def _one_tick(service_id: str, token: str) -> float | None:
    try:
        return autoscale_tick(service_id=service_id, token=token)
    except Exception:  # noqa: BLE001 (one service's failure must not stop the others' autoscaling)
        logger.exception("autoscaler: the tick of service %s failed; it is tried again after its refresh period", service_id)
        return -1.0


def settings_of(service: Service) -> autoscale.Settings:
    return autoscale.Settings(min_replicas=service.autoscale_min_replicas, max_replicas=service.autoscale_max_replicas,
                              target_utilization=service.autoscale_target_utilization,
                              refresh_seconds=service.autoscale_refresh_seconds,
                              stable_seconds=service.autoscale_stable_seconds)


def take_sample(service: Service, previous: ServiceLoad | None) -> ServiceLoad | None:
    """Reads the replicas' counters and returns the (unsaved) sample since ``previous``, or None
    when no replica answered ``/metrics`` (a busy replica may be slow to: nothing is recorded, and
    the next sample spans both periods). ``counters`` maps each container to [busy seconds, when
    read]: busy workers are each counter's rise over the time since it was last read, so a
    replica that missed one read still counts right."""
    now = timezone.now()
    stamp = now.timestamp()
    before = {k: v for k, v in (previous.counters if previous is not None else {}).items()
              if isinstance(v, list) and len(v) == 2}
    counters: dict[str, list[float]] = {}
    workers = answered = 0
    busy = 0.0
    replicas = list(service.replica_set.filter(revision__isnull=True) | service.replica_set.filter(revision__role="live"))
    for replica in replicas:
        try:
            figures = autoscale.parse_metrics(proxy.fetch_text(replica.host, replica.port, "/metrics", timeout=METRICS_TIMEOUT))
        except (OSError, proxy.http.client.HTTPException) as exc:
            logger.info("autoscaler: replica %s of %s did not answer /metrics: %s", replica.number, service.pk, exc)
            if replica.container_id in before:
                counters[replica.container_id] = before[replica.container_id]
            continue
        answered += 1
        value = figures.get("busy_seconds", 0.0)
        counters[replica.container_id] = [value, stamp]
        workers += int(figures.get("workers", 0))
        if replica.container_id in before:
            old_value, old_stamp = before[replica.container_id]
            if stamp > old_stamp and value >= old_value:  # a restarted replica's counter starts again
                busy += (value - old_value) / (stamp - old_stamp)
    if not answered:
        return None
    per_replica = workers / answered
    # Replicas that did not answer this time are counted with the workers the others have.
    workers = round(per_replica * len(replicas))
    desired = autoscale.desired_for(busy, per_replica, service.autoscale_target_utilization)
    return ServiceLoad(service=service, at=now, replicas=len(replicas), workers=workers, busy=round(busy, 4),
                       utilization=round(100.0 * busy / workers, 2) if workers else 0.0, desired=desired, counters=counters)


def autoscale_tick(*, service_id: str, token: str) -> float | None:
    """One tick; returns the seconds until the next one, or None when the chain ends."""
    service = Service.objects.select_related("environment", "workspace", "image").filter(pk=service_id).first()
    if (service is None or not service.autoscale_enabled or str(service.autoscale_token) != token
            or service.status in (Service.Status.DELETING, Service.Status.DELETED, Service.Status.FAILED)):
        return None
    refresh = float(service.autoscale_refresh_seconds)
    if service.status == Service.Status.CREATING:
        return refresh
    if service.environment.kind == service.environment.Kind.CLUSTER and service.status in (Service.Status.HEALTHY,
                                                                                     Service.Status.UNHEALTHY):
        # (Not while a change runs: its worker keeps the rows, and a roll is no task "replaced".)
        from compute.engine import EngineError
        from deployments import cluster

        try:
            cluster.sync_replicas(service)  # Swarm may have replaced tasks since the last look
        except EngineError as exc:
            logger.info("autoscaler: could not read the tasks of %s: %s", service.pk, exc)
    previous = ServiceLoad.objects.filter(service=service).order_by("-at").first()
    if previous is not None and (timezone.now() - previous.at).total_seconds() > 30 * refresh + 30:
        previous = None  # counters that old say nothing about now
    sample = take_sample(service, previous)
    if sample is None:
        return refresh
    sample.save()
    if previous is None:
        return refresh  # the first sample of a chain only sets the counters
    if sample.at.second == 0 or previous.at.minute != sample.at.minute:
        ServiceLoad.objects.filter(service=service, at__lt=sample.at - KEEP).delete()
    settings = settings_of(service)
    horizon = sample.at - timedelta(seconds=settings.stable_seconds + 2 * refresh)
    rows = list(ServiceLoad.objects.filter(service=service, at__gte=horizon).order_by("at"))
    base = rows[0].at if rows else sample.at
    samples = [autoscale.Sample(at=(r.at - base).total_seconds(), replicas=r.replicas, workers=r.workers, busy=r.busy)
               for r in rows if r.workers]
    now = (sample.at - base).total_seconds()
    decision = autoscale.decide(samples, current=service.replicas, settings=settings, now=now)
    logger.info("autoscaler %s: busy %.3f of %d workers on %d replica(s); %s -> %d (%s)", service.name, sample.busy,
                sample.workers, sample.replicas, service.replicas, decision.replicas, decision.reason)
    if decision.scale and service.status == Service.Status.HEALTHY and not service.rollout:
        _scale(service, decision)
    return refresh


def _scale(service: Service, decision: autoscale.Decision) -> None:
    from deployments import services as deployments
    from core.errors import Conflict

    figures = decision.figures
    message = (f"Autoscaler: {decision.current} → {decision.replicas} replica(s): {decision.reason} "
               f"(busy workers {figures['busy_workers']:g} of {figures['workers']}, utilisation {figures['utilization']:g}%, "
               f"target {figures['target']}%, min {service.autoscale_min_replicas}, max {service.autoscale_max_replicas}).")
    try:
        deployments._start_change(service, user=None, op={"op": "scale", "replicas": decision.replicas, "auto": True},
                                  verb="service.autoscaled", detail={"from": decision.current, "to": decision.replicas,
                                                                     "figures": figures})
    except Conflict:
        return  # someone else's change started meanwhile: the next tick decides again
    ServiceEvent.objects.create(service=service, level=ServiceEvent.Level.INFO, message=message[:4000])


def revive_chains() -> int:
    """Starts a new tick chain (for every autoscaled service) when a serving autoscaled service's
    last sample is old: its chain was lost (a worker restart, a message the broker forgot).
    Returns 1 when it started one, else 0."""
    now = timezone.now()
    for service in Service.objects.filter(autoscale_enabled=True, status__in=Service.SERVING):
        last = ServiceLoad.objects.filter(service=service).order_by("-at").values_list("at", flat=True).first()
        if last is None or (now - last).total_seconds() > max(30, 10 * service.autoscale_refresh_seconds):
            autoscale_start()
            return 1
    return 0


# --- the request side: settings from a form, the API or the CLI ------------------------------------

REQUEST_FIELDS = {f"autoscale_{name}": name for name in autoscale.FIELDS}


def given_in(data) -> dict:
    """The autoscale settings a request names (``autoscale_enabled``, ``autoscale_min_replicas``…),
    keyed without the prefix; blank values are left out."""
    if not hasattr(data, "get"):
        return {}
    found = {}
    for field, name in REQUEST_FIELDS.items():
        value = data.get(field)
        if value is not None and value != "":
            found[name] = value
    return found


def check(given: dict, *, current: dict | None = None, replicas_given: bool = False) -> dict:
    """The complete settings (autoscale.check_settings) or PortalError naming the field."""
    from django.conf import settings as django_settings

    from core.errors import PortalError

    try:
        return autoscale.check_settings(given, current=current, cap=django_settings.MLPORTAL_MAX_REPLICAS,
                                        replicas_given=replicas_given)
    except autoscale.AutoscaleInvalid as exc:
        raise PortalError(str(exc), code="invalid_autoscale", fields=exc.fields) from None


def create_autoscaled(create, *, given: dict, replicas, user) -> tuple[Service, str | None]:
    """A service create (the API's, the page's, the one-shot's) with the autoscale settings it
    names: checks them before anything is stored (PortalError naming the field and its limits),
    then, in one transaction, ``create(replicas)`` (autoscaled: from the minimum; else
    ``replicas``, 1 when not given) and the settings with it, so its deploy is sent with them.
    Returns what ``create`` returns: (service, notice)."""
    given_replicas = replicas not in (None, "")
    values = check(given, replicas_given=given_replicas)
    with transaction.atomic():
        service, notice = create(values["min_replicas"] if values["enabled"] else (replicas if given_replicas else 1))
        apply_settings(service, values, user=user, created=True)
    return service, notice


def apply_settings(service: Service, values: dict, *, user, created: bool = False) -> Service:
    """Stores checked settings on the service; turning autoscaling on (or changing it while on)
    starts a tick chain; an event and an activity line say what it is now."""
    from django.conf import settings as django_settings

    from workspaces.services import activity_record

    cap = django_settings.MLPORTAL_MAX_REPLICAS
    before = service.autoscale
    fields = {f"autoscale_{name}": values[name] for name in autoscale.FIELDS}
    Service.objects.filter(pk=service.pk).update(**fields)
    for key, value in fields.items():
        setattr(service, key, value)
    if values == before and not created:
        return service
    if values["enabled"]:
        description = (f"Autoscaling on: {values['min_replicas']} to {values['max_replicas']} replicas, target "
                       f"{values['target_utilization']}% of scoring workers busy over {values['refresh_seconds']} s, "
                       f"scaling down after {values['stable_seconds']} s of less.")
        if values["max_replicas"] == cap < autoscale.DEFAULT_MAX:
            description += (f" (The maximum is this portal's MLPORTAL_MAX_REPLICAS, {cap}, below Azure ML's default of "
                            f"{autoscale.DEFAULT_MAX}: an administrator raises it for more.)")
        autoscale_start(service.pk)
    elif before["enabled"]:
        description = f"Autoscaling off: the service keeps {service.replicas} replica(s) until scaled."
    else:
        return service
    ServiceEvent.objects.create(service=service, message=description)
    activity_record(workspace=service.workspace, actor=user, verb="service.autoscale_set", target=service,
                    detail={k: v for k, v in values.items()})
    return service


def service_set_autoscale(*, service: Service, user, given: dict) -> Service:
    """``service update --autoscale-*``: checks the settings (the ones not named stay), stores them.
    Refused while the service is being deleted."""
    from core.errors import Conflict
    from workspaces.models import Role
    from workspaces.services import require_role

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    if not given:
        from core.errors import PortalError

        raise PortalError(f"Say what to change: {', '.join(REQUEST_FIELDS)}.",
                          fields={"autoscale_enabled": "Send at least one autoscale setting."})
    values = check(given, current=service.autoscale)
    with transaction.atomic():
        service = Service.objects.select_for_update().get(pk=service.pk)
        if service.status in (Service.Status.DELETING, Service.Status.DELETED):
            raise Conflict(f"Service '{service.name}' is {service.status}.", code="busy")
        return apply_settings(service, values, user=user)


def service_load(service: Service, *, minutes: int = 60) -> dict:
    """The autoscaler's samples of the last ``minutes`` (oldest first, at most 3,600: evenly
    thinned) and its decisions, for the page's chart and the API."""
    since = timezone.now() - timedelta(minutes=minutes)
    rows = list(ServiceLoad.objects.filter(service=service, at__gte=since).order_by("at")
                .values("at", "replicas", "workers", "busy", "utilization", "desired"))
    if len(rows) > 3600:
        step = len(rows) / 3600
        rows = [rows[int(i * step)] for i in range(3600)] + [rows[-1]]
    decisions = list(service.events.filter(message__startswith="Autoscaler:", created_at__gte=since)
                     .order_by("created_at").values("created_at", "message"))
    return {"settings": service.autoscale, "replicas": service.replicas,
            "samples": [{**row, "at": row["at"].isoformat()} for row in rows],
            "decisions": [{"at": d["created_at"].isoformat(), "message": d["message"]} for d in decisions]}
