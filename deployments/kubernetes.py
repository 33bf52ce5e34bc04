"""A service written as Kubernetes objects: Deployment, Service, Secret and HorizontalPodAutoscaler.

Pure: no Django, no Docker. ``manifests(service)`` takes a plain dict (see ``REQUIRED``) and returns
the four objects as dicts; ``to_yaml`` writes them as one multi-document YAML file with a header
comment. The portal cannot run a Kubernetes API server here, so this export is the documented path
to a cluster (``kubectl apply -f <file>``); tests validate every object against the Kubernetes
schemas of ``KUBERNETES_VERSION``.

The keys live only in the Secret (base64 ``data``); the Deployment reads them with ``secretKeyRef``
and builds ``MLPORTAL_SERVICE_KEYS`` from them with Kubernetes' own ``$(VAR)`` expansion, so no key
is ever written into the Deployment.
"""
from __future__ import annotations

import base64
import math
import re

import yaml

KUBERNETES_VERSION = "1.33.0"  # the schemas the tests validate against
SCORING_PORT = 5001  # compute.images.SERVICE_PORT: the port the scoring server listens on
FORMATS = ("kubernetes",)

# Azure ML's defaults for AKS autoscaling, used when the service has no autoscale settings.
AUTOSCALE_DEFAULTS = {"min_replicas": 1, "max_replicas": 10, "target_utilization": 70}

REQUIRED = ("name", "image", "replicas", "cpus", "memory_mb", "primary_key", "secondary_key")


def _dns_name(name: str) -> str:
    """A DNS-1035 label (lower case, a letter first, at most 63) from a service name."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = "svc-" + label
    return label[:63].rstrip("-")


def _cpu(cpus: float) -> str:
    return f"{max(1, math.ceil(float(cpus) * 1000))}m"


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# How fast the HPA may react, from the service's autoscale_refresh_seconds and
# autoscale_stable_seconds (Kubernetes' own behaviour fields; none when the service has no settings).
BEHAVIOUR_LIMITS = {"refresh_seconds": (1, 1800), "stable_seconds": (0, 3600)}


def _behaviour(given: dict) -> dict | None:
    values = {}
    for key, (low, high) in BEHAVIOUR_LIMITS.items():
        if given.get(key) is None:
            continue
        number = int(given[key])
        if not low <= number <= high:
            raise ValueError(f"autoscale {key} must be from {low} to {high}, not {number}")
        values[key] = number
    if not values:
        return None
    behaviour = {}
    if "refresh_seconds" in values:
        # Up at once: no stabilisation, at most doubling per refresh period.
        behaviour["scaleUp"] = {"stabilizationWindowSeconds": 0,
                                "policies": [{"type": "Percent", "value": 100, "periodSeconds": values["refresh_seconds"]}]}
    if "stable_seconds" in values:
        behaviour["scaleDown"] = {"stabilizationWindowSeconds": values["stable_seconds"]}
    return behaviour


def autoscale_settings(service: dict) -> tuple[dict, bool]:
    """The HPA's min/max/target from ``service["autoscale"]`` (any missing one from the defaults);
    the second value says whether the defaults were used for all of it."""
    given = service.get("autoscale") or {}
    chosen = {key: int(given.get(key) if given.get(key) is not None else default)
              for key, default in AUTOSCALE_DEFAULTS.items()}
    if chosen["min_replicas"] < 1 or chosen["max_replicas"] < chosen["min_replicas"]:
        raise ValueError(f"autoscale needs 1 <= min_replicas <= max_replicas, not {chosen['min_replicas']}..{chosen['max_replicas']}")
    if not 1 <= chosen["target_utilization"] <= 100:
        raise ValueError(f"autoscale target_utilization must be from 1 to 100, not {chosen['target_utilization']}")
    return chosen, not any(given.get(key) is not None for key in AUTOSCALE_DEFAULTS)


def manifests(service: dict) -> list[dict]:
    """[Secret, Deployment, Service, HorizontalPodAutoscaler] for one service."""
    missing = [key for key in REQUIRED if service.get(key) in (None, "")]
    if missing:
        raise ValueError(f"the service dict lacks {', '.join(missing)}")
    name = _dns_name(service["name"])
    secret_name = f"{name}-keys"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "mlportal"}
    extra = {"mlportal/workspace": str(service["workspace"])} if service.get("workspace") else {}
    meta = {"name": name, "labels": {**labels, **extra}}
    if service.get("namespace"):
        meta["namespace"] = service["namespace"]
    resources = {"cpu": _cpu(service["cpus"]), "memory": f"{int(service['memory_mb'])}Mi"}
    probe = {"httpGet": {"path": "/ready", "port": "scoring"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "scoring",
        "image": service["image"],
        "ports": [{"name": "scoring", "containerPort": SCORING_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "MLPORTAL_SERVICE_NAME", "value": service["name"]},
            {"name": "MLPORTAL_PRIMARY_KEY", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "primary"}}},
            {"name": "MLPORTAL_SECONDARY_KEY", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "secondary"}}},
            {"name": "MLPORTAL_SERVICE_KEYS", "value": "$(MLPORTAL_PRIMARY_KEY),$(MLPORTAL_SECONDARY_KEY)"},
        ],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/health", "port": "scoring"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3},
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {**meta, "name": secret_name}, "type": "Opaque",
              "data": {"primary": _b64(service["primary_key"]), "secondary": _b64(service["secondary_key"])}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": int(service["replicas"]),
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }
    kube_service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "scoring", "port": SCORING_PORT, "targetPort": "scoring", "protocol": "TCP"}]},
    }
    scale, _ = autoscale_settings(service)
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scale["min_replicas"], "maxReplicas": scale["max_replicas"],
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scale["target_utilization"]}}}],
        },
    }
    behaviour = _behaviour(service.get("autoscale") or {})
    if behaviour:
        hpa["spec"]["behavior"] = behaviour
    return [secret, deployment, kube_service, hpa]


class _Dumper(yaml.SafeDumper):
    """Writes shared dicts out in full: no ``&id001`` anchors for a reader (or kubectl) to chase."""

    def ignore_aliases(self, data):
        return True


def to_yaml(service: dict) -> str:
    """The objects as one multi-document YAML file, with a comment saying where they came from."""
    objects = manifests(service)
    scale, defaulted = autoscale_settings(service)
    header = [f"# Service {service['name']} exported by MLPortal for Kubernetes {KUBERNETES_VERSION}+ "
              f"(kubectl apply -f <this file>).",
              "# The Secret holds the service's keys; keep this file as secret as the keys themselves."]
    if defaulted:
        header.append(f"# The service has no autoscale settings: the HorizontalPodAutoscaler uses Azure ML's defaults "
                      f"(min {scale['min_replicas']}, max {scale['max_replicas']}, target CPU utilisation "
                      f"{scale['target_utilization']}%).")
    else:
        given = service.get("autoscale") or {}
        window = "".join(f", {label} {given[key]} s" for key, label in (("refresh_seconds", "refresh"), ("stable_seconds", "scale-down window"))
                         if given.get(key) is not None)
        header.append(f"# The HorizontalPodAutoscaler uses the service's autoscale settings (min {scale['min_replicas']}, "
                      f"max {scale['max_replicas']}, target {scale['target_utilization']}%{window}). The portal's own "
                      "autoscaler counts busy scoring workers; Kubernetes measures CPU, the nearest signal it has.")
    body = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n---\n" + body
