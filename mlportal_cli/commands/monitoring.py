"""`mlportal service data / drift / ground-truth`: a service's captured model data, its drift
against a reference, and the ground truth joined with it (the service page's Data tab)."""
from __future__ import annotations

import os
import time
import urllib.parse

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, UsageError, add_command, common_options
from mlportal_cli.output import FORMATS, Result, columns
from mlportal_runtime.logsafe import escape_controls

DATA_FORMATS = (*FORMATS, "csv", "parquet")
POLL_SECONDS = 0.5


def _ref(ctx: Context) -> str:
    from mlportal_cli.commands.deployments import service_ref

    return urllib.parse.quote(service_ref(ctx), safe="")


def service_data(ctx: Context):
    """Prints the captured rows of [--since, --until): a table (the newest --top), JSON, CSV, or
    writes Parquet to --file."""
    fmt = ctx.arg("output") or "table"
    params = {"since": ctx.arg("since"), "until": ctx.arg("until")}
    if fmt in ("csv", "parquet"):
        params["output"] = fmt
        if ctx.arg("top"):
            params["limit"] = ctx.arg("top")
        response = ctx.client.request("GET", f"services/{_ref(ctx)}/data/", params=params)
        target = ctx.arg("file")
        if fmt == "parquet" and not target:
            raise UsageError("Parquet is binary: give --file FILE to write it to")
        if not target:
            ctx.out.write(response.text)
            ctx.out.flush()
            return 0
        partial = f"{target}.part"
        try:
            with open(partial, "wb") as handle:
                handle.write(response.content)
            os.replace(partial, target)
        except OSError as exc:
            raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        ctx.progress(f"Wrote {target}")
        return 0
    params["limit"] = ctx.arg("top") or 20
    body = ctx.client.get(f"services/{_ref(ctx)}/data/", params=params)
    rows = body["results"]
    if fmt != "table" or ctx.arg("query"):
        return Result(rows)
    shown = [c for c in (rows[0] if rows else {}) if c not in ("latency_ms",)][:8]
    ctx.note(f"{body['count']} rows (the newest; -o csv for every column, --top N for more)")
    return Result(rows, columns=columns(*[(c, c) for c in shown]))


def service_drift(ctx: Context):
    """Sets the reference (optional) and computes drift now; prints one line per feature."""
    ref = _ref(ctx)
    settings = {}
    if ctx.arg("reference_file"):
        project, _, path = ctx.arg("reference_file").partition(":")
        if not path:
            raise UsageError("--reference-file takes PROJECT:PATH, e.g. churn:data/CATelcoCustomerChurnTrainingSample.csv")
        settings.update(reference="file", project=project, path=path)
    if ctx.arg("reference_since") or ctx.arg("reference_until"):
        settings.update(reference="window", window_start=ctx.arg("reference_since"), window_end=ctx.arg("reference_until"))
    for option in ("feature_threshold", "share_threshold", "current_hours"):
        if ctx.arg(option) is not None:
            settings[option] = ctx.arg(option)
    if settings:
        ctx.client.patch(f"services/{ref}/drift/", settings)
    if ctx.arg("show"):
        body = ctx.client.get(f"services/{ref}/drift/")
        report = body["latest"]
        if report is None:
            raise CliError("no drift report yet: run `mlportal service drift -n NAME` to compute one")
    else:
        report = _check_now(ctx, ref)
    if ctx.fmt != "table" or ctx.arg("query"):
        return Result(report)
    verdict = "DRIFTED" if report["drifted"] else "no drift"
    ctx.note(f"{verdict}: {report['share_drifted']:.0%} of features drifted "
             f"({', '.join(report['drifted_features']) or 'none'}); {report['current_rows']} rows against {report['reference']}")
    return Result(report["features"], columns=columns(
        ("FEATURE", "name"), ("KIND", "kind"), ("SCORE", "score"), ("P-VALUE", "p_value"),
        ("DRIFTED", lambda f: "yes" if f["drifted"] else "no")))


