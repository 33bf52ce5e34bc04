"""Checks on what users send for environments and services: each returns the cleaned value or
raises PortalError naming the field and saying what to change. No database writes here. One check
asks an engine (``check_cluster_engine``, within DOOR_TIMEOUT): a cluster environment's is a swarm
manager, or made one when the owner asked."""
from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import PortalError
from deployments import hosts
from deployments.models import Environment

MIN_MEMORY_MB = 64


def check_engine_url(value: Any) -> str:
    """Returns a normalised engine URL: empty (the workers' own engine), ``tcp://host:port`` or
    ``ssh://[user@]host[:port]``; raises PortalError saying what to change."""
    value = (value or "").strip() if isinstance(value, str) else value
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or len(value) > 255 or any(ord(c) < 33 for c in value):
        raise field_error("engine_url", "The engine URL must be one line of at most 255 characters without spaces.")
    parts = urlsplit(value)
    if parts.scheme not in ("tcp", "ssh"):
        raise field_error("engine_url", f"Engine URL {value[:80]!r} is not supported: use tcp://host:port or "
                                         "ssh://user@host, or leave it empty for the workers' own Docker engine.")
    try:
        port = parts.port
    except ValueError:
        raise field_error("engine_url", f"Engine URL {value[:80]!r} has an invalid port: use a number from 1 to 65535.") from None
    if not parts.hostname:
        raise field_error("engine_url", f"Engine URL {value[:80]!r} names no host: write it like tcp://10.0.0.5:2375.")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise field_error("engine_url", f"Engine URL {value[:80]!r} must not hold a path, query or fragment.")
    if parts.scheme == "tcp":
        if parts.username or parts.password:
            raise field_error("engine_url", "A tcp:// engine URL takes no user name or password.")
        if port is None:
            raise field_error("engine_url", f"Engine URL {value[:80]!r} needs a port, like tcp://10.0.0.5:2375.")
    elif parts.password:
        raise field_error("engine_url", "Do not put a password in an ssh:// URL: use an SSH key of the worker's user.")
    value = value.rstrip("/")
    try:
        hosts.check_engine_url(value)
    except hosts.NotAllowed as exc:
        raise PortalError(str(exc), code="not_allowed", fields={"engine_url": str(exc)}) from None
    return value


def check_publish_address(value: Any) -> str:
    value = (value or "").strip() if isinstance(value, str) else value
    if value in (None, ""):
        return "127.0.0.1"
    try:
        address = str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise field_error("publish_address", f"Publish address {str(value)[:60]!r} is not an IP address: use "
                                              "127.0.0.1 (this host only) or an address of the engine's host.") from None
    try:
        hosts.check_publish_address(address)
    except hosts.NotAllowed as exc:
        raise PortalError(str(exc), code="not_allowed", fields={"publish_address": str(exc)}) from None
    return address


def check_labels(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise field_error("labels", 'Labels must be a JSON object of text values, like {"stage": "production"}.')
    if len(value) > 50:
        raise field_error("labels", "At most 50 labels.")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}", key):
            raise field_error("labels", f"Label name {str(key)[:40]!r} is not allowed: use up to 63 letters, digits, '.', '_', '-' or '/'.")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise field_error("labels", f"Label {key!r} must have a text or number value.")
        text = str(item)
        if len(text) > 255 or any(ord(c) < 32 for c in text):
            raise field_error("labels", f"Label {key!r} must be one line of at most 255 characters.")
        out[key] = text
    return out


def check_replicas(value: Any) -> int:
    cap = settings.MLPORTAL_MAX_REPLICAS
    number = whole_number(value, "replicas", f"Replicas must be a whole number from 1 to {cap}.")
    if number < 1:
        raise field_error("replicas", f"Replicas must be at least 1 (got {number}); delete the service to stop it.")
    if number > cap:
        raise field_error("replicas", f"Replicas must be at most {cap} (MLPORTAL_MAX_REPLICAS); got {number}.")
    return number


