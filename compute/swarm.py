"""The cluster backend: realtime services as Docker Swarm services on a swarm manager's engine.

Plain Python (no Django). Every call goes through ``compute.engine.connect``, so SDK errors become
``EngineError`` with a one-line message. What the portal asks for is a :class:`SwarmSpec`;
``service_spec`` turns it into the engine's service spec (pure, so tests can read it) and
``apply_service`` creates or updates the Swarm service from it. Swarm itself then keeps the
replicas running (a task that dies is replaced), rolls updates start-first and rolls a failed
update back (its own ``UpdateConfig`` / ``RollbackConfig``); the portal reads the tasks back
(``service_tasks``, ``update_state``) and writes what it saw.

- Keys never travel in the spec's environment: they are Swarm secrets, mounted as files under
  ``/run/secrets/`` readable by the scoring server's user only; the container is told the files'
  paths (``MLPORTAL_SERVICE_KEYS_FILE``, ``MLPORTAL_INTERNAL_KEY_FILE``).
- Ports are published in host mode (the ingress routing mesh did not answer on these machines):
  each task gets its own port on its node, which the gateway reaches directly. Host mode binds
  every address of the node; the keys guard the scoring paths.
- Replicas join ``mlportal-swarm``, a swarm-scoped bridge with inter-container traffic off.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import docker.errors

from compute.engine import LABEL_ID, LABEL_KIND, LABEL_PORTAL, EngineError, connect
from compute.envimage import check_image_ref
from compute.images import SERVICE_PORT

SWARM_NETWORK = "mlportal-swarm"
SWARM_BRIDGE = "mlp-swarm0"
KIND_TASK = "swarm-task"  # containers of Swarm tasks: never the single-engine reconciler's to remove
SECRETS_DIR = "/run/secrets"
KEYS_SECRET_FILE = "mlportal-keys"
INTERNAL_SECRET_FILE = "mlportal-internal"
RUNTIME_UID = "1000"  # the scoring server's user in every service image (compute/envimage.py)
NANO = 1_000_000_000
# Swarm's task states, in order; the ones after "running" end a task.
ENDED = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}
SETTLED_UPDATE = {"completed", "paused", "rollback_completed", "rollback_paused"}

INIT_HELP = ("make it one with 'docker swarm init' on that host (or the portal's offer to initialise a "
             "single-node swarm), or point the environment at a manager of an existing swarm "
             "(other hosts join with 'docker swarm join --token <token> <manager>:2377')")


class NotAManager(EngineError):
    """The engine is not a manager of a swarm; ``state`` is its swarm state (inactive, pending…)."""

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass
class SwarmSpec:
    """What a portal service asks of Swarm. ``keys`` (primary, secondary, proxy) and
    ``internal_key`` become secrets; ``env`` must not hold them (``service_spec`` refuses)."""

    name: str  # the Swarm service's name
    image: str
    replicas: int
    keys: list[str]
    internal_key: str
    env: dict[str, str]
    cpus: float = 1.0
    memory_mb: int = 1024
    labels: dict[str, str] = field(default_factory=dict)  # on the service and on its containers
    constraints: list[str] = field(default_factory=list)  # placement, e.g. node.labels.stage==production
    reservation: float = 0.25  # reservations as a share of the limits
    ready_path: str = "/ready"
    # Swarm reports a task running only once its check passed: a replica ready 0.1 s after a check
    # waits a whole interval more, so short (the check is a few milliseconds of bash).
    health_interval_s: float = 1.0
    start_period_s: float = 120.0  # init() loads the model: failing checks meanwhile do not count
    monitor_s: float = 5.0  # how long an updated task must stay up before the update moves on


def _digest(*values: str) -> str:
    return hashlib.sha256("\0".join(values).encode()).hexdigest()[:12]


def secret_names(spec: SwarmSpec) -> tuple[str, str]:
    """The names of the spec's two secrets: content-addressed (a secret cannot change, so new keys
    are a new secret and an update of the service that points at it)."""
    base = spec.name[:40]
    return (f"{base}-keys-{_digest(*spec.keys)}", f"{base}-internal-{_digest(spec.internal_key)}")


def placement_constraints(labels: dict[str, str]) -> list[str]:
    """Swarm constraints from an environment's labels: each ``node.<label>`` key places replicas on
    nodes whose Docker label matches (``{"node.stage": "production"}`` → ``node.labels.stage==production``);
    other labels only describe."""
    out = []
    for key, value in sorted((labels or {}).items()):
        if key.startswith("node.") and len(key) > 5:
            name = key[5:]
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name) or any(c in str(value) for c in "=!\n"):
                raise ValueError(f"label {key!r} cannot be a placement constraint: use letters, digits, '.', '_' or '-'")
            out.append(f"node.labels.{name}=={value}")
    return out


# The health check runs inside the container every interval: bash's /dev/tcp costs a few
# milliseconds where starting Python took seconds on a loaded host (and timed out).
HEALTH_SCRIPT = ("exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET %%s HTTP/1.0\\r\\n\\r\\n' >&3 "
                 "&& read -r -t 5 status <&3 && [[ $status == *' 200 '* ]]") % SERVICE_PORT


def service_spec(spec: SwarmSpec, *, secret_ids: dict[str, str] | None = None) -> dict:
    """The engine's service spec (the JSON ``POST /services/create`` takes) for ``spec``.
    ``secret_ids`` maps secret names to ids (``ensure_secrets``); without it, ids are left empty
    (for reading the spec). Raises ValueError when a key would end up in the environment."""
    check_image_ref(spec.image)
    for name, value in spec.env.items():
        if name in ("MLPORTAL_SERVICE_KEYS", "MLPORTAL_INTERNAL_KEY") or any(k and k in value for k in [*spec.keys, spec.internal_key]):
            raise ValueError(f"{name} would put a key into the service's environment: keys go in secrets")
    keys_name, internal_name = secret_names(spec)
    ids = secret_ids or {}
    labels = {LABEL_KIND: "service", **spec.labels}
    container_labels = {**spec.labels, LABEL_KIND: KIND_TASK}
    env = {**spec.env, "MLPORTAL_SERVICE_KEYS_FILE": f"{SECRETS_DIR}/{KEYS_SECRET_FILE}",
           "MLPORTAL_INTERNAL_KEY_FILE": f"{SECRETS_DIR}/{INTERNAL_SECRET_FILE}"}
    memory = int(spec.memory_mb) * 1024 * 1024
    interval = int(spec.health_interval_s * NANO)
    return {
        "Name": spec.name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": spec.image,
                "Env": [f"{k}={v}" for k, v in sorted(env.items())],
                "Labels": container_labels,
                "CapabilityDrop": ["ALL"],
                "Healthcheck": {"Test": ["CMD", "bash", "-c", HEALTH_SCRIPT % spec.ready_path], "Interval": interval,
                                "Timeout": 6 * NANO, "Retries": 3, "StartPeriod": int(spec.start_period_s * NANO)},
                "StopGracePeriod": 10 * NANO,
                "Secrets": [
                    {"SecretName": keys_name, "SecretID": ids.get(keys_name, ""),
                     "File": {"Name": KEYS_SECRET_FILE, "UID": RUNTIME_UID, "GID": RUNTIME_UID, "Mode": 0o400}},
                    {"SecretName": internal_name, "SecretID": ids.get(internal_name, ""),
                     "File": {"Name": INTERNAL_SECRET_FILE, "UID": RUNTIME_UID, "GID": RUNTIME_UID, "Mode": 0o400}},
                ],
            },
            "Resources": {
                "Limits": {"NanoCPUs": int(spec.cpus * NANO), "MemoryBytes": memory},
                "Reservations": {"NanoCPUs": int(spec.cpus * spec.reservation * NANO),
                                 "MemoryBytes": int(memory * spec.reservation)},
            },
            # Swarm replaces a task that exits or turns unhealthy; the portal only reads what happened.
            "RestartPolicy": {"Condition": "any", "Delay": NANO, "MaxAttempts": 0},
            "Placement": {"Constraints": list(spec.constraints)},
            "Networks": [{"Target": SWARM_NETWORK}],
            "LogDriver": {"Name": "json-file", "Options": {"max-size": "10m", "max-file": "3"}},
        },
        "Mode": {"Replicated": {"Replicas": int(spec.replicas)}},
        "UpdateConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "rollback", "Monitor": int(spec.monitor_s * NANO),
                         "MaxFailureRatio": 0, "Order": "start-first"},
        "RollbackConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": int(spec.monitor_s * NANO),
                           "MaxFailureRatio": 0, "Order": "start-first"},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": SERVICE_PORT, "PublishMode": "host"}]},
    }


# --- the swarm itself -----------------------------------------------------------------------------

def swarm_status(base_url: str | None = None, *, timeout: float = 10) -> dict:
    """``{"state", "manager", "node_id", "nodes", "managers"}`` of the engine's swarm membership
    (state ``inactive`` when it is in none). Raises EngineError when the engine does not answer
    within ``timeout`` seconds."""
    with connect(base_url, timeout=timeout) as client:
        info = client.info().get("Swarm") or {}
    return {"state": info.get("LocalNodeState") or "inactive", "manager": bool(info.get("ControlAvailable")),
            "node_id": info.get("NodeID") or "", "nodes": info.get("Nodes") or 0, "managers": info.get("Managers") or 0,
            "error": info.get("Error") or ""}


def check_manager(status: dict, *, where: str) -> dict:
    """Returns ``status`` (swarm_status) when it is a manager's; raises NotAManager saying how to
    make the engine at ``where`` one."""
    if not status.get("manager"):
        state = status.get("state") or "inactive"
        what = ("is not in a swarm" if state == "inactive"
                else f"is a swarm {'worker' if state == 'active' else state} node, not a manager")
        raise NotAManager(f"The Docker engine at {where} {what}: {INIT_HELP}.", state=state)
    return status


def require_manager(base_url: str | None = None) -> dict:
    """Returns swarm_status when the engine is a swarm manager; raises NotAManager saying how to
    make it one."""
    return check_manager(swarm_status(base_url), where=base_url or "this machine's Docker engine")


def swarm_init(base_url: str | None = None, *, advertise_addr: str = "127.0.0.1", listen_port: int = 2377) -> dict:
    """Makes the engine the manager of a new single-node swarm (idempotent: an engine that is a
    manager already is left as it is). Returns swarm_status."""
    status = swarm_status(base_url)
    if status["manager"]:
        return status
    if status["state"] != "inactive":
        raise NotAManager(f"The engine is a swarm {status['state']} node already: it cannot start a swarm of its own; "
                          "make it leave that swarm on its host first, or use a manager of that swarm.", state=status["state"])
    with connect(base_url, timeout=60) as client:
        client.swarm.init(advertise_addr=advertise_addr, listen_addr=f"0.0.0.0:{listen_port}")
    return swarm_status(base_url)


def node_names(base_url: str | None = None) -> dict[str, dict]:
    """node id → {"hostname", "addr", "labels", "state", "availability"} of every node."""
    with connect(base_url, timeout=30) as client:
        nodes = client.api.nodes()
    return {n["ID"]: {"hostname": (n.get("Description") or {}).get("Hostname", n["ID"][:12]),
                      "addr": (n.get("Status") or {}).get("Addr", ""),
                      "labels": (n.get("Spec") or {}).get("Labels") or {},
                      "state": (n.get("Status") or {}).get("State", ""),
                      "availability": (n.get("Spec") or {}).get("Availability", "")} for n in nodes}


def nodes_matching(constraints: list[str], nodes: dict[str, dict]) -> list[str]:
    """The hostnames of the ready, active nodes whose labels satisfy every ``node.labels.k==v``
    (or ``!=``) constraint (others are not judged here)."""
    found = []
    for node in nodes.values():
        if node["state"] != "ready" or node["availability"] != "active":
            continue
        ok = True
        for constraint in constraints:
            match = re.fullmatch(r"node\.labels\.([^=!]+)(==|!=)(.*)", constraint)
            if match is None:
                continue
            key, op, value = match.groups()
            ok &= (node["labels"].get(key) == value) == (op == "==")
        if ok:
            found.append(node["hostname"])
    return found


_network_ready: set[str] = set()  # engines whose network (and host rules) this process made sure of


def ensure_network(base_url: str | None = None) -> str:
    """Makes sure the swarm has the ``mlportal-swarm`` bridge (swarm scope, inter-container traffic
    off) and, on the local engine, the host rules that drop what its containers send to the host."""
    from compute.network import _is_local, ensure_host_firewall

    if (base_url or "") in _network_ready:  # once per engine and process, as compute.network does
        return SWARM_NETWORK
    with connect(base_url) as client:
        try:
            client.networks.get(SWARM_NETWORK)
        except docker.errors.NotFound:
            try:
                client.networks.create(SWARM_NETWORK, driver="bridge", scope="swarm", check_duplicate=True,
                                       options={"com.docker.network.bridge.enable_icc": "false",
                                                "com.docker.network.bridge.name": SWARM_BRIDGE},
                                       labels={LABEL_KIND: "network"})
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
    if _is_local(base_url):
        ensure_host_firewall([SWARM_BRIDGE])
    _network_ready.add(base_url or "")
    return SWARM_NETWORK


# --- services -------------------------------------------------------------------------------------

def ensure_secrets(spec: SwarmSpec, *, base_url: str | None = None) -> dict[str, str]:
    """Creates the spec's two secrets unless they exist; returns name → id."""
    keys_name, internal_name = secret_names(spec)
    wanted = {keys_name: ",".join(spec.keys).encode(), internal_name: spec.internal_key.encode()}
    labels = {k: v for k, v in spec.labels.items() if k in (LABEL_ID, LABEL_PORTAL)}
    ids = {}
    with connect(base_url) as client:
        existing = {s["Spec"]["Name"]: s["ID"] for s in client.api.secrets(filters={"name": list(wanted)})}
        for name, data in wanted.items():
            if name in existing:
                ids[name] = existing[name]
                continue
            try:
                ids[name] = client.api.create_secret(name, data, labels={**labels, LABEL_KIND: "secret"})["ID"]
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                ids[name] = next(s["ID"] for s in client.api.secrets(filters={"name": [name]}) if s["Spec"]["Name"] == name)
    return ids


