"""`mlportal storage`: what each project, model and image uses, the workspace's retention, and
what it frees next (the Storage page); `storage retention …` sets it, `storage apply` applies it now."""
from __future__ import annotations

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.output import Result, columns

USAGE_COLUMNS = columns(("Kind", "kind"), ("Name", "name"), ("Size", "size"), ("Bytes", "bytes"), ("Detail", "detail"))
OPTIONS = {"runs_keep_days": "run_files_keep_days", "runs_keep_last": "run_files_keep_last",
           "images_keep_days": "unused_images_keep_days", "images_keep_last": "unused_images_keep_last",
           "capture_keep_days": "capture_keep_days"}


def human(size: int) -> str:
    value = float(size or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _rows(body: dict) -> list[dict]:
    rows = [{"kind": "project", "name": p["name"], "bytes": p["bytes"], "size": human(p["bytes"]),
             "detail": f"{p['runs']} runs; files {human(p['files_bytes'])}, outputs {human(p['outputs_bytes'])}, "
                       f"logs {human(p['logs_bytes'])}"} for p in body["projects"]]
    rows += [{"kind": "model", "name": m["name"], "bytes": m["bytes"], "size": human(m["bytes"]),
              "detail": f"{m['versions']} versions"} for m in body["models"]]
    rows += [{"kind": "image", "name": i["ref"], "bytes": i["bytes"], "size": human(i["bytes"]),
              "detail": ("used by " + ", ".join(i["services"])) if i["services"] else "no service uses it"}
             for i in body["images"]]
    rows += [{"kind": "environment image", "name": e["tag"], "bytes": e["bytes"], "size": human(e["bytes"]),
              "detail": f"last used {e['last_used_at']}" + ("; in use" if e["in_use"] else "")}
             for e in body.get("environment_images", [])]
    return rows


def storage_show(ctx: Context):
    body = ctx.client.get("storage/")
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(body)
    plan = body["next"]
    ctx.note(f"retention frees next: {plan['run_count']} runs' logs and outputs, {plan['image_count']} images, "
             f"{plan.get('environment_image_count', 0)} environment images ({human(plan['bytes'])})")
    return Result(_rows(body), USAGE_COLUMNS)


def storage_retention(ctx: Context):
    values = {}
    for option, field in OPTIONS.items():
        raw = ctx.arg(option)
        if raw is None:
            continue
        if str(raw).lower() in ("none", "forever", ""):
            values[field] = None
            continue
        try:
            values[field] = int(raw)
        except ValueError:
            raise CliError(f"--{option.replace('_', '-')} takes a whole number of days or runs/images, or 'none'") from None
    if not values:
        return Result(ctx.client.get("storage/")["retention"])
    return Result(ctx.client.patch("storage/retention/", json=values))


def storage_apply(ctx: Context):
    body = ctx.client.post("storage/apply/")
    plan = body["next"]
    ctx.note(f"applying retention on the maintenance worker: {plan['run_count']} runs, {plan['image_count']} images, "
             f"{human(plan['bytes'])}")
    return Result(plan)


def register(subparsers) -> None:
    sub = add_group(subparsers, "storage", help="What projects, models and images use; retention that frees storage.")
    subparsers.choices["storage"].set_defaults(func=storage_show)
    add_command(sub, "show", help="What each project, model and image uses, and what retention frees next.",
                example="mlportal storage show\nmlportal storage show -o json --query next", func=storage_show)
    parser = add_command(sub, "retention", help="Show or set the workspace's retention (owners set it).",
                         example="mlportal storage retention --runs-keep-days 30 --images-keep-last 3",
                         func=storage_retention)
    for option in OPTIONS:
        parser.add_argument(f"--{option.replace('_', '-')}", dest=option, metavar="N",
                            help="a whole number, or 'none' to keep for good")
    add_command(sub, "apply", help="Apply the retention now (owners).", example="mlportal storage apply",
                func=storage_apply)
