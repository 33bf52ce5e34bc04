"""`env setup|list|show|set|delete` and `service create|list|show|logs|keys|usage|update|traffic|promote|abort|limits|delete|run realtime`.

`service create realtime` is the lab's one-shot: register the model, create the manifest, build the
image, start the service; it shows each step as it happens and ends with the lab's `Usage for
cmd:` and `Usage for curl:` lines.
"""
from __future__ import annotations

import json
import os
import shlex
import time
import urllib.parse
from contextlib import ExitStack

from mlportal_cli.client import ApiError, CliError
from mlportal_cli.commands.registry import follow_image_log, image_failed
from mlportal_cli.context import Context, UsageError, add_command, add_group
from mlportal_cli.output import Result, columns
from mlportal_runtime.logsafe import escape_controls

WAIT_POLL_SECONDS = 1.0
NOTICE_SECONDS = 10  # while waiting on a service, say where it stands this often
SETTLED = ("healthy", "unhealthy", "failed", "deleted")


def _engine(env: dict) -> str:
    """What the portal's workers last saw of the engine, and how long ago."""
    engine = env.get("engine") or {}
    ago = engine.get("checked_seconds_ago")
    when = f", checked {ago} s ago" if ago is not None else ""
    if engine.get("ok"):
        return (f"ok (Docker {engine.get('version')}{when})" if engine.get("version") else f"ok{when and ' (' + when[2:] + ')'}")
    if engine.get("error"):
        since = engine.get("answered_at")
        return f"unreachable{' since ' + since if since else ''}: {engine.get('error')}{when}"
    return "not checked yet" if engine.get("ok") is None and "checked_at" in engine else "unknown"


ENV_COLUMNS = columns(("Name", "name"), ("Kind", "kind"), ("Active", lambda r: "*" if r.get("active") else ""),
                      ("Engine", _engine), ("Engine URL", lambda r: r.get("engine_url") or "(the workers' own)"),
                      ("Services", lambda r: len(r.get("services") or [])), ("Workspace", "workspace"),
                      ("Created", "created_at"))
SERVICE_COLUMNS = columns(("Name", "name"), ("Status", "status"), ("Environment", "environment"), ("Image", "image"),
                          ("Replicas", "replicas"), ("Scoring URL", "scoring_url"), ("Created by", "created_by"),
                          ("Updated", "updated_at"))


def _list(ctx: Context, path: str, cols, extra: dict | None = None) -> Result:
    params = {"workspace": ctx.list_workspace(), "search": ctx.arg("search"), "ordering": ctx.arg("orderby"),
              **(extra or {})}
    items, total = ctx.client.list(path, params={k: v for k, v in params.items() if v}, limit=ctx.arg("top"))
    return Result(items, cols, total)


# --- environments ---------------------------------------------------------------------------------

def env_setup(ctx: Context):
    body = {"name": ctx.arg("name"), "kind": "cluster" if ctx.arg("cluster") else "local",
            "engine_url": ctx.arg("engine_url") or "", "description": ctx.arg("description") or ""}
    if ctx.arg("init_swarm"):
        if not ctx.arg("cluster"):
            raise UsageError("--init-swarm goes with --cluster")
        body["init_swarm"] = True
    if ctx.arg("publish_address"):
        body["publish_address"] = ctx.arg("publish_address")
    env = ctx.client.post("environments/", body)
    if env.get("notice"):  # e.g. that --init-swarm made the engine a single-node swarm manager, and how hosts join
        ctx.note(env["notice"])
    ctx.progress(f"Created environment {env['name']} ({env['kind']}; engine {_engine(env)}). "
                 f"Make it your active one with 'mlportal env set -n {env['name']}'.")
    return Result(env)


def env_list(ctx: Context):
    return _list(ctx, "environments/", ENV_COLUMNS)


def env_show(ctx: Context):
    if ctx.arg("name"):
        return Result(ctx.client.get(f"environments/{ctx.arg('name')}/"))
    return Result(ctx.client.get("environments/active/"))


def env_set(ctx: Context):
    env = ctx.client.post(f"environments/{ctx.arg('name')}/activate/")
    ctx.progress(f"Active environment: {env['name']} (services you create go there).")
    return Result(env)


def env_delete(ctx: Context):
    ctx.client.delete(f"environments/{ctx.arg('name')}/")
    ctx.progress(f"Deleted environment {ctx.arg('name')}.")
    return 0


