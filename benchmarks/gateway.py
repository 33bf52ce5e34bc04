"""The portal's scoring URL against the container's own port and against nginx as a reverse proxy.

    .venv/bin/python benchmarks/gateway.py [--seconds 3] [--repeats 3] [--cases light,churn] [--json out.json]

One service container per case (light, churn: the serving benchmark's apps), pinned to the server
core, reached three ways side by side in one run:

- **container**: its published port, ``/score`` (the fastest path);
- **portal**: the portal's ASGI server (uvicorn, one process, the gateway in front of Django, as
  ``make run`` starts it) at ``/api/v1/services/<name>/score`` with the service key, on a SQLite
  portal database made for the run whose service row points at the container;
- **nginx** (Debian's package): a plain reverse proxy with a keep-alive upstream
  (``keepalive 32``, HTTP/1.1, ``Connection ""``), one worker process.

Both proxies run on the load core beside wrk (the container keeps its core to itself, as a
model's replicas would on their own host). ``wrk`` (one thread, keep-alive) runs at 1 and 16
connections, each target in turn, ``--repeats`` times; each figure is its best over the runs.

Ends with, per case: ``gateway light c=1 added_p50_ms=… nginx_added_p50_ms=…`` and
``gateway light c=16 throughput_ratio=… nginx_throughput_ratio=…``.
Goals: added p50 ≤ 1.0 ms at c=1, throughput ≥ 0.85× the container's at c=16.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import serving  # noqa: E402

CASES = ("light", "churn")
CONNECTIONS = (1, 16)
TARGETS = ("container", "portal", "nginx")
GOALS = {"added_p50_ms": 1.0, "throughput_ratio": 0.85}
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  upstream replica {{
    server {host}:{port};
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://replica;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

SETUP_SERVICE = '''
import json, sys
from django.contrib.auth import get_user_model
from deployments.models import Environment, Service, ServiceReplica, ServiceRevision
from registry.models import Image, Manifest
from workspaces.models import Workspace

name, host, port, container_id, tag = sys.argv[2:7]  # argv[1] is this script (run through python -c)
user, _ = get_user_model().objects.get_or_create(username="bench")
workspace, _ = Workspace.objects.get_or_create(name="bench", defaults={"created_by": user})
environment, _ = Environment.objects.get_or_create(workspace=workspace, name="local")
manifest = Manifest.objects.create(workspace=workspace, name=name, version=1, content_hash="0" * 64)
image = Image.objects.create(workspace=workspace, name=name, version=1, manifest=manifest, status="succeeded", tag=tag)
service = Service.objects.create(workspace=workspace, name=name, environment=environment, image=image, status="healthy",
                                 primary_key="bench-key-" + name, secondary_key="bench-key2-" + name, proxy_key="")
revision = ServiceRevision.objects.create(service=service, number=1, image=image, image_ref=image.ref, reason="create")
ServiceReplica.objects.create(service=service, number=1, container_id=container_id, host=host, port=int(port),
                              revision=revision)
print(json.dumps({"key": service.primary_key}))
'''


def portal_env(work: Path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": f"sqlite:///{work / 'portal.sqlite3'}", "MLPORTAL_DATA_DIR": str(work / "data"),
            "DJANGO_SETTINGS_MODULE": "mlportal.settings", "PYTHONPATH": str(common.REPO), "WEB_WORKERS": "1",
            "CELERY_BROKER_URL": f"filesystem://{work / 'broker'}"}


def manage(work: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(common.REPO / "manage.py"), *args], cwd=common.REPO, env=portal_env(work),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def add_service(work: Path, name: str, host: str, port: int, container_id: str) -> str:
    """Records a healthy service whose one replica is the bench container; returns its key."""
    script = work / "setup_service.py"
    script.write_text(SETUP_SERVICE)
    done = subprocess.run([sys.executable, "-c",
                           "import django, runpy, sys; django.setup(); runpy.run_path(sys.argv[1], run_name='__main__')",
                           str(script), name, host, str(port), container_id, f"bench/{name}:1"],
                          cwd=common.REPO, env=portal_env(work), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"could not record the bench service: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["key"]


@contextlib.contextmanager
def portal_server(work: Path, cpu: int | None) -> Iterator[int]:
    """The portal's ASGI server as `make run` starts it (one process, no access log), pinned to ``cpu``."""
    port = common.free_port()
    command = [str(Path(sys.executable).parent / "uvicorn"), "mlportal.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "gateway.server:GatewayHttpProtocol", "--lifespan", "on",
               "--no-access-log", "--timeout-keep-alive", "30"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log = open(work / "portal.log", "w")
    process = subprocess.Popen(command, cwd=common.REPO, env=portal_env(work), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        common.wait_http("127.0.0.1", port, "/login/", timeout_s=60, alive=lambda: process.poll() is None)
        yield port
    finally:
        serving.stop_group(process)
        log.close()


@contextlib.contextmanager
def nginx_server(work: Path, host: str, port: int, cpu: int | None) -> Iterator[int]:
    listen = common.free_port()
    folder = work / f"nginx-{port}"
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=folder, host=host, port=port, listen=listen))
    command = [NGINX, "-p", str(folder), "-c", str(conf)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = common.post_json("127.0.0.1", listen, "/health", b"")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(folder / 'nginx-error.log').read_text()[-500:] if (folder / 'nginx-error.log').exists() else process.stderr.read()}") from None
                time.sleep(0.1)
        yield listen
    finally:
        serving.stop_group(process)


