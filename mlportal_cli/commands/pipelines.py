"""`pipeline create|run|list|show`: retraining pipelines (a project's script re-run, a gate, the
service moved to the new model at the same URL and keys)."""
from __future__ import annotations

import time
import urllib.parse

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.output import Result, columns
from mlportal_runtime.logsafe import escape_controls

POLL_SECONDS = 1.0
FINISHED = ("succeeded", "failed", "skipped", "canceled")

PIPELINE_COLUMNS = columns(("Name", "name"), ("Project", "project"), ("Script", "script"), ("Service", "service"),
                           ("Gate", lambda r: r.get("gate") or ""), ("Mode", "mode"),
                           ("Last run", lambda r: f"#{r['last_run']['number']} {r['last_run']['status']}" if r.get("last_run") else ""),
                           ("Enabled", lambda r: "yes" if r.get("enabled") else "no"), ("ID", "id"))
RUN_COLUMNS = columns(("#", "number"), ("Status", "status"), ("Trigger", "trigger"), ("Model", lambda r: r.get("model") or ""),
                      ("Image", lambda r: r.get("image") or ""), ("Revision", lambda r: r.get("revision") or ""),
                      ("Started", lambda r: r.get("started_at") or ""), ("Reason", lambda r: r.get("reason") or ""),
                      ("ID", "id"))
STEP_COLUMNS = columns(("Step", "name"), ("Status", "status"),
                       ("Duration", lambda r: f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""),
                       ("Links", lambda r: ", ".join(f"{k} {v.get('label', v.get('name', ''))}" for k, v in (r.get("links") or {}).items())),
                       ("Last log line", lambda r: escape_controls((r.get("log") or "").strip().splitlines()[-1]) if r.get("log") else ""))