# --- services -------------------------------------------------------------------------------------

def service_ref(ctx: Context) -> str:
    """The service named with -i/--id or -n/--name (or, as a convenience, in place of `realtime`)."""
    kind = ctx.arg("kind")
    ref = ctx.arg("service") or ctx.arg("service_name")
    if kind and kind != "realtime":
        if ref:
            raise UsageError(f"unknown service kind {kind!r}: use realtime")
        ref = kind
    if not ref:
        raise UsageError("name the service with -i NAME")
    return ref


def _path(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _wait(ctx: Context, service: dict, *, until, timeout: float | None, doing: str) -> dict:
    """Polls the service until `until(service)` holds; None when it is gone (404)."""
    started = noticed = time.monotonic()
    deadline = started + timeout if timeout else None
    while not until(service):
        now = time.monotonic()
        if now - noticed >= NOTICE_SECONDS:
            ctx.progress(f"… {service['name']} is {service['status']} ({now - started:.0f} s)")
            noticed = now
        if deadline and now > deadline:
            raise CliError(f"service {service['name']} is still {service['status']} after {timeout:.0f} s of {doing}; "
                           f"see 'mlportal service show realtime -i {service['name']}'")
        time.sleep(WAIT_POLL_SECONDS)
        try:
            service = ctx.client.get_patiently(f"services/{service['id']}/", say=ctx.progress)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
    return service


def _print_usage(ctx: Context, service: dict) -> dict:
    usage = ctx.client.get(f"services/{service['id']}/usage/")
    if ctx.fmt != "json" and not ctx.arg("query"):
        ctx.out.write(f"Usage for cmd: {usage['cli']}\n")
        # Built here from the parts, so the line always carries the header names.
        headers = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in (usage.get("headers") or {}).items())
        body = shlex.quote(json.dumps(usage.get("sample_body")))
        ctx.out.write(f"Usage for curl: curl -X POST {shlex.quote(usage['scoring_url'])} {headers} -d {body}\n")
        ctx.out.write(f"(the curl line needs a key: 'mlportal service keys realtime -i {service['name']}')\n")
        ctx.out.flush()
    return usage


def service_create(ctx: Context):
    if ctx.arg("kind") not in (None, "realtime"):
        raise UsageError(f"unknown service kind {ctx.arg('kind')!r}: use 'service create realtime'")
    if ctx.arg("runtime") != "python":
        raise CliError(f"runtime {ctx.arg('runtime')!r} is not available: use -r python")
    paths = {}
    for field, option, value in (("model_file", "--model-file", ctx.arg("model_file")), ("score_file", "-f", ctx.arg("score")),
                                 ("schema_file", "-s", ctx.arg("schema")), ("requirements_file", "-p", ctx.arg("requirements"))):
        if value:
            path = (ctx.cwd / value).resolve()
            if not path.is_file():
                raise CliError(f"{option} {value}: no such file")
            paths[field] = path
    if "requirements_file" not in paths and ctx.link and (ctx.link[0] / "requirements.txt").is_file():
        # As az ml took the project's dependencies from its folder, so does this: the lab's line
        # has no -p, and score.py needs what the project's runs needed.
        paths["requirements_file"] = ctx.link[0] / "requirements.txt"
        ctx.note(f"the service gets the project's requirements.txt ({paths['requirements_file']}); -p FILE picks another")
    data = {"name": ctx.arg("service_name"), "runtime": "python"}
    for key in ("model_name", "environment", "replicas", "cpus", "memory_mb"):
        if ctx.arg(key) is not None:
            data[key] = str(ctx.arg(key))
    if ctx.arg("request_timeout") is not None:
        data["request_timeout_s"] = str(_request_timeout(ctx))
    if ctx.arg("confirm_unknown"):
        data["confirm_unknown"] = "true"
    data.update({k: str(v) for k, v in _autoscale_given(ctx).items()})
    names = {"score_file": "score.py", "schema_file": "service_schema.json", "requirements_file": "requirements.txt"}
    ctx.progress(f"Creating service {data['name']}: register the model, create the manifest, build the image, "
                 "start the service.")
    with ExitStack() as stack:
        files = {field: (names.get(field, path.name), stack.enter_context(open(path, "rb")))
                 for field, path in paths.items()}
        service = ctx.client.post("services/create-realtime/", data=data, files=files, timeout=600)
    if service.get("notice"):
        ctx.note(service["notice"])
    if ctx.arg("no_wait"):
        return Result(service)
    steps = {step["step"]: step for step in service.get("steps") or []}
    if "register" in steps:
        ctx.progress(f"[1/4] Registered model {steps['register']['ref']} ({steps['register']['id']})")
    ctx.progress(f"[2/4] Created manifest {steps['manifest']['ref']} ({steps['manifest']['id']})")
    image = steps["image"]
    ctx.progress(f"[3/4] Building image {image['ref']} ({image['id']}); its build log follows …")
    built = follow_image_log(ctx, {"id": image["id"]})
    if built.get("status") != "succeeded":
        raise image_failed(built)
    ctx.progress(f"[3/4] Built image {built['ref']} in {built.get('build_seconds') or 0:.1f}s: {built.get('tag')}")
    ctx.progress(f"[4/4] Starting service {service['name']} in environment {service.get('environment')} …")
    service = _wait(ctx, service, until=lambda s: s["status"] in SETTLED, timeout=ctx.arg("timeout"), doing="starting")
    if service is None or service["status"] != "healthy":
        reason = (service or {}).get("error") or "see 'mlportal service logs realtime -i NAME'"
        raise CliError(f"service {ctx.arg('service_name')} {(service or {}).get('status', 'is gone')}: {reason}")
    ctx.progress(f"[4/4] Service {service['name']} is healthy ({service['replicas']} replica"
                 f"{'s' if service['replicas'] != 1 else ''}); scoring URL {service.get('scoring_url')}")
    usage = _print_usage(ctx, service)
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result({**service, "usage": usage})
    return 0


