"""How fast the autoscaler adds a replica under load: the time from the start of a load that needs a
second replica to that replica serving, for the churn image, with the replica timeline.

    .venv/bin/python benchmarks/autoscale.py [--clients 8] [--seconds 40] [--json out.json]

A whole portal for the run (SQLite database and kombu's filesystem broker in a temporary folder):
the ASGI server with the gateway (as ``make run`` starts it), one Celery worker (builds, deploys
and the autoscaler's ticks) and the lab's churn service made with the one-shot create
(``autoscale_enabled``, min 1, max 2, target 70 %, refresh 1 s). Then ``--clients`` threads score
through the portal's URL back to back; the figure is the time from the first request to the first
answer carrying ``X-MLPortal-Replica: 2``. The timeline lists when the autoscaler decided (its
event), when the service's replica count changed, and when replica 2 first answered.

Goal: at most 15 s. The churn service's replicas get 1 CPU (one scoring worker each), so a
saturated replica is 100 % busy; on a loaded 2-core machine, say so next to the figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common  # noqa: E402
from benchmarks import gateway as gateway_bench  # noqa: E402
from benchmarks import serving  # noqa: E402

GOAL_SECONDS = 15.0
SETUP = '''
import json, sys
from django.contrib.auth import get_user_model
from workspaces.services import token_create, workspace_create
user = get_user_model().objects.create_user(username="bench", password=None)
workspace_create(name="bench", user=user)
_, secret = token_create(user=user, name="bench")
print(json.dumps({"token": secret}))
'''


def api(base: str, token: str, method: str, path: str, body: dict | None = None, *, files: dict | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if files is not None:
        boundary = "mlportal-bench-boundary"
        parts = []
        for name, value in (body or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, data) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    else:
        data = json.dumps(body).encode() if body is not None else None
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def worker(work: Path) -> subprocess.Popen:
    log = open(work / "worker.log", "w")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "mlportal", "worker", "-Q", "builds,deploy,celery",
                             "-c", "3", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
                            cwd=common.REPO, env=gateway_bench.portal_env(work), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="threads scoring back to back")
    parser.add_argument("--seconds", type=float, default=40, help="the most the load runs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "loadavg_start": common.loadavg(), "clients": args.clients}
    work = Path(tempfile.mkdtemp(prefix="mlportal-bench-autoscale-"))
    processes = []
    service_id = None
    try:
        common.log("making the portal's database (SQLite, for this run)")
        gateway_bench.manage(work, "migrate", "--noinput", "-v0")
        script = work / "setup.py"
        script.write_text(SETUP)
        done = subprocess.run([sys.executable, "-c", "import django, runpy, sys; django.setup(); runpy.run_path(sys.argv[1])",
                               str(script)], cwd=common.REPO, env=gateway_bench.portal_env(work), capture_output=True,
                              text=True, timeout=120, check=True)
        token = json.loads(done.stdout.strip().splitlines()[-1])["token"]
        common.log("training the churn model (the template's own script)")
        app, input_name, record = common.prepare_churn(work)
        processes.append(worker(work))
        with gateway_bench.portal_server(work, None) as port:
            base = f"http://127.0.0.1:{port}/api/v1/"
            files = {"model_file": ("model.pkl", (app / "model.pkl").read_bytes()),
                     "score_file": ("score.py", (app / "score.py").read_bytes()),
                     "schema_file": ("service_schema.json", (app / "service_schema.json").read_bytes()),
                     "requirements_file": ("requirements.txt", "\n".join(common.pinned_requirements()).encode())}
            fields = {"name": "churnauto", "runtime": "python", "cpus": "1", "autoscale_enabled": "true",
                      "autoscale_min_replicas": "1", "autoscale_max_replicas": "2", "autoscale_stable_seconds": "600"}
            common.log("creating the service (model, manifest, image build, deploy)")
            service = api(base, token, "POST", "services/create-realtime/", fields, files=files)
            service_id = service["id"]
            deadline = time.monotonic() + 1200
            while service["status"] not in ("healthy", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service is still {service['status']}")
                time.sleep(1)
                service = api(base, token, "GET", f"services/{service_id}/")
            if service["status"] != "healthy":
                raise RuntimeError(f"the service failed: {service['error']}")
            key = api(base, token, "GET", f"services/{service_id}/keys/")["primary"]
            body = json.dumps({input_name: [record]}).encode()
            time.sleep(3)  # a few idle samples first
            common.log(f"loading it with {args.clients} clients through the portal")
            results["loadavg_load"] = common.loadavg()
            timeline, figure = run_load(port, key, body, base, token, service_id, args)
            results.update(timeline)
            results["seconds_to_second_replica"] = figure
    finally:
        for process in processes:
            serving.stop_group(process)
        if service_id is not None:
            remove_containers(service_id)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        common.dump(args.json, results)
    print("\n".join(report(results)))
    return 0


def run_load(port: int, key: str, body: bytes, base: str, token: str, service_id: str, args) -> tuple[dict, float | None]:
    import http.client

    stop = threading.Event()
    first_answer: dict[str, float] = {}
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    started = time.monotonic()
    started_wall = time.time()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set() and time.monotonic() - started < args.seconds:
            try:
                connection.request("POST", "/api/v1/services/churnauto/score", body=body,
                                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
                response = connection.getresponse()
                response.read()
                replica = response.getheader("X-MLPortal-Replica") or ""
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status == 200 and replica not in first_answer:
                        first_answer[replica] = time.monotonic() - started
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock:
                    statuses[0] = statuses.get(0, 0) + 1
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    counts: list[tuple[float, int]] = []
    while time.monotonic() - started < args.seconds:
        replicas = api(base, token, "GET", f"services/{service_id}/")["replicas"]
        now = time.monotonic() - started
        if not counts or counts[-1][1] != replicas:
            counts.append((round(now, 2), replicas))
        with lock:
            if "2" in first_answer and now > first_answer["2"] + 2:
                break
        time.sleep(0.25)
    stop.set()
    for thread in threads:
        thread.join(timeout=40)
    load = api(base, token, "GET", f"services/{service_id}/autoscale/?minutes=10")
    from datetime import datetime

    decisions = [(round(datetime.fromisoformat(d["at"]).timestamp() - started_wall, 2), d["message"]) for d in load["decisions"]]
    # When the worker had the new replica ready (its scale's event), between the decision and the first answer.
    events = api(base, token, "GET", f"services/{service_id}/")["events"]
    decisions += [(round(datetime.fromisoformat(e["created_at"]).timestamp() - started_wall, 2), e["message"])
                  for e in events if e["message"].startswith("Scaled from")]
    decisions.sort()
    figure = first_answer.get("2")
    return {"replica_counts": counts, "first_answer_by_replica": {k: round(v, 2) for k, v in first_answer.items()},
            "statuses": {str(k): v for k, v in statuses.items()}, "decisions": decisions,
            "peak_utilization": max((s["utilization"] for s in load["samples"]), default=None)}, \
        (round(figure, 2) if figure is not None else None)


def remove_containers(service_id: str) -> None:
    from compute.engine import LABEL_ID
    from compute.runner import list_containers, remove_container

    for container in list_containers("service"):
        if container["labels"].get(LABEL_ID) == service_id:
            remove_container(container["id"])


def report(results: dict) -> list[str]:
    lines = [f"autoscale churn clients={results['clients']} loadavg_start={results['loadavg_start']} "
             f"loadavg_load={results.get('loadavg_load')}"]
    for at, replicas in results.get("replica_counts", []):
        lines.append(f"  t={at:6.2f} s  replicas={replicas}")
    for replica, at in sorted(results.get("first_answer_by_replica", {}).items()):
        lines.append(f"  t={at:6.2f} s  replica {replica} answered first")
    for at, message in results.get("decisions", []):
        lines.append(f"  t={at:6.2f} s  decision: {message}")
    lines.append(f"  answers by status: {results.get('statuses')}; peak utilisation {results.get('peak_utilization')}%")
    figure = results.get("seconds_to_second_replica")
    if figure is None:
        lines.append("autoscale churn seconds_to_second_replica=none (no second replica served within the load)")
    else:
        lines.append(f"autoscale churn seconds_to_second_replica={figure:.2f} goal={GOAL_SECONDS:g} "
                     f"ratio_to_goal={figure / GOAL_SECONDS:.2f}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
