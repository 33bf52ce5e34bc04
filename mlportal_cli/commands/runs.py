"""`run list|show|logs|download|cancel|compare`, and the lab-era `history list|info|last|download`.

A run is named by its id, by its number in the project (`3`, `#3`, `churn_prediction#3`), or by
`last` (the project's newest run).
"""
from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path, PurePosixPath

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.folder import human_size
from mlportal_cli.output import Result, columns
from mlportal_runtime.logsafe import escape_controls

POLL_SECONDS = 0.5
QUIET_NOTICE_SECONDS = 15  # while a run prints nothing (queued behind others, a long step), say so this often
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_NUMBER = re.compile(r"^(?:(?P<project>.+?)\s*#|#)?(?P<number>\d+)$")


def duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def metrics_text(run: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in sorted((run.get("metrics") or {}).items()))


RUN_COLUMNS = columns(("ID", "id"), ("Run", "name"), ("Script", lambda r: r.get("script") or f"({r.get('kind')})"),
                      ("Target", "target"), ("Status", "status"), ("Duration", lambda r: duration(r.get("duration_s"))),
                      ("Started", lambda r: r.get("started_at") or r.get("created_at")), ("Metrics", metrics_text))


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value or ""))


def _project_filter(ctx: Context) -> str | None:
    """The project whose runs a command means: --project, else the linked folder's, else all."""
    if ctx.arg("project"):
        return ctx.arg("project")
    linked = ctx.linked_project()
    return (linked.get("project_id") or linked["project"]) if linked else None


def resolve_run(ctx: Context, ref: str | None) -> dict:
    """The run `ref` names (its detail JSON); CliError naming what to give when it names none."""
    ref = (ref or "").strip()
    if not ref:
        raise CliError("name the run: its id, its number in the project (e.g. 3 or churn_prediction#3), or 'last'")
    if is_uuid(ref):
        return ctx.client.get(f"runs/{ref}/")
    project = _project_filter(ctx)
    if ref == "last":
        params = {"ordering": "-created_at", "kind": "script"}
        if project:
            params["project"] = project
        items, _ = ctx.client.list("runs/", params=params, limit=1)
        if not items:
            raise CliError("no runs yet" + (" in this project" if project else "") +
                           ": submit one with 'mlportal experiment submit -c docker SCRIPT'")
        return ctx.client.get(f"runs/{items[0]['id']}/")
    match = _NUMBER.match(ref)
    if not match:
        raise CliError(f"'{ref}' is not a run: give its id, its number in the project (e.g. 3 or "
                       "churn_prediction#3), or 'last'")
    number = int(match.group("number"))
    project = match.group("project") or project
    linked = ctx.link[1] if ctx.link else {}
    label = linked.get("project") if project == linked.get("project_id") else project
    if not project:
        raise CliError(f"run number {number} of which project? Run this inside a project folder, add --project NAME, "
                       f"or write it as <project>#{number}")
    items, _ = ctx.client.list("runs/", params={"project": project, "q": f"#{number}"}, limit=200)
    found = [r for r in items if r.get("number") == number]
    if not found:
        raise CliError(f"project {label} has no run #{number}")
    return ctx.client.get(f"runs/{found[0]['id']}/")


def follow_run(ctx: Context, run: dict) -> int:
    """Streams the run's log to stdout as it is written until the run ends; returns 0 when it
    completed, raises CliError with its status and reason otherwise."""
    run_id = run["id"]
    offset, last = 0, "\n"
    started = quiet_since = time.monotonic()
    while True:
        body = ctx.client.get_patiently(f"runs/{run_id}/log/", params={"offset": offset}, say=ctx.progress)
        text = body.get("text") or ""
        now = time.monotonic()
        if text:
            ctx.out.write(escape_controls(text))
            ctx.out.flush()
            last = text[-1]
            quiet_since = now
        elif now - quiet_since >= QUIET_NOTICE_SECONDS:
            ctx.progress(f"… the run is {body.get('status')} ({now - started:.0f} s)")
            quiet_since = now
        offset = body.get("offset", offset)
        if body.get("done"):
            break
        if not text:
            time.sleep(POLL_SECONDS)
    if last != "\n":
        ctx.out.write("\n")
        ctx.out.flush()
    final = ctx.client.get_patiently(f"runs/{run_id}/", say=ctx.progress)
    label = final.get("name") or run_id
    if final.get("status") == "completed":
        metrics = metrics_text(final)
        ctx.progress(f"Run {label} completed in {duration(final.get('duration_s'))}" + (f": {metrics}" if metrics else "") + ".")
        return 0
    reason = final.get("status_reason") or (f"exit code {final['exit_code']}" if final.get("exit_code") is not None else "")
    raise CliError(f"run {label} {str(final.get('status')).replace('_', ' ')}" + (f": {reason}" if reason else ""))