def service_list(ctx: Context):
    if ctx.arg("kind") not in (None, "realtime"):
        raise UsageError(f"unknown service kind {ctx.arg('kind')!r}: use realtime")
    return _list(ctx, "services/", SERVICE_COLUMNS, extra={"status": ctx.arg("status"), "environment": ctx.arg("environment")})


def service_show(ctx: Context):
    return Result(ctx.client.get(f"services/{_path(service_ref(ctx))}/"))


def service_logs(ctx: Context):
    logs = ctx.client.get(f"services/{_path(service_ref(ctx))}/logs/", params={"tail": ctx.arg("tail")})
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(logs)
    ctx.out.write(escape_controls(logs.get("text") or ""))  # the portal escapes too; an older one may not
    return 0


def service_keys(ctx: Context):
    ref = _path(service_ref(ctx))
    if ctx.arg("regenerate"):
        service = ctx.client.post(f"services/{ref}/regenerate-key/", {"key": ctx.arg("regenerate")})
        ctx.progress(f"Regenerating the {ctx.arg('regenerate')} key: the replicas restart with it, one at a time …")
        service = _wait(ctx, service, until=lambda s: s["status"] != "updating", timeout=ctx.arg("timeout"),
                        doing="changing keys")
        if service and service.get("last_update_error"):
            raise CliError(f"the key change failed: {service['last_update_error']}")
    return Result(ctx.client.get(f"services/{ref}/keys/"))


def service_usage(ctx: Context):
    service = ctx.client.get(f"services/{_path(service_ref(ctx))}/")
    usage = _print_usage(ctx, service)
    return Result(usage) if ctx.fmt == "json" or ctx.arg("query") else 0


def service_export(ctx: Context):
    """Writes the service as deployment files for another platform (Kubernetes: Secret, Deployment,
    Service, HorizontalPodAutoscaler) to stdout or --file."""
    response = ctx.client.request("GET", f"services/{_path(service_ref(ctx))}/export/",
                                  params={"format": ctx.arg("export_format")})
    target = ctx.arg("file")
    if not target:
        ctx.out.write(response.text)
        ctx.out.flush()
        return 0
    partial = f"{target}.part"
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(response.text)
        os.replace(partial, target)
    except OSError as exc:
        if os.path.exists(partial):
            os.unlink(partial)
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    ctx.progress(f"Wrote {target} (the Secret in it holds the service's keys). Apply it with: kubectl apply -f {target}")
    return 0


AUTOSCALE_ARGS = ("autoscale_enabled", "autoscale_min_replicas", "autoscale_max_replicas", "autoscale_target_utilization",
                  "autoscale_refresh_seconds", "autoscale_stable_seconds")


def _autoscale_given(ctx: Context) -> dict:
    return {name: ctx.arg(name) for name in AUTOSCALE_ARGS if ctx.arg(name) is not None}