def _q(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _name(ctx: Context) -> str:
    name = ctx.arg("pipeline")
    if not name:
        raise CliError("name the pipeline with -n NAME")
    return name


def pipeline_create(ctx: Context):
    body = {"name": ctx.arg("pipeline"), "project": ctx.arg("project"), "script": ctx.arg("script"),
            "service": ctx.arg("service")}
    for key in ("gate", "output_path", "model_name", "target", "mode", "when_busy", "rollout", "canary_weight",
                "canary_bake_seconds", "requirements_path", "description"):
        if ctx.arg(key) is not None:
            body[key] = ctx.arg(key)
    if ctx.arg("register_only"):
        body["mode"] = "register_only"
    if ctx.arg("schedule"):
        body["schedule"] = ctx.arg("schedule")
    if ctx.arg("on_data"):
        body["trigger_on_data"] = True
    if ctx.arg("webhook"):
        body["webhook"] = True
    if ctx.arg("on_drift"):
        body["trigger_on_drift"] = True
    pipeline = ctx.client.post("pipelines/", body)
    ctx.progress(f"Created pipeline {pipeline['name']}: {pipeline['project']}/{pipeline['script']} → service "
                 f"{pipeline['service']}. Start it with 'mlportal pipeline run -n {pipeline['name']}'.")
    if pipeline.get("schedule"):
        ctx.progress(f"It also runs on the schedule '{pipeline['schedule']}' (UTC).")
    if pipeline.get("webhook_secret"):
        ctx.progress(f"Incoming webhook: POST {pipeline['webhook_url']} with X-MLPortal-Signature-256: "
                     f"sha256=<HMAC-SHA256(secret, body)>; secret (shown this once): {pipeline['webhook_secret']}")
    return Result(pipeline)


def pipeline_update(ctx: Context):
    body = {}
    for key in ("gate", "schedule", "output_path", "mode", "when_busy", "rollout", "script", "requirements_path"):
        if ctx.arg(key) is not None:
            body[key] = ctx.arg(key)
    for key, flag in (("trigger_on_data", "on_data"), ("trigger_on_drift", "on_drift"), ("enabled", "enabled")):
        if ctx.arg(flag) is not None:
            body[key] = ctx.arg(flag) == "on"
    if not body:
        raise CliError("say what to change, e.g. --gate \"DTree Accuracy >= served\" or --schedule \"0 3 * * *\"")
    pipeline = ctx.client.patch(f"pipelines/{_q(_name(ctx))}/", body)
    ctx.progress(f"Pipeline {pipeline['name']} saved.")
    return Result(pipeline)


def _follow(ctx: Context, prun: dict, timeout: float | None) -> dict:
    started = time.monotonic()
    said: dict[str, str] = {}
    while True:
        for step in prun.get("steps") or []:
            if said.get(step["name"]) != step["status"] and step["status"] != "pending":
                said[step["name"]] = step["status"]
                last = (step.get("log") or "").strip().splitlines()
                ctx.progress(f"[{step['position'] + 1}/6] {step['name']}: {step['status']}"
                             + (f" — {escape_controls(last[-1])}" if last else ""))
        if prun["status"] in FINISHED:
            return prun
        if timeout and time.monotonic() - started > timeout:
            raise CliError(f"pipeline run #{prun['number']} is still {prun['status']} after {timeout:.0f} s; "
                           f"see 'mlportal pipeline show -n {prun['pipeline']} --run {prun['number']}'")
        time.sleep(POLL_SECONDS)
        prun = ctx.client.get_patiently(f"pipeline-runs/{prun['id']}/", say=ctx.progress)


def pipeline_run(ctx: Context):
    prun = ctx.client.post(f"pipelines/{_q(_name(ctx))}/run/")
    if prun["status"] == "skipped":
        ctx.progress(f"Pipeline run #{prun['number']} skipped: {prun['reason']}")
        return Result(prun)
    ctx.progress(f"Pipeline run #{prun['number']} of {prun['pipeline']} is {prun['status']} ({prun['id']}).")
    if not ctx.arg("wait"):
        return Result(prun)
    prun = _follow(ctx, prun, ctx.arg("timeout"))
    if prun["status"] != "succeeded":
        raise CliError(f"pipeline run #{prun['number']} {prun['status']}: {prun.get('reason') or 'see its steps'}")
    ctx.progress(f"Pipeline run #{prun['number']} succeeded: {prun.get('model') or ''} "
                 f"{('serving as revision ' + str(prun['revision'])) if prun.get('revision') else ''}".strip())
    return Result(prun)


def pipeline_list(ctx: Context):
    params = {"workspace": ctx.list_workspace(), "search": ctx.arg("search")}
    items, total = ctx.client.list("pipelines/", params={k: v for k, v in params.items() if v}, limit=ctx.arg("top"))
    return Result(items, PIPELINE_COLUMNS, total)


def pipeline_show(ctx: Context):
    name = _name(ctx)
    number = ctx.arg("run")
    if number is None:
        if ctx.arg("runs"):
            items, total = ctx.client.list(f"pipelines/{_q(name)}/runs/", limit=ctx.arg("top"))
            return Result(items, RUN_COLUMNS, total)
        return Result(ctx.client.get(f"pipelines/{_q(name)}/"))
    pipeline = ctx.client.get(f"pipelines/{_q(name)}/")
    items, _ = ctx.client.list("pipeline-runs/", params={"pipeline": pipeline["id"]}, limit=1000)
    found = next((r for r in items if str(r["number"]) == str(number) or r["id"] == str(number)), None)
    if found is None:
        raise CliError(f"pipeline {name} has no run {number}")
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(found)
    ctx.progress(f"Pipeline run #{found['number']} of {found['pipeline']}: {found['status']}"
                 + (f" — {found['reason']}" if found.get("reason") else ""))
    return Result(found["steps"], STEP_COLUMNS, len(found["steps"]))


def register(subparsers) -> None:
    group = add_group(subparsers, "pipeline", help="Retraining pipelines: create, run, list, show.")
    parser = add_command(group, "create", help="Create a retraining pipeline: run a project's script, gate it, register "
                                              "the output and update the service.",
                         example='mlportal pipeline create -n churn-retrain --project churn_prediction '
                                 '--script CATelcoCustomerChurnModelingWithoutDprep.py --service churnpred '
                                 '--gate "DTree Accuracy >= served - 0.01"', func=pipeline_create)
    parser.add_argument("-n", "--name", dest="pipeline", required=True, metavar="NAME", help="the pipeline's name")
    parser.add_argument("--project", required=True, help="the project whose script runs")
    parser.add_argument("--script", required=True, help="the training script")
    parser.add_argument("--service", required=True, help="the service that moves to the new model")
    parser.add_argument("--gate", help='e.g. "DTree Accuracy >= served - 0.01" or "DTree Accuracy >= 0.8"')
    parser.add_argument("--output-path", dest="output_path", metavar="PATH", help="the run output to register (default outputs/model.pkl)")
    parser.add_argument("--model-name", metavar="NAME", help="the model to version (default: the one the service serves)")
    parser.add_argument("-c", "--target", help="compute target: docker or local (default: the project's)")
    parser.add_argument("--register-only", action="store_true", help="register the new version, don't deploy it")
    parser.add_argument("--when-busy", choices=["queue", "skip"], help="a trigger while a run is going: queue (default) or skip")
    parser.add_argument("--rollout", choices=["rolling", "canary"], help="rolling update (default) or canary with automatic rollback")
    parser.add_argument("--canary-weight", type=int, metavar="PERCENT", help="the canary's share (default 10)")
    parser.add_argument("--canary-bake-seconds", type=int, metavar="S", help="the canary's bake period (default 300)")
    parser.add_argument("--requirements", dest="requirements_path", metavar="PATH",
                        help="a project file replacing the served manifest's requirements.txt")
    parser.add_argument("--schedule", metavar="CRON", help='retrain on a schedule: "0 3 * * *" (UTC) or "every 6 hours"')
    parser.add_argument("--on-data", action="store_true", help="retrain when a file under the project's data/ changes")
    parser.add_argument("--on-drift", action="store_true", help="retrain when the service's drift detector signals drift")
    parser.add_argument("--webhook", action="store_true", help="give it an incoming webhook (its secret is printed once)")
    parser.add_argument("-d", "--description", help="a description")

    parser = add_command(group, "update", help="Change a pipeline's gate, schedule, triggers or mode (an empty value clears it).",
                         example='mlportal pipeline update -n churn-retrain --schedule "every 6 hours" --on-data on\n'
                                 'mlportal pipeline update -n churn-retrain --gate ""', func=pipeline_update)
    parser.add_argument("-n", "--name", dest="pipeline", required=True, metavar="NAME", help="the pipeline")
    parser.add_argument("--gate", help='the gate ("" for none)')
    parser.add_argument("--schedule", help='a cron line (UTC), "every N minutes", or "" for none')
    parser.add_argument("--script", help="the training script")
    parser.add_argument("--output-path", dest="output_path", metavar="PATH", help="the run output to register")
    parser.add_argument("--requirements", dest="requirements_path", metavar="PATH", help='a project file, or "" for the manifest\'s')
    parser.add_argument("--mode", choices=["deploy", "register_only"])
    parser.add_argument("--when-busy", choices=["queue", "skip"])
    parser.add_argument("--rollout", choices=["rolling", "canary"])
    parser.add_argument("--on-data", choices=["on", "off"], help="retrain when a file under data/ changes")
    parser.add_argument("--on-drift", choices=["on", "off"], help="retrain when the service's inputs drift")
    parser.add_argument("--enabled", choices=["on", "off"], help="automatic triggers on or off")

    parser = add_command(group, "run", help="Retrain now: start a pipeline run (--wait follows its steps).",
                         example="mlportal pipeline run -n churn-retrain --wait", func=pipeline_run)
    parser.add_argument("-n", "--name", dest="pipeline", required=True, metavar="NAME", help="the pipeline")
    parser.add_argument("--wait", action="store_true", help="follow the steps until the run ends")
    parser.add_argument("--timeout", type=float, metavar="S", help="with --wait, give up after S seconds")

    parser = add_command(group, "list", help="List pipelines.", example="mlportal pipeline list -o table", func=pipeline_list)
    parser.add_argument("--search", metavar="TEXT", help="only pipelines matching TEXT")
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N (default 100)")

    parser = add_command(group, "show", help="Show a pipeline, its runs (--runs) or one run's steps (--run N).",
                         example="mlportal pipeline show -n churn-retrain\nmlportal pipeline show -n churn-retrain --runs\n"
                                 "mlportal pipeline show -n churn-retrain --run 3", func=pipeline_show)
    parser.add_argument("-n", "--name", dest="pipeline", required=True, metavar="NAME", help="the pipeline")
    parser.add_argument("--runs", action="store_true", help="list its runs")
    parser.add_argument("--run", metavar="N", help="one run's steps (its number or id)")
    parser.add_argument("--top", type=int, default=50, metavar="N", help="with --runs, at most N (default 50)")