# --- commands -------------------------------------------------------------------------------------

def run_list(ctx: Context):
    project = _project_filter(ctx)
    # A named project decides the workspace; otherwise the list is the current workspace's.
    params = {"ordering": ctx.arg("orderby") or "-created_at", "workspace": None if project else ctx.list_workspace()}
    for key, value in (("project", project), ("status", ctx.arg("status")), ("script", ctx.arg("script")),
                       ("target", ctx.arg("target")), ("q", ctx.arg("search")), ("filter", ctx.arg("filter"))):
        if value:
            params[key] = value
    params = {k: v for k, v in params.items() if v}
    items, total = ctx.client.list("runs/", params=params, limit=ctx.arg("top"))
    cols = RUN_COLUMNS
    chosen = [p.strip() for p in (ctx.arg("params") or "").split(",") if p.strip()]
    if chosen:
        cols = RUN_COLUMNS[:-1] + columns(*[(f"param {n}", (lambda n: lambda r: (r.get("params") or {}).get(n, ""))(n))
                                            for n in chosen]) + RUN_COLUMNS[-1:]
    return Result(items, cols, total)


def _key_values(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"write each {what} as KEY=VALUE, e.g. team=churn (got {pair!r})")
        out[key.strip()] = value
    return out


def run_tag(ctx: Context):
    """Sets KEY=VALUE tags (and removes --delete KEY ones) on a run."""
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    tags = _key_values(ctx.arg("tags"), "tag")
    delete = ctx.arg("delete") or []
    if not tags and not delete:
        raise CliError("give tags as KEY=VALUE (e.g. team=churn) or --delete KEY")
    data = ctx.client.patch(f"runs/{run['id']}/", json={"tags": tags, "delete_tags": delete})
    ctx.progress(f"Run {data.get('name')} tags: " + (", ".join(f"{k}={v}" for k, v in sorted(data.get("tags", {}).items())) or "none"))
    return Result(data)


def run_note(ctx: Context):
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    text = ctx.arg("text")
    if text == "-":
        import sys

        text = sys.stdin.read()
    data = ctx.client.patch(f"runs/{run['id']}/", json={"note": text or ""})
    ctx.progress(f"Run {data.get('name')}: note {'saved' if text else 'cleared'}.")
    return Result(data)


def run_params(ctx: Context):
    """Shows a run's params, or logs KEY=VALUE ones (a name logged before must keep its value)."""
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    new = _key_values(ctx.arg("set"), "param")
    if new:
        run = ctx.client.post(f"runs/{run['id']}/params/", json={"params": new})
    rows = [{"name": k, "value": v} for k, v in sorted((run.get("params") or {}).items())]
    return Result(rows, columns(("Param", "name"), ("Value", "value")))


def run_show(ctx: Context, *, ref: str | None = None):
    run = resolve_run(ctx, ref or ctx.arg("run_ref") or ctx.arg("run_opt"))
    outputs, _ = ctx.client.list(f"runs/{run['id']}/outputs/", limit=500)
    run["outputs"] = [{"path": o["path"], "size": o["size"]} for o in outputs]
    return Result(run)


def history_last(ctx: Context):
    return run_show(ctx, ref="last")


def run_logs(ctx: Context):
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    if ctx.arg("follow"):
        return follow_run(ctx, run)
    response = ctx.client.request("GET", f"runs/{run['id']}/log.txt", stream=True, headers={"Accept": "*/*"})
    with response:
        last = "\n"
        for chunk in response.iter_content(chunk_size=64 * 1024, decode_unicode=False):
            text = chunk.decode("utf-8", errors="replace")
            if text:
                ctx.out.write(escape_controls(text))
                last = text[-1]
        if last != "\n":
            ctx.out.write("\n")
    ctx.out.flush()
    return 0


def _default_dir(ctx: Context) -> Path:
    """Downloads land in the project's root folder when inside a linked one (the lab: place
    model.pkl in the project's root), else in the current folder."""
    if ctx.arg("dir"):
        return (ctx.cwd / ctx.arg("dir")).resolve()
    link = ctx.link
    return link[0] if link else ctx.cwd