def _describe_autoscale(settings: dict, replicas: int) -> str:
    if not settings.get("enabled"):
        return f"autoscaling off ({replicas} replica{'s' if replicas != 1 else ''})"
    return (f"autoscaling {settings['min_replicas']}-{settings['max_replicas']} replicas at {settings['target_utilization']}% "
            f"of scoring workers busy (refresh {settings['refresh_seconds']} s, scale down after "
            f"{settings['stable_seconds']} s); {replicas} now")


def _request_timeout(ctx: Context) -> float | None:
    """--request-timeout as the API takes it: seconds, or None for "default"."""
    raw = str(ctx.arg("request_timeout")).strip()
    if raw.lower() == "default":
        return None
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"--request-timeout takes seconds (e.g. 30 or 2.5) or 'default', not {raw!r}") from None


def service_update(ctx: Context):
    ref = _path(service_ref(ctx))
    if _autoscale_given(ctx):
        if any(ctx.arg(c) is not None for c in ("image", "replicas", "rollback", "capture", "capture_percent")):
            raise UsageError("change autoscaling on its own: --autoscale-* without --image-id, -z, --rollback or --capture")
        answer = ctx.client.post(f"services/{ref}/autoscale/", _autoscale_given(ctx))
        ctx.progress(f"Service {service_ref(ctx)}: {_describe_autoscale(answer['settings'], answer['replicas'])}.")
        return Result(answer["settings"])
    if ctx.arg("capture") is not None or ctx.arg("capture_percent") is not None:
        if any(ctx.arg(c) is not None for c in ("image", "replicas", "rollback")):
            raise UsageError("change the data capture on its own: --capture / --capture-percent without --image-id, -z or --rollback")
        capture = {}
        if ctx.arg("capture") is not None:
            capture["mode"] = ctx.arg("capture")
        if ctx.arg("capture_percent") is not None:
            capture["percent"] = ctx.arg("capture_percent")
        service = ctx.client.patch(f"services/{ref}/", {"capture": capture})
        now = service["capture"]
        ctx.progress(f"Service {service['name']}: data capture {now['mode']}"
                     + (f" at {now['percent']:g}% of requests" if now["mode"] != "off" else "")
                     + " (running replicas take it at the next collection; no redeploy).")
        return Result(service)
    if (ctx.arg("canary") is not None or ctx.arg("shadow") is not None) and ctx.arg("image") is None:
        raise UsageError("--canary and --shadow go with --image IMAGE (the new revision's image)")
    changes = [c for c in ("image", "replicas", "rollback", "request_timeout") if ctx.arg(c) is not None]
    if len(changes) != 1:
        raise UsageError("say what to change, one at a time: --image-id IMAGE, -z/--replicas N, --rollback REVISION "
                         "or --request-timeout SECONDS")
    if ctx.arg("image") is not None and (ctx.arg("canary") is not None or ctx.arg("shadow") is not None):
        body = {"image": ctx.arg("image"), "canary": ctx.arg("canary"), "shadow": ctx.arg("shadow"),
                "bake_seconds": ctx.arg("bake")}
        service = ctx.client.post(f"services/{ref}/update/", {k: v for k, v in body.items() if v is not None})
        mode = "canary" if ctx.arg("canary") is not None else "shadow"
        if ctx.arg("no_wait"):
            return Result(service)
        ctx.progress(f"Service {service['name']}: starting a {mode} of image {ctx.arg('image')} beside the live revision …")
        service = _wait(ctx, service, until=lambda s: (s.get("rollout") or {}).get("status") != "starting",
                        timeout=ctx.arg("timeout"), doing=f"starting the {mode}")
        if service is None:
            raise CliError("the service was deleted meanwhile")
        rollout = service.get("rollout") or {}
        if rollout.get("status") != "running":
            raise CliError(service.get("last_update_error") or f"the {mode} did not start")
        ctx.progress(f"{mode.capitalize()} revision {rollout['revision']} gets {rollout['weight']}% of requests"
                     f"{' (mirrored)' if mode == 'shadow' else ''}; then: mlportal service promote -n {service['name']} "
                     f"or mlportal service abort -n {service['name']}.")
        return Result(service)
    if ctx.arg("image") is not None:
        service = ctx.client.post(f"services/{ref}/update/", {"image": ctx.arg("image")})
        doing = f"moving to image {ctx.arg('image')}"
    elif ctx.arg("replicas") is not None:
        service = ctx.client.post(f"services/{ref}/scale/", {"replicas": ctx.arg("replicas")})
        doing = f"scaling to {ctx.arg('replicas')} replicas"
    elif ctx.arg("request_timeout") is not None:
        seconds = _request_timeout(ctx)
        service = ctx.client.patch(f"services/{ref}/", {"request_timeout_s": seconds})
        limit = "the portal's default" if seconds is None else f"{seconds:g} s"
        doing = f"restarting the replicas with a request time limit of {limit}"
    else:
        service = ctx.client.post(f"services/{ref}/rollback/", {"revision": ctx.arg("rollback")})
        doing = f"rolling back to revision {ctx.arg('rollback')}"
    if ctx.arg("no_wait"):
        return Result(service)
    ctx.progress(f"Service {service['name']}: {doing} (no downtime: the old replicas serve until the new ones are ready) …")
    service = _wait(ctx, service, until=lambda s: s["status"] in SETTLED, timeout=ctx.arg("timeout"), doing=doing)
    if service is None:
        raise CliError("the service was deleted meanwhile")
    if service.get("last_update_error"):
        raise CliError(f"{doing} failed, service {service['name']} still serves image {service['image']}: "
                       f"{service['last_update_error']}")
    ctx.progress(f"Service {service['name']} is {service['status']} on image {service['image']} with "
                 f"{service['replicas']} replica{'s' if service['replicas'] != 1 else ''}.")
    return Result(service)