def load(targets: dict[str, tuple[str, str]], *, seconds: float, warmup: float, repeats: int,
         load_cpu: int | None) -> dict[str, dict[int, dict]]:
    """targets: name → (url, wrk script). Warms each, then per connection count runs each in turn
    ``repeats`` times; keeps each one's best figures."""
    for url, script in targets.values():
        common.run_wrk(url=url, script=script, connections=max(CONNECTIONS), seconds=warmup, cpu=load_cpu)
    figures: dict[str, dict[int, dict]] = {name: {} for name in targets}
    for connections in CONNECTIONS:
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(repeats):
            for name, (url, script) in targets.items():
                runs[name].append(common.run_wrk(url=url, script=script, connections=connections, seconds=seconds,
                                                 cpu=load_cpu))
        for name in targets:
            figures[name][connections] = serving.best_of(runs[name])
    return figures


def ratios(load_figures: dict[str, dict[int, dict]]) -> dict[int, dict[str, float]]:
    """Per connection count: the added p50 (ms) and throughput ratio of the portal and of nginx
    against the container."""
    out = {}
    for connections in CONNECTIONS:
        base = load_figures["container"][connections]
        portal = load_figures["portal"][connections]
        nginx = load_figures["nginx"][connections]
        out[connections] = {
            "added_p50_ms": portal["p50"] - base["p50"], "nginx_added_p50_ms": nginx["p50"] - base["p50"],
            "throughput_ratio": common.ratio(portal["rps"], base["rps"]),
            "nginx_throughput_ratio": common.ratio(nginx["rps"], base["rps"]),
        }
    return out