def check_cpus(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise field_error("cpus", "CPUs must be a number, like 0.5 or 2.") from None
    maximum = settings.MLPORTAL_SERVICE_MAX_CPUS
    if number != number or number > maximum:
        raise field_error("cpus", f"CPUs {number:g} is over the portal's maximum of {maximum:g} "
                                  f"(MLPORTAL_SERVICE_MAX_CPUS): ask for {maximum:g} or less.")
    if number < 0.1:
        raise field_error("cpus", f"CPUs must be from 0.1 to {maximum:g}; got {number:g}.")
    return round(number, 2)


def check_memory(value: Any) -> int:
    number = whole_number(value, "memory_mb", "Memory must be a whole number of MB, like 1024.")
    maximum = settings.MLPORTAL_SERVICE_MAX_MEMORY_MB
    if number > maximum:
        raise field_error("memory_mb", f"Memory {number} MB is over the portal's maximum of {maximum} MB "
                                       "(MLPORTAL_SERVICE_MAX_MEMORY_MB): ask for less.")
    if number < MIN_MEMORY_MB:
        raise field_error("memory_mb", f"Memory must be from {MIN_MEMORY_MB} to {maximum} MB; got {number}.")
    return number


def whole_number(value: Any, field: str, message: str) -> int:
    if isinstance(value, bool):
        raise field_error(field, message)
    if isinstance(value, int):
        return value
    try:
        text = str(value).strip()
        return int(text)
    except (TypeError, ValueError):
        raise field_error(field, message) from None


def field_error(field: str, message: str) -> PortalError:
    return PortalError(message, fields={field: message})


def check_deployable(environment: Environment) -> None:
    """Local and cluster (Docker Swarm) environments both take services."""
    if environment.kind not in Environment.Kind.values:
        raise field_error("environment", f"Environment '{environment.name}' has an unknown kind {environment.kind!r}.")


def check_image_deployable(image, *, field: str = "image") -> None:
    """Raises PortalError unless ``image`` built successfully."""
    from registry.models import Image

    if image.status == Image.Status.SUCCEEDED:
        return
    if image.status == Image.Status.FAILED:
        message = f"Image {image.ref} failed to build ({(image.error or 'see its build log')[:200]}): fix the manifest and build a new image."
    elif image.status == Image.Status.DELETING:
        message = f"Image {image.ref} is being deleted: choose another image."
    else:
        message = f"Image {image.ref} is not built yet (it is {image.status}): wait until its build succeeded."
    raise field_error(field, message)


MIN_REQUEST_TIMEOUT = 0.1


def check_request_timeout(value: Any) -> float | None:
    """Returns a service's request time limit in seconds, or None for the portal's default
    (``None``, "" or "default"); raises PortalError naming the bound
    (MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default")):
        return None
    high = settings.MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS
    try:
        seconds = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        seconds = None
    if seconds is None:
        raise field_error("request_timeout_s", f"request_timeout_s must be a number of seconds (or null for the "
                                               f"portal's default), not {str(value)[:40]!r}.")
    if not MIN_REQUEST_TIMEOUT <= seconds <= high:  # NaN fails too
        raise field_error("request_timeout_s", f"request_timeout_s must be between {MIN_REQUEST_TIMEOUT:g} and {high:g} "
                                               f"seconds (MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS); {seconds:g} is not.")
    return seconds


def effective_request_timeout(service) -> float:
    """Seconds one scoring request may run in the service's replicas (0: no limit): its own
    limit, else the portal's MLPORTAL_SCORING_TIMEOUT_SECONDS."""
    if service.request_timeout_s is not None:
        return service.request_timeout_s
    return settings.MLPORTAL_SCORING_TIMEOUT_SECONDS

# --- the one check that asks an engine: setting up (or moving) a cluster environment ---------------

# Setting up a cluster environment asks its engine whether it is a swarm manager, and waits no
# longer than this for the answer (pages and reads never ask: they show what the worker side saw).
DOOR_TIMEOUT = 3

def check_cluster_labels(labels: dict) -> None:
    """Raises PortalError when ``labels`` make no valid Swarm placement constraints (no engine asked)."""
    from compute import swarm

    try:
        swarm.placement_constraints(labels)
    except ValueError as exc:
        raise PortalError(f"Label {exc}.", fields={"labels": str(exc)}) from None


def check_cluster_engine(*, engine_url: str, labels: dict, init_swarm: bool) -> tuple[dict, str | None]:
    """Checks that the engine of a new (or moved) cluster environment is a swarm manager, asking it
    within DOOR_TIMEOUT seconds, and that its labels make valid placement constraints; with
    ``init_swarm`` an engine in no swarm is made the manager of a new single-node swarm first.
    Returns (swarm status, notice or None); raises PortalError: ``engine_unreachable`` when the
    engine did not answer in time, ``not_a_swarm_manager`` saying how to make it one."""
    from compute import swarm

    base_url = engine_url or settings.MLPORTAL_DOCKER_URL
    check_cluster_labels(labels)
    try:
        status = swarm.swarm_status(base_url, timeout=DOOR_TIMEOUT)
    except swarm.EngineError as exc:
        message = f"Cannot set up a cluster environment (its engine was given {DOOR_TIMEOUT} s to answer): {exc}"
        raise PortalError(message, code="engine_unreachable", fields={"engine_url": str(exc)}) from None
    if status["manager"]:
        notice = "The engine is a swarm manager already: nothing was initialised." if init_swarm else None
        return status, notice
    where = engine_url or "this machine's Docker engine"
    if not init_swarm or status["state"] != "inactive":
        try:
            swarm.check_manager(status, where=where)
        except swarm.NotAManager as exc:
            offer = (" Or let the portal do it: set up the environment again with init_swarm (the form's "
                     "'Initialise a single-node swarm' box, the API's \"init_swarm\": true, the CLI's --init-swarm)."
                     if status["state"] == "inactive" else "")
            message = f"{exc}{offer}"
            raise PortalError(message, code="not_a_swarm_manager",
                              fields={"kind": message, "init_swarm": "Tick to make it a single-node swarm manager."}) from None
    advertise = (urlsplit(engine_url).hostname if engine_url else None) or "127.0.0.1"
    try:
        status = swarm.swarm_init(base_url, advertise_addr=advertise, listen_port=settings.MLPORTAL_SWARM_LISTEN_PORT)
    except swarm.EngineError as exc:
        raise PortalError(f"Could not initialise a swarm on {where}: {exc}", code="swarm_init_failed",
                          fields={"init_swarm": str(exc)}) from None
    return status, (f"Initialised a single-node swarm on {where} (advertised on {advertise}); other hosts join it with "
                    "'docker swarm join --token <token> <this host>:2377' (the token: 'docker swarm join-token worker').")