TRAFFIC_COLUMNS = columns(
    ("Revision", "number"), ("Image", "image"), ("Role", "role"), ("Weight %", "weight"), ("Replicas", "replicas"),
    ("Requests (1 h)", lambda r: r["last_hour"]["requests"]), ("Errors", lambda r: r["last_hour"]["errors"]),
    ("p50 ms", lambda r: _ms(r["last_hour"]["p50_ms"])), ("p95 ms", lambda r: _ms(r["last_hour"]["p95_ms"])),
    ("Agreement %", lambda r: "" if r["last_hour"]["agreement"] is None else f"{r['last_hour']['agreement']:.1f}"))


def _ms(value) -> str:
    return "" if value is None else f"{value:g}"


def service_traffic(ctx: Context):
    ref = _path(service_ref(ctx))
    if ctx.arg("weight") is not None:
        traffic = ctx.client.post(f"services/{ref}/traffic/", {"weight": ctx.arg("weight")})
    else:
        traffic = ctx.client.get(f"services/{ref}/traffic/")
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(traffic)
    rows = [r for r in traffic["revisions"] if r["serving"] or r["last_hour"]["requests"]]
    return Result(rows, TRAFFIC_COLUMNS, len(rows))


def _finish_rollout(ctx: Context, action: str):
    ref = _path(service_ref(ctx))
    service = ctx.client.post(f"services/{ref}/{action}/", {})
    rollout = service.get("rollout") or {}
    if ctx.arg("no_wait"):
        return Result(service)
    ctx.progress(f"Service {service['name']}: {'promoting' if action == 'promote' else 'aborting'} the {rollout.get('mode')} "
                 f"of revision {rollout.get('revision')} …")
    service = _wait(ctx, service, until=lambda s: not s.get("rollout"), timeout=ctx.arg("timeout"), doing=action)
    if service is None:
        raise CliError("the service was deleted meanwhile")
    ctx.progress(f"Service {service['name']} serves image {service['image']}.")
    return Result(service)


def service_promote(ctx: Context):
    return _finish_rollout(ctx, "promote")


def service_abort(ctx: Context):
    return _finish_rollout(ctx, "abort")


def service_limits(ctx: Context):
    ref = _path(service_ref(ctx))
    changes = {}
    for name in ("concurrency", "queue"):
        value = ctx.arg(name)
        if value is not None:
            changes[name] = None if value == "default" else value
    if changes:
        return Result(ctx.client.post(f"services/{ref}/limits/", changes))
    return Result(ctx.client.get(f"services/{ref}/limits/"))


def service_delete(ctx: Context):
    ref = _path(service_ref(ctx))
    service = ctx.client.delete(f"services/{ref}/")
    if ctx.arg("no_wait"):
        return Result(service)
    ctx.progress(f"Deleting service {service['name']} (its containers are stopped and removed) …")
    _wait(ctx, service, until=lambda s: s["status"] == "deleted", timeout=ctx.arg("timeout"), doing="deleting")
    ctx.progress(f"Deleted service {service['name']}.")
    return 0