def _safe_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise CliError(f"refusing to write output {path!r} outside the download folder")
    return rel


def download_to(ctx: Context, api_path: str, target: Path, *, label: str) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with open(partial, "wb") as handle:
            size = ctx.client.download(api_path, handle)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    ctx.progress(f"Downloaded {label} ({human_size(size)}) to {target}")
    return size


def run_download(ctx: Context):
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    dest = _default_dir(ctx)
    wanted = ctx.arg("path")
    done = []
    if wanted:
        rel = wanted[len("outputs/"):] if wanted.startswith("outputs/") else wanted
        rel = _safe_relative(rel).as_posix()
        target = dest / PurePosixPath(rel).name
        size = download_to(ctx, f"runs/{run['id']}/outputs/{urllib.parse.quote(rel)}", target, label=f"outputs/{rel}")
        done.append({"path": f"outputs/{rel}", "file": str(target), "size": size})
    else:
        outputs, _ = ctx.client.list(f"runs/{run['id']}/outputs/")
        if not outputs:
            raise CliError(f"run {run.get('name') or run['id']} has no outputs (a script writes them under outputs/)")
        for output in outputs:
            rel = _safe_relative(output["path"])
            target = dest.joinpath("outputs", *rel.parts)
            size = download_to(ctx, f"runs/{run['id']}/outputs/{urllib.parse.quote(rel.as_posix())}", target,
                               label=f"outputs/{rel}")
            done.append({"path": f"outputs/{rel}", "file": str(target), "size": size})
    return Result(done, columns(("Output", "path"), ("Saved as", "file"), ("Size", lambda r: human_size(r["size"]))))


def run_cancel(ctx: Context):
    run = resolve_run(ctx, ctx.arg("run_ref") or ctx.arg("run_opt"))
    data = ctx.client.post(f"runs/{run['id']}/cancel/")
    ctx.progress(f"Run {data.get('name')} is {data.get('status')}.")
    return Result(data)


def run_compare(ctx: Context):
    refs = ctx.arg("runs") or []
    if len(refs) < 2:
        raise CliError("name 2 to 10 runs to compare, e.g. 'mlportal run compare 1 2'")
    runs = [resolve_run(ctx, ref) for ref in refs]
    data = ctx.client.get("runs/compare/", params={"ids": ",".join(r["id"] for r in runs)})
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(data)
    names = [r.get("name") or r["id"] for r in data["runs"]]
    rows = []
    for row in data["properties"]:
        rows.append({"what": row["name"], "values": row["values"], "differs": row["differs"]})
    for row in data.get("params", []):
        rows.append({"what": f"param: {row['name']}", "values": row["values"], "differs": row["differs"]})
    for row in data.get("tags", []):
        rows.append({"what": f"tag: {row['name']}", "values": row["values"], "differs": row["differs"]})
    for row in data["metrics"]:
        rows.append({"what": f"metric: {row['name']}", "values": row["values"], "differs": row["differs"]})
    for row in data["outputs"]:
        rows.append({"what": f"output: {row['path']}", "differs": row["differs"],
                     "values": [f"{human_size(c['size'])} {c['sha256'][:12]}" if c else "—" for c in row["cells"]]})
    cols = columns(("", "what"), *[(name, (lambda i: lambda r: r["values"][i])(i)) for i, name in enumerate(names)],
                   ("Differs", lambda r: "*" if r["differs"] else ""))
    return Result(rows, cols)


def _run_ref(parser, *, required: bool = True) -> None:
    parser.add_argument("run_ref", nargs="?", metavar="RUN",
                        help="the run: its id, its number (3, #3, churn_prediction#3) or 'last'")
    parser.add_argument("-r", "--run", dest="run_opt", metavar="RUN", help="the run (same as RUN)")
    parser.add_argument("--project", metavar="PROJECT", help="the project of a run number (default: the linked folder's)")