def report(results: dict) -> list[str]:
    lines = [f"# gateway benchmark {results['date']}: container on core {results['server_cpu']}, portal/nginx/wrk on "
             f"core {results['load_cpu']}; best of {results['repeats']} x {results['seconds']:g} s; load {results['loadavg']}",
             f"{'case':6} {'c':>3} {'target':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    verdicts = []
    for case, result in results["cases"].items():
        for connections in CONNECTIONS:
            for target in TARGETS:
                figures = result["load"][target][connections]
                lines.append(f"{case:6} {connections:>3} {target:10} {figures['rps']:>9.1f} {figures['p50']:>8.2f} "
                             f"{figures['p99']:>8.2f}")
        values = result["ratios"]
        one, many = values[1], values[16]
        lines.append(common.ratio_line(f"gateway {case} c=1", added_p50_ms=one["added_p50_ms"],
                                       nginx_added_p50_ms=one["nginx_added_p50_ms"]))
        lines.append(common.ratio_line(f"gateway {case} c=16", throughput_ratio=many["throughput_ratio"],
                                       nginx_throughput_ratio=many["nginx_throughput_ratio"]))
        verdicts.append(f"{case}: added p50 {one['added_p50_ms']:.2f} ms (goal <= {GOALS['added_p50_ms']}: "
                        f"{'met' if one['added_p50_ms'] <= GOALS['added_p50_ms'] else 'MISSED'}), throughput "
                        f"{many['throughput_ratio']:.2f}x (goal >= {GOALS['throughput_ratio']}: "
                        f"{'met' if many['throughput_ratio'] >= GOALS['throughput_ratio'] else 'MISSED'})")
    return lines + ["# " + v for v in verdicts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 3)), help="per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per figure; the best figures are kept")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of 16-connection load before measuring")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the container's scoring server")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in common.PREPARE]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    if not Path(NGINX).exists():
        raise SystemExit("nginx is not installed: apt-get install nginx (scripts/install_system_packages.sh does)")

    server_cpu, load_cpu = common.server_and_load_cpus()
    common.log("preparing the environment image (built once per requirement set)")
    env_image = common.env_image()
    results: dict = {"server_cpu": server_cpu, "load_cpu": load_cpu, "seconds": args.seconds, "repeats": args.repeats,
                     "date": time.strftime("%Y-%m-%d"), "cases": {}, "loadavg": common.loadavg()}
    work = Path(tempfile.mkdtemp(prefix="mlportal-bench-gateway-"))
    try:
        common.log("making the portal's database (SQLite, for this run)")
        manage(work, "migrate", "--noinput", "-v0")
        with portal_server(work, load_cpu) as portal_port:
            for case in cases:
                common.log(f"{case}: preparing the model and app files")
                app, input_name, record = common.PREPARE[case](work)
                body = json.dumps({input_name: [record]}).encode()
                with serving.our_server(case, app, env_image=env_image, workers=args.workers, cpu=server_cpu) as url:
                    parts = urlsplit(url)
                    key = add_service(work, f"bench-{case}", parts.hostname, parts.port, f"bench-{case}")
                    portal_url = f"http://127.0.0.1:{portal_port}/api/v1/services/bench-{case}/score"
                    with nginx_server(work, parts.hostname, parts.port, load_cpu) as nginx_port:
                        nginx_url = f"http://127.0.0.1:{nginx_port}/score"
                        plain = common.wrk_script(body)
                        targets = {"container": (url, plain),
                                   "portal": (portal_url, common.wrk_script(body, {"Authorization": f"Bearer {key}"})),
                                   "nginx": (nginx_url, plain)}
                        deadline = time.monotonic() + 10  # the gateway reads new services every 0.5 s
                        while True:
                            status, answer = _post(portal_url, body, key)
                            if status == 200 or time.monotonic() > deadline:
                                break
                            time.sleep(0.2)
                        if status != 200:
                            raise RuntimeError(f"the portal answered {status}: {answer[:300]!r}")
                        if json.loads(answer) != json.loads(serving.answer(url, body)):
                            raise RuntimeError("the portal's answer differs from the container's")
                        common.log(f"{case}: loading the container, the portal and nginx in turn")
                        figures = load(targets, seconds=args.seconds, warmup=args.warmup, repeats=args.repeats,
                                       load_cpu=load_cpu)
                results["cases"][case] = {"load": figures, "ratios": ratios(figures)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        common.dump(args.json, results)
    print("\n".join(report(results)))
    return 0


def _post(url: str, body: bytes, key: str) -> tuple[int, bytes]:
    import http.client

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("POST", parts.path, body=body, headers={"Content-Type": "application/json",
                                                                   "Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