def service_run(ctx: Context):
    name = service_ref(ctx)
    body = ctx.arg("data")
    if body is None:
        raise UsageError(f"give the request body with -d JSON (an example: 'mlportal service usage realtime -i {name}')")
    if body.startswith("@"):
        with open((ctx.cwd / body[1:]).resolve(), encoding="utf-8") as handle:
            body = handle.read()
    try:
        json.loads(body)
    except ValueError as exc:
        raise CliError(f"-d is not valid JSON ({exc}): in bash, put it in single quotes") from None
    keys = ctx.client.get(f"services/{_path(name)}/keys/")
    response = ctx.client.request(
        "POST", f"services/{_path(name)}/score", data=body.encode("utf-8"), workspace=False,
        headers={"Authorization": f"Bearer {keys['primary']}", "Content-Type": "application/json"},
    )
    text = response.content.decode("utf-8", errors="replace")
    ctx.out.write(text if text.endswith("\n") else text + "\n")
    ctx.out.flush()
    return 0


# --- parser ---------------------------------------------------------------------------------------

def _service_args(parser) -> None:
    parser.add_argument("kind", nargs="?", metavar="realtime", help="the kind of service: realtime (may be left out)")
    parser.add_argument("-i", "--id", dest="service", metavar="NAME", help="the service (name or id)")
    parser.add_argument("-n", "--name", dest="service_name", metavar="NAME", help="the service (same as -i)")


def _timeout(parser) -> None:
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop waiting after SECONDS (default: wait)")


def _autoscale_options(parser) -> None:
    """Azure ML's autoscale flags (and the scale-down window)."""
    parser.add_argument("--autoscale-enabled", nargs="?", const="true", metavar="true|false",
                        help="scale replicas between min and max from how busy the scoring workers are")
    parser.add_argument("--autoscale-min-replicas", type=int, metavar="N", help="fewest replicas (default 1)")
    parser.add_argument("--autoscale-max-replicas", type=int, metavar="N", help="most replicas (default 10, at most MLPORTAL_MAX_REPLICAS)")
    parser.add_argument("--autoscale-target-utilization", type=int, metavar="PERCENT",
                        help="share of scoring workers busy to aim for, 1-100 (default 70)")
    parser.add_argument("--autoscale-refresh-seconds", type=int, metavar="SECONDS",
                        help="how often it decides, averaging over that window (default 1)")
    parser.add_argument("--autoscale-stable-seconds", type=int, metavar="SECONDS",
                        help="how long load must stay lower before it scales down (default 60)")