def find_service(name: str, *, base_url: str | None = None) -> dict | None:
    """The engine's view of the Swarm service (inspect), None when there is none."""
    with connect(base_url) as client:
        try:
            return client.api.inspect_service(name)
        except docker.errors.NotFound:
            return None


def apply_service(spec: SwarmSpec, *, base_url: str | None = None) -> str:
    """Creates the Swarm service, or updates it to ``spec`` (a changed image, keys, resources or
    environment rolls its tasks start-first; only a changed replica count just scales). Returns its id."""
    ensure_network(base_url)
    ids = ensure_secrets(spec, base_url=base_url)
    body = service_spec(spec, secret_ids=ids)
    with connect(base_url) as client:
        current = None
        try:
            current = client.api.inspect_service(spec.name)
        except docker.errors.NotFound:
            pass
        if current is None:
            answer = client.api.post(client.api._url("/services/create"), json=body)
            return client.api._result(answer, json=True)["ID"]
        version = current["Version"]["Index"]
        url = client.api._url("/services/{0}/update", current["ID"])
        answer = client.api.post(url, json=body, params={"version": version})
        client.api._raise_for_status(answer)
        return current["ID"]


def rollback_service(name: str, *, base_url: str | None = None) -> None:
    """Asks Swarm to go back to the service's previous spec (its own rollback)."""
    with connect(base_url) as client:
        current = client.api.inspect_service(name)
        body = dict(current.get("PreviousSpec") or current["Spec"])
        answer = client.api.post(client.api._url("/services/{0}/update", current["ID"]), json=body,
                                 params={"version": current["Version"]["Index"], "rollback": "previous"})
        client.api._raise_for_status(answer)