def register(subparsers) -> None:
    run = add_group(subparsers, "run", help="Experiment runs: list, show, logs, download outputs, cancel, compare.")
    _register_runs(run, "mlportal run")
    history = add_group(subparsers, "history", help="The lab's run history (aliases of 'run' commands).")
    parser = add_command(history, "list", help="List runs (as 'run list').", example="mlportal history list -o table",
                         func=run_list)
    _list_options(parser)
    parser = add_command(history, "info", help="Show a run (as 'run show').", example="mlportal history info -r 3",
                         func=run_show)
    _run_ref(parser)
    parser = add_command(history, "last", help="Show the project's newest run.", example="mlportal history last",
                         func=history_last)
    parser.add_argument("--project", metavar="PROJECT", help="the project (default: the linked folder's)")
    parser = add_command(history, "download", help="Download a run's outputs (as 'run download').",
                         example="mlportal history download -r 3 --path outputs/model.pkl", func=run_download)
    _run_ref(parser)
    _download_options(parser)


def _list_options(parser) -> None:
    parser.add_argument("--project", metavar="PROJECT", help="only this project's runs (default: the linked folder's)")
    parser.add_argument("--status", help="only runs in this status (queued, running, completed, failed, …; comma-separated)")
    parser.add_argument("--script", help="only runs of this script")
    parser.add_argument("--target", choices=("docker", "local", "external"), help="only runs on this compute target")
    parser.add_argument("--filter", metavar="FILTER",
                        help='filter string, e.g. \'metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"\'')
    parser.add_argument("--params", metavar="NAMES", help="comma-separated param names to show as columns")
    parser.add_argument("--search", metavar="TEXT", help="search scripts and project names (#3 finds run 3)")
    parser.add_argument("--orderby", metavar="FIELD",
                        help="order by a column (default -created_at), a metric ('-metric:DTree Accuracy'), "
                             "a param ('param:max_depth') or a tag ('tag:team')")
    parser.add_argument("--top", type=int, default=50, metavar="N", help="show at most N runs (default 50)")


def _download_options(parser) -> None:
    parser.add_argument("--path", metavar="PATH", help="one output, e.g. outputs/model.pkl: saved as DIR/model.pkl "
                                                       "(default: all outputs, under DIR/outputs/)")
    parser.add_argument("-d", "--dir", metavar="DIR", help="where to save (default: the project's root folder, else here)")


def _register_runs(sub, prefix: str) -> None:
    parser = add_command(sub, "list", help="List runs, newest first, with their metrics.",
                         example=f"{prefix} list --status completed --orderby '-metric:DTree Accuracy'", func=run_list)
    _list_options(parser)
    parser = add_command(sub, "show", help="Show a run: status, duration, metrics, outputs.",
                         example=f"{prefix} show last\n{prefix} show 3 -o json --query metrics", func=run_show)
    _run_ref(parser)
    parser = add_command(sub, "logs", help="Print a run's log (-f follows it while it runs).",
                         example=f"{prefix} logs last -f", func=run_logs)
    _run_ref(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    parser = add_command(sub, "download", help="Download a run's outputs (the lab: model.pkl into the project folder).",
                         example=f"{prefix} download last --path outputs/model.pkl", func=run_download)
    _run_ref(parser)
    _download_options(parser)
    parser = add_command(sub, "cancel", help="Cancel a queued or running run.", example=f"{prefix} cancel last",
                         func=run_cancel)
    _run_ref(parser)
    parser = add_command(sub, "tag", help="Set (or --delete) tags of a run, during or after it.",
                         example=f"{prefix} tag last team=churn stage=baseline\n{prefix} tag 3 --delete stage", func=run_tag)
    _run_ref(parser)
    parser.add_argument("tags", nargs="*", metavar="KEY=VALUE", help="tags to set")
    parser.add_argument("--delete", action="append", metavar="KEY", help="a tag to remove (repeatable)")
    parser = add_command(sub, "note", help="Write (or clear) the note of a run.",
                         example=f"{prefix} note last --text 'baseline with depth 4'", func=run_note)
    _run_ref(parser)
    parser.add_argument("--text", default="", help="the note (empty clears it; '-' reads it from stdin)")
    parser = add_command(sub, "params", help="Show a run's params, or log more with --set KEY=VALUE.",
                         example=f"{prefix} params last\n{prefix} params 3 --set seed=7", func=run_params)
    _run_ref(parser)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a param to log (repeatable)")
    parser = add_command(sub, "compare", help="Compare 2 to 10 runs: properties, metrics, outputs side by side.",
                         example=f"{prefix} compare 1 2 3", func=run_compare)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="the runs (ids or numbers)")
    parser.add_argument("--project", metavar="PROJECT", help="the project of run numbers (default: the linked folder's)")