def register(subparsers) -> None:
    env = add_group(subparsers, "env", help="Environments where services run: setup, list, show, set, delete.")
    parser = add_command(env, "setup", help="Create an environment (a Docker engine the workers can reach).",
                         example="mlportal env setup -n staging -l eastus2 -g my-rg\n"
                                 "mlportal env setup -n remote --engine-url tcp://10.0.0.5:2376",
                         func=env_setup)
    parser.add_argument("-n", "--name", required=True, help="the environment's name, e.g. staging")
    parser.add_argument("--engine-url", metavar="URL", help="a tcp:// or ssh:// Docker engine (default: the workers' own)")
    parser.add_argument("--publish-address", metavar="ADDRESS", help="where service ports are published (default 127.0.0.1)")
    parser.add_argument("--cluster", action="store_true",
                        help="a Docker Swarm: the engine (default the workers' own, or --engine-url) of a swarm manager")
    parser.add_argument("--init-swarm", action="store_true",
                        help="with --cluster: make the engine a single-node swarm manager first when it is in no swarm")
    parser.add_argument("-d", "--description", help="a description")
    parser = add_command(env, "list", help="List environments (* marks your active one).",
                         example="mlportal env list -o table", func=env_list)
    parser.add_argument("--search", metavar="TEXT", help="only environments matching TEXT")
    parser.add_argument("--orderby", metavar="FIELD", help="name, kind or created_at ('-' for descending)")
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N (default 100)")
    parser = add_command(env, "show", help="Show an environment (default: your active one).",
                         example="mlportal env show\nmlportal env show -n staging", func=env_show)
    parser.add_argument("-n", "--name", help="the environment (default: your active one)")
    parser = add_command(env, "set", help="Make an environment your active one: services you create go there.",
                         example="mlportal env set -n staging -g my-rg", func=env_set)
    parser.add_argument("-n", "--name", required=True, help="the environment")
    parser = add_command(env, "delete", help="Delete an environment (owner; refused while services run in it).",
                         example="mlportal env delete -n staging", func=env_delete)
    parser.add_argument("-n", "--name", required=True, help="the environment")

    service = add_group(subparsers, "service", help="Realtime scoring services: create (the lab's one-shot), run, "
                                                    "list, show, logs, keys, usage, update, delete.")
    parser = add_command(service, "create", help="Register the model, create the manifest, build the image and start "
                                                 "the service, in one go.",
                         example="mlportal service create realtime -n churnpred --model-file model.pkl -f score.py "
                                 "-r python -s service_schema.json", func=service_create)
    parser.add_argument("kind", nargs="?", metavar="realtime", help="the kind of service: realtime")
    parser.add_argument("-n", "--name", dest="service_name", required=True, metavar="NAME", help="the service's name")
    parser.add_argument("--model-file", "-m", dest="model_file", required=True, metavar="FILE",
                        help="the model file, e.g. model.pkl")
    parser.add_argument("-f", "--score-file", dest="score", required=True, metavar="FILE", help="score.py (init() and run())")
    parser.add_argument("-s", "--schema-file", dest="schema", required=True, metavar="FILE", help="service_schema.json")
    parser.add_argument("-r", "--runtime", default="python", help="python (the only runtime)")
    parser.add_argument("-p", "--requirements", "--pip-requirements", dest="requirements", metavar="FILE",
                        help="requirements.txt of score.py")
    parser.add_argument("--model-name", metavar="NAME", help="register the model under NAME (default: the file's name)")
    parser.add_argument("--confirm-unknown", action="store_true",
                        help="take the model file even if its scan finds unknown globals or cannot finish")
    parser.add_argument("--environment", metavar="ENV", help="where to run it (default: your active environment)")
    parser.add_argument("-z", "--replicas", type=int, metavar="N", help="number of replicas (default 1)")
    parser.add_argument("--cpus", type=float, help="CPU limit per replica (default 1)")
    parser.add_argument("--memory-mb", type=int, metavar="MB", help="memory limit per replica (default 1024)")
    _autoscale_options(parser)
    parser.add_argument("--request-timeout", metavar="SECONDS",
                        help="how long one scoring request may run before it answers 504 (default: the portal's, 60 s)")
    parser.add_argument("--no-wait", action="store_true", help="return once the service is recorded")
    _timeout(parser)

    parser = add_command(service, "run", help="Score: send JSON to the service through the portal; prints the answer.",
                         example="mlportal service run realtime -i churnpred -d '{\"input_df\": [{...}]}'\n"
                                 "mlportal service run realtime -i churnpred -d @sample_request.json",
                         func=service_run)
    _service_args(parser)
    parser.add_argument("-d", "--data", metavar="JSON", help="the request body, or @FILE to read it from a file")

    parser = add_command(service, "list", help="List services.", example="mlportal service list realtime -o table",
                         func=service_list)
    parser.add_argument("kind", nargs="?", metavar="realtime", help="the kind of service: realtime (may be left out)")
    parser.add_argument("--status", help="only services in this status (healthy, failed, …)")
    parser.add_argument("--environment", metavar="ENV", help="only services in this environment")
    parser.add_argument("--search", metavar="TEXT", help="only services matching TEXT")
    parser.add_argument("--orderby", metavar="FIELD", help="name, status, created_at, updated_at or replicas")
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N (default 100)")

    parser = add_command(service, "show", help="Show a service: status, replicas, steps, revisions, events.",
                         example="mlportal service show realtime -i churnpred", func=service_show)
    _service_args(parser)
    parser = add_command(service, "logs", help="Print the last lines of each replica's container log.",
                         example="mlportal service logs realtime -i churnpred --tail 50", func=service_logs)
    _service_args(parser)
    parser.add_argument("--tail", type=int, default=200, metavar="N", help="lines per replica (default 200)")
    parser = add_command(service, "keys", help="Show the service's keys (or regenerate one).",
                         example="mlportal service keys realtime -i churnpred\n"
                                 "mlportal service keys realtime -i churnpred --regenerate secondary",
                         func=service_keys)
    _service_args(parser)
    parser.add_argument("--regenerate", choices=("primary", "secondary"), help="replace this key first")
    _timeout(parser)
    parser = add_command(service, "usage", help="How to call the service: the CLI and curl lines.",
                         example="mlportal service usage realtime -i churnpred", func=service_usage)
    _service_args(parser)
    parser = add_command(service, "update", help="Move to another image, scale, or roll back, without downtime.",
                         example="mlportal service update realtime -i churnpred --image-id churnpred:2\n"
                                 "mlportal service update realtime -i churnpred -z 2\n"
                                 "mlportal service update realtime -i churnpred --rollback 1\n"
                                 "mlportal service update -n churnpred --request-timeout 5\n"
                                 "mlportal service update -n churnpred --image churnpred:2 --canary 10\n"
                                 "mlportal service update -n churnpred --image churnpred:2 --shadow 20",
                         func=service_update)
    _service_args(parser)
    parser.add_argument("--image-id", "--image", dest="image", metavar="IMAGE",
                        help="the image to serve (name:version, id or tag)")
    parser.add_argument("-z", "--replicas", type=int, metavar="N", help="scale to N replicas")
    parser.add_argument("--rollback", type=int, metavar="REVISION", help="serve the image of an earlier revision again")
    parser.add_argument("--request-timeout", metavar="SECONDS",
                        help="how long one scoring request may run before it answers 504 ('default': the portal's); "
                             "the replicas restart with it")
    parser.add_argument("--capture", choices=("off", "inputs", "predictions", "both"),
                        help="capture what the service receives and/or answers (model data collection)")
    parser.add_argument("--capture-percent", type=float, metavar="PERCENT", help="share of requests to capture, 0-100")
    parser.add_argument("--canary", metavar="PERCENT", help="with --image: start it beside the live revision, answering PERCENT (1-99) of requests")
    parser.add_argument("--shadow", metavar="PERCENT", help="with --image: mirror PERCENT (1-99) of requests to it; its answers are dropped")
    parser.add_argument("--bake", metavar="SECONDS", help="the canary's bake period (default 300): rolled back automatically if it does worse")
    _autoscale_options(parser)
    parser.add_argument("--no-wait", action="store_true", help="return once the change is queued")
    _timeout(parser)
    parser = add_command(service, "export", help="Write the service as Kubernetes objects (Deployment, Service, Secret, HPA).",
                         example="mlportal service export -n churnpred --format kubernetes > churnpred.yaml\n"
                                 "mlportal service export -n churnpred --format kubernetes --file churnpred.yaml",
                         func=service_export)
    _service_args(parser)
    parser.add_argument("--format", dest="export_format", choices=("kubernetes",), required=True,
                        help="what to write: kubernetes (YAML for kubectl apply)")
    parser.add_argument("--file", metavar="FILE", help="write to FILE instead of stdout")
    parser = add_command(service, "traffic", help="The revisions serving, their weights and last hour (or change the canary's weight).",
                         example="mlportal service traffic -n churnpred\nmlportal service traffic -n churnpred --weight 30",
                         func=service_traffic)
    _service_args(parser)
    parser.add_argument("--weight", metavar="PERCENT", help="give the running canary PERCENT (1-99) of requests")
    for verb, text in (("promote", "The canary (or shadow) revision takes all traffic; the old replicas stop."),
                       ("abort", "Back to the live revision; the canary's (or shadow's) replicas stop.")):
        parser = add_command(service, verb, help=text, example=f"mlportal service {verb} -n churnpred",
                             func=service_promote if verb == "promote" else service_abort)
        _service_args(parser)
        parser.add_argument("--no-wait", action="store_true", help="return once it is queued")
        _timeout(parser)
    parser = add_command(service, "limits", help="Show or set the gateway's limits: requests at once and waiting "
                                                 "(past both, callers get 503 with Retry-After).",
                         example="mlportal service limits -n churnpred\n"
                                 "mlportal service limits -n churnpred --concurrency 8 --queue 16\n"
                                 "mlportal service limits -n churnpred --concurrency default",
                         func=service_limits)
    _service_args(parser)
    parser.add_argument("--concurrency", metavar="N", help="requests answered at once ('default' for the portal's)")
    parser.add_argument("--queue", metavar="N", help="requests that may wait for a slot ('default' for the portal's)")
    from mlportal_cli.commands import monitoring

    monitoring.register(service)
    parser = add_command(service, "delete", help="Delete a service and its containers (owner).",
                         example="mlportal service delete realtime -i churnpred", func=service_delete)
    _service_args(parser)
    parser.add_argument("--no-wait", action="store_true", help="return once the deletion is queued")
    _timeout(parser)