def scale_service(name: str, replicas: int, *, base_url: str | None = None) -> None:
    """Sets the replica count of a Swarm service (no task restarts)."""
    with connect(base_url) as client:
        current = client.api.inspect_service(name)
        body = dict(current["Spec"])
        body["Mode"] = {"Replicated": {"Replicas": int(replicas)}}
        answer = client.api.post(client.api._url("/services/{0}/update", current["ID"]), json=body,
                                 params={"version": current["Version"]["Index"]})
        client.api._raise_for_status(answer)


def update_state(name: str, *, base_url: str | None = None) -> dict:
    """``{"state", "message", "started_at", "image", "previous_image", "replicas"}`` of a Swarm
    service: state is Swarm's UpdateStatus state (updating, completed, rollback_started,
    rollback_completed, paused…) or "" when it was never updated; ``started_at`` tells one update
    from the next."""
    service = find_service(name, base_url=base_url)
    if service is None:
        return {"state": "gone", "message": "", "image": "", "previous_image": "", "replicas": 0, "started_at": ""}
    status = service.get("UpdateStatus") or {}
    spec = service["Spec"]
    previous = service.get("PreviousSpec") or {}
    return {"state": status.get("State", ""), "message": status.get("Message", ""), "started_at": status.get("StartedAt", ""),
            "image": spec["TaskTemplate"]["ContainerSpec"]["Image"],
            "previous_image": ((previous.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", ""),
            "replicas": ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0)}


def service_tasks(name: str, *, base_url: str | None = None, nodes: dict[str, dict] | None = None) -> list[dict]:
    """The Swarm service's tasks, newest first: ``{"id", "slot", "state", "desired", "container_id",
    "node_id", "node", "addr", "port", "error", "message", "image", "timestamp"}``; ``port`` is the
    host port its node published for the scoring port (None until it runs)."""
    with connect(base_url) as client:
        try:
            tasks = client.api.tasks(filters={"service": name})
        except docker.errors.NotFound:
            return []
    nodes = node_names(base_url) if nodes is None else nodes
    out = []
    for task in tasks:
        status = task.get("Status") or {}
        port = None
        for binding in (status.get("PortStatus") or {}).get("Ports") or []:
            if binding.get("TargetPort") == SERVICE_PORT and binding.get("PublishedPort"):
                port = int(binding["PublishedPort"])
                break
        node = nodes.get(task.get("NodeID", ""), {})
        out.append({
            "id": task["ID"], "slot": task.get("Slot"), "state": status.get("State", ""),
            "desired": task.get("DesiredState", ""),
            "container_id": (status.get("ContainerStatus") or {}).get("ContainerID", ""),
            "exit_code": (status.get("ContainerStatus") or {}).get("ExitCode"),
            "node_id": task.get("NodeID", ""), "node": node.get("hostname", ""), "addr": node.get("addr", ""),
            "port": port, "error": status.get("Err", ""), "message": status.get("Message", ""),
            "image": ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", ""),
            "timestamp": status.get("Timestamp", ""),
        })
    out.sort(key=lambda t: t["timestamp"], reverse=True)
    return out


def running_tasks(tasks: list[dict]) -> dict[int, dict]:
    """slot → the newest task that runs (healthy: with a health check Swarm says running only then)
    and wants to, with a published port."""
    found: dict[int, dict] = {}
    for task in tasks:
        if task["state"] == "running" and task["desired"] == "running" and task["port"] and task["slot"] not in found:
            found[task["slot"]] = task
    return found


def service_logs(name: str, *, tail: int = 200, base_url: str | None = None, timeout: int = 60) -> str:
    """The last ``tail`` lines of every task of the service (control characters escaped), within
    ``timeout`` seconds of socket silence."""
    return "".join(f"{line}\n" for _, line in service_log_lines(name, tail=tail, base_url=base_url, timeout=timeout))


def service_log_lines(name: str, *, tail: int = 200, base_url: str | None = None, timeout: int = 60) -> list[tuple[str, str]]:
    """``[(task id, line)]``: the last ``tail`` lines of each task of the service, in Swarm's order
    (control characters escaped), within ``timeout`` seconds of socket silence. Swarm's details
    (``com.docker.swarm.task.id=…`` before each line) say which task wrote it; a line without them
    has task id ""."""
    from mlportal_runtime.logsafe import escape_controls

    with connect(base_url, timeout=timeout) as client:
        try:
            raw = client.api.service_logs(name, stdout=True, stderr=True, tail=tail, timestamps=False, details=True)
        except docker.errors.NotFound:
            return []
        data = b"".join(raw) if not isinstance(raw, (bytes, bytearray)) else bytes(raw)
    lines = []
    for line in data.decode("utf-8", "replace").splitlines():
        task = ""
        head, _, rest = line.partition(" ")
        if head.startswith("com.docker.swarm."):
            details = dict(item.partition("=")[::2] for item in head.split(","))
            task, line = details.get("com.docker.swarm.task.id", ""), rest
        lines.append((task, escape_controls(line)))
    return lines


def list_services(*, portal: str | None = None, base_url: str | None = None) -> list[dict]:
    """``[{"id", "name", "labels"}]`` of the MLPortal services in the swarm (of one portal when given)."""
    filters = {"label": [f"{LABEL_KIND}=service"] + ([f"{LABEL_PORTAL}={portal}"] if portal else [])}
    with connect(base_url) as client:
        services = client.api.services(filters=filters)
    return [{"id": s["ID"], "name": s["Spec"]["Name"], "labels": s["Spec"].get("Labels") or {}} for s in services]


def remove_service(name: str, *, portal: str, base_url: str | None = None) -> bool:
    """Removes the Swarm service ``name`` (its tasks stop) and its secrets when it is ``portal``'s
    (its ``mlportal.portal`` label): two portals on one swarm may hold a service of the same name
    (a portal restored from another's backup has the same service ids), and another portal's is
    never touched. Returns whether one was removed; a missing one is fine."""
    if not portal:
        raise ValueError("remove_service needs the portal: it never removes another portal's service")
    with connect(base_url) as client:
        try:
            service = client.api.inspect_service(name)
        except docker.errors.NotFound:
            return False
        labels = (service.get("Spec") or {}).get("Labels") or {}
        if labels.get(LABEL_PORTAL) != portal:
            return False
        try:
            client.api.remove_service(service["ID"])
        except docker.errors.NotFound:
            pass
    if labels.get(LABEL_ID):
        remove_secrets(labels[LABEL_ID], portal=portal, keep=(), base_url=base_url)
    return True


def remove_secrets(service_id: str, *, portal: str, keep: tuple[str, ...] | list[str],
                   base_url: str | None = None) -> list[str]:
    """Removes the secrets labelled with this service's id and ``portal`` (both: service ids are
    only unique within one portal) except ``keep``; a secret a task still uses stays (removed on a
    later call). Returns the names removed."""
    if not portal or not service_id:
        raise ValueError("remove_secrets needs a service id and the portal: it never removes another portal's secrets")
    removed = []
    with connect(base_url) as client:
        for secret in client.api.secrets(filters={"label": [f"{LABEL_ID}={service_id}", f"{LABEL_PORTAL}={portal}"]}):
            labels = (secret.get("Spec") or {}).get("Labels") or {}
            name = secret["Spec"]["Name"]
            if name in keep or labels.get(LABEL_ID) != service_id or labels.get(LABEL_PORTAL) != portal:
                continue
            try:
                client.api.remove_secret(secret["ID"])
                removed.append(name)
            except docker.errors.APIError as exc:
                if exc.status_code not in (400, 404, 409, 500):  # in use, or gone meanwhile
                    raise
    return removed