def _check_now(ctx: Context, ref: str) -> dict:
    """Starts a drift check on the portal's worker and follows it to its report (or its error)."""
    job = ctx.client.post(f"services/{ref}/drift/", {"since": ctx.arg("since"), "until": ctx.arg("until")})
    said = None
    while not job["done"]:
        line = "waiting for the portal's worker" if job["status"] == "queued" else f"{job['step']} ({job['progress']:.0%})"
        if line != said:
            ctx.progress(f"Drift check {job['id']}: {escape_controls(line)}")
            said = line
        time.sleep(POLL_SECONDS)
        job = ctx.client.get_patiently(job["url"].removeprefix("/api/v1/"), say=ctx.progress)
    if job["status"] != "succeeded":
        raise CliError(f"drift check {job['id']} failed: {job['error']}")
    return job["report"]


def service_ground_truth(ctx: Context):
    """Uploads labels (--file CSV of request_id,label) and prints accuracy or MAE per day and version."""
    ref = _ref(ctx)
    if ctx.arg("file"):
        try:
            with open(ctx.arg("file"), "rb") as handle:
                answer = ctx.client.request("POST", f"services/{ref}/ground-truth/", files={"file": handle}).json()
        except OSError as exc:
            raise CliError(f"cannot read {ctx.arg('file')}: {exc.strerror or exc}") from None
        ctx.progress(f"{answer['stored']} labels stored; {answer['unknown']} match no captured request yet")
    report = ctx.client.get(f"services/{ref}/ground-truth/")
    if ctx.fmt != "table" or ctx.arg("query"):
        return Result(report)
    metric = report.get("metric") or "accuracy"
    return Result(report["by_day"], columns=columns(("DAY", "day"), ("MODEL VERSION", "model_version"), ("N", "n"),
                                                    (metric.upper(), metric)))


def register(service) -> None:
    """Adds the commands to the `service` group."""
    from mlportal_cli.commands.deployments import _service_args

    parser = add_command(service, "data", help="The captured rows of a service (inputs, predictions), newest last.",
                         example="mlportal service data -n churnpred --since 2026-12-01\n"
                                 "mlportal service data -n churnpred --since 2026-12-01T10:00Z -o csv > rows.csv\n"
                                 "mlportal service data -n churnpred -o parquet --file rows.parquet",
                         func=service_data, common=common_options(DATA_FORMATS))  # -o csv / parquet too
    _service_args(parser)
    parser.add_argument("--since", metavar="TIME", help="from this ISO date or time (UTC unless it says)")
    parser.add_argument("--until", metavar="TIME", help="up to (not including) this ISO date or time")
    parser.add_argument("--top", type=int, metavar="N", help="at most the newest N rows")
    parser.add_argument("--file", metavar="FILE", help="write csv or parquet to FILE instead of stdout")

    parser = add_command(service, "drift", help="Compare the service's recent inputs with a reference, per feature.",
                         example="mlportal service drift -n churnpred --reference-file churn:data/CATelcoCustomerChurnTrainingSample.csv\n"
                                 "mlportal service drift -n churnpred\nmlportal service drift -n churnpred --show -o json",
                         func=service_drift)
    _service_args(parser)
    parser.add_argument("--reference-file", metavar="PROJECT:PATH", help="a data file of a project is the reference")
    parser.add_argument("--reference-since", metavar="TIME", help="a time window of capture is the reference: its start")
    parser.add_argument("--reference-until", metavar="TIME", help="… and its end")
    parser.add_argument("--since", metavar="TIME", help="the current data from this time (default: the last 24 hours)")
    parser.add_argument("--until", metavar="TIME", help="the current data up to this time (default: now)")
    parser.add_argument("--feature-threshold", metavar="SCORE", help="a feature drifts from this score (default 0.2)")
    parser.add_argument("--share-threshold", metavar="SHARE", help="the service drifts from this share of features (default 0.3)")
    parser.add_argument("--current-hours", metavar="N", help="the scheduled check compares the last N hours")
    parser.add_argument("--show", action="store_true", help="show the latest report instead of computing one")

    parser = add_command(service, "ground-truth", help="Send true labels (CSV request_id,label) and see live accuracy or MAE.",
                         example="mlportal service ground-truth -n churnpred --file labels.csv\n"
                                 "mlportal service ground-truth -n churnpred",
                         func=service_ground_truth)
    _service_args(parser)
    parser.add_argument("--file", metavar="CSV", help="upload these labels first (request_id,label per line)")
