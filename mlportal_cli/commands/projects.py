"""`project create|list|show|upload|download|settings` and `experiment prepare|submit`.

As with `az ml`, the current folder is the project: `project create` / `project download` write the
project's files into it and link it (`.mlportal/project.json`); inside a linked folder,
`experiment submit` uploads the folder's files as the run's snapshot, then submits.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mlportal_cli.client import CliError
from mlportal_cli.config import LINK_DIR, LINK_FILE, find_link, write_link
from mlportal_cli.context import Context, add_command, add_group, add_name
from mlportal_cli.folder import IGNORE_FILE, extract, human_size, pack, project_files
from mlportal_cli.output import Result, columns
from mlportal_cli.commands.runs import follow_run

PROJECT_COLUMNS = columns(("Name", "name"), ("Workspace", "workspace"), ("Template", "template"),
                          ("Target", "default_target"), ("Files", "file_count"), ("Created by", "created_by"),
                          ("Created", "created_at"))


def _folder(ctx: Context) -> Path:
    return (ctx.cwd / (ctx.arg("path") or ".")).resolve()


def _check_free(root: Path, project_name: str) -> None:
    """Refuses a folder that is (inside) the folder of another project, before anything is created."""
    link = find_link(root)
    if link and link[1].get("project") != project_name:
        raise CliError(f"{link[0]} is already the folder of project {link[1].get('project')}: use another folder "
                       f"(--path DIR) for project {project_name}")


def _download_into(ctx: Context, project: dict, root: Path) -> list[str]:
    """Writes the project's files into `root` and links it; returns the paths written."""
    root.mkdir(parents=True, exist_ok=True)
    ctx.progress(f"Downloading the files of project {project['name']} into {root} …")
    with tempfile.TemporaryFile() as archive:
        ctx.client.download(f"projects/{project['id']}/archive/", archive)
        archive.seek(0)
        written = extract(archive, root)
    write_link(root, server=ctx.client.url, workspace=project["workspace"], project=project["name"],
               project_id=project["id"])
    ctx.progress(f"Wrote {len(written)} files; {root} is now the folder of project {project['name']} "
                 f"(see {LINK_DIR}/{LINK_FILE}).")
    return written


def project_create(ctx: Context):
    root = _folder(ctx)
    _check_free(root, ctx.name)
    body = {"name": ctx.name, "description": ctx.arg("description") or ""}
    if ctx.arg("template"):
        body["template"] = ctx.arg("template")
    project = ctx.client.post("projects/", body)
    ctx.progress(f"Created project {project['name']} in workspace {project['workspace']}"
                 + (f" from template {project.get('template')}" if project.get("template") else "") + ".")
    project["folder"] = str(root)
    project["files"] = _download_into(ctx, project, root)
    return Result(project)


def project_download(ctx: Context):
    project = ctx.client.get(f"projects/{ctx.name}/")
    root = _folder(ctx)
    _check_free(root, project["name"])
    project["folder"] = str(root)
    project["files"] = _download_into(ctx, project, root)
    return Result(project)


def project_list(ctx: Context):
    params = {"workspace": ctx.list_workspace(), "search": ctx.arg("search"), "ordering": ctx.arg("orderby")}
    items, total = ctx.client.list("projects/", params={k: v for k, v in params.items() if v}, limit=ctx.arg("top"))
    return Result(items, PROJECT_COLUMNS, total)


def project_show(ctx: Context):
    ref = ctx.name or ctx.project_ref()
    project = ctx.client.get(f"projects/{ref}/")
    files, _ = ctx.client.list(f"projects/{project['id']}/files/", limit=500)
    project["files"] = [{"path": f["path"], "size": f["size"]} for f in files]
    link = ctx.link
    if link and link[1].get("project_id") == project["id"]:
        project["folder"] = str(link[0])
    return Result(project)


SETTINGS = (  # option dest, API field, type
    ("target", "default_target", str), ("time_limit", "time_limit_s", int), ("memory_mb", "memory_mb", int),
    ("cpus", "cpus", float), ("network", "allow_network", str), ("outputs_max_mb", "outputs_max_mb", int),
)
SETTINGS_COLUMNS = columns(("Name", "name"), ("Target", "default_target"), ("Time limit s", "time_limit_s"),
                           ("Memory MiB", "memory_mb"), ("CPUs", "cpus"), ("Network", "allow_network"),
                           ("Outputs cap MiB", "outputs_cap_mb"))


def project_settings(ctx: Context):
    """Shows the project's run settings, or changes those given (the Settings tab of its page)."""
    ref = ctx.name or ctx.project_ref()
    values = {}
    for option, field, kind in SETTINGS:
        raw = ctx.arg(option)
        if raw is None:
            continue
        if field == "allow_network":
            values[field] = raw == "on"
            continue
        try:
            values[field] = kind(raw)
        except ValueError:
            flag = "--" + option.replace("_", "-")
            raise CliError(f"{flag} takes a {'number' if kind is float else 'whole number'}, not {raw!r}") from None
    project = ctx.client.patch(f"projects/{ref}/", json=values) if values else ctx.client.get(f"projects/{ref}/")
    if values:
        ctx.progress(f"Saved {', '.join(sorted(values))} of project {project['name']}.")
    return Result(project, SETTINGS_COLUMNS)


def upload_folder(ctx: Context, *, project: str, root: Path, replace: bool = True) -> dict:
    """Uploads the folder's files (minus .mlportalignore's and the always-ignored folders) to the
    project; with `replace`, they become its only files (the run's snapshot). Returns the answer."""
    files = project_files(root, warn=ctx.note)
    if not files:
        raise CliError(f"{root} holds no files to upload (check {IGNORE_FILE})")
    with tempfile.TemporaryFile() as archive:
        size = pack(files, archive)
        archive.seek(0)
        ctx.progress(f"Uploading {len(files)} files ({human_size(size)}) from {root} …")
        answer = ctx.client.post(
            f"projects/{project}/upload/", data={"extract": "true", "replace": "true" if replace else "false"},
            files={"file": ("snapshot.tar.gz", archive, "application/gzip")}, timeout=600,
        )
    return answer


def _upload_target(ctx: Context) -> tuple[str, Path] | None:
    """(project, folder) to upload before a run: the linked folder, when the command's project is
    the folder's (an explicit --project of another project submits that project's files as they are)."""
    if ctx.arg("no_upload"):
        return None
    linked = ctx.linked_project()
    if not linked:
        return None
    explicit = ctx.arg("project")
    if explicit and explicit not in (linked.get("project"), linked.get("project_id")):
        return None
    return linked.get("project_id") or linked["project"], ctx.link[0]


def project_upload(ctx: Context):
    ref = ctx.project_ref()
    linked = ctx.link
    root = _folder(ctx) if ctx.arg("path") or not linked else linked[0]
    answer = upload_folder(ctx, project=ref, root=root, replace=not ctx.arg("keep"))
    ctx.progress(f"Uploaded {answer.get('count')} files.")
    return Result(answer.get("files", []), columns(("Path", "path"), ("Size", "size"), ("SHA-256", "sha256")))


def _script_path(ctx: Context, script: str) -> str:
    """The script as a path in the project: `./train.py` or `src/../train.py` typed in a subfolder
    of the linked folder becomes its path from the project's root."""
    link = ctx.link
    if not link:
        return script
    local = (ctx.cwd / script).resolve()
    try:
        return local.relative_to(link[0]).as_posix()
    except ValueError:
        return script


def _after_submit(ctx: Context, run: dict):
    if ctx.arg("no_wait"):
        if ctx.fmt == "json" or ctx.arg("query"):
            return Result(run)
        ctx.out.write(run["id"] + "\n")
        return 0
    ctx.progress(f"Run {run.get('name')} ({run['id']}) is {run.get('status')} on {run.get('target')}; its log follows "
                 "(Ctrl-C stops watching, the run goes on).")
    return follow_run(ctx, run)


def experiment_prepare(ctx: Context):
    upload = _upload_target(ctx)
    if upload:
        upload_folder(ctx, project=upload[0], root=upload[1])
    run = ctx.client.post(f"projects/{ctx.project_ref()}/prepare/", {"target": ctx.arg("target") or "docker"})
    return _after_submit(ctx, run)


def experiment_submit(ctx: Context):
    project = ctx.project_ref()
    upload = _upload_target(ctx)
    if upload:
        upload_folder(ctx, project=upload[0], root=upload[1])
    body = {"project": project, "script": _script_path(ctx, ctx.arg("script")), "args": list(ctx.arg("args") or [])}
    if ctx.arg("target"):
        body["target"] = ctx.arg("target")
    run = ctx.client.post("runs/", body)
    return _after_submit(ctx, run)


# Options of `experiment submit` that take a value: everything up to the script is ours, everything
# after it is the script's (argparse alone would read a script's `--n 3` as an abbreviation of ours).
_SUBMIT_VALUE_OPTIONS = {"-c", "--target", "--run-configuration", "--project", "-o", "--output", "--query",
                         "--workspace", "-g", "--resource-group", "-l", "--location", "--subscription"}


def split_script_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(argv up to and including SCRIPT, the script's arguments) for `experiment submit`; other
    commands come back unchanged with None."""
    if argv[:2] != ["experiment", "submit"]:
        return argv, None
    i = 2
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i + 2], argv[i + 2:]  # argparse reads a script named "-x.py" after "--"
        if token.startswith("-") and token != "-":
            i += 2 if token in _SUBMIT_VALUE_OPTIONS else 1
            continue
        return argv[:i + 1], argv[i + 1:]
    return argv, []


def _project_option(parser) -> None:
    parser.add_argument("--project", metavar="PROJECT", help="the project (default: the linked folder's)")


def _run_options(parser) -> None:
    parser.add_argument("-c", "--target", "--run-configuration", dest="target", choices=("docker", "local"),
                        help="compute target: docker (a fresh container) or local (a virtualenv on the worker)")
    _project_option(parser)
    parser.add_argument("--no-upload", action="store_true",
                        help="run the project's files as they are on the portal (do not upload this folder first)")
    parser.add_argument("--no-wait", action="store_true", help="print the run's id at once instead of following its log")


def register(subparsers) -> None:
    project = add_group(subparsers, "project", help="Projects: the current folder is the project (create, download, "
                                                    "upload, list, show).")
    parser = add_command(project, "create", help="Create a project, write its files here and link this folder to it.",
                         example="mkdir churn && cd churn\nmlportal project create churn_prediction --template churn",
                         func=project_create)
    add_name(parser, what="project name")
    parser.add_argument("--template", metavar="SLUG", help="start from a template, e.g. churn (see the portal's templates)")
    parser.add_argument("-d", "--description", help="a description")
    parser.add_argument("--path", metavar="DIR", help="the folder (default: the current one; made if missing)")
    parser = add_command(project, "download", help="Write an existing project's files here and link this folder to it.",
                         example="mlportal project download churn_prediction --path ./churn", func=project_download)
    add_name(parser, what="project name or id")
    parser.add_argument("--path", metavar="DIR", help="the folder (default: the current one; made if missing)")
    parser = add_command(project, "upload", help="Upload this folder's files to its project (they replace the "
                                                 "project's files unless --keep).",
                         example="mlportal project upload", func=project_upload)
    _project_option(parser)
    parser.add_argument("--path", metavar="DIR", help="the folder to upload (default: the linked folder)")
    parser.add_argument("--keep", action="store_true", help="keep the project's files that this folder does not have")
    parser = add_command(project, "list", help="List projects.", example="mlportal project list -o table",
                         func=project_list)
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N projects (default 100)")
    parser.add_argument("--search", metavar="TEXT", help="only projects matching TEXT")
    parser.add_argument("--orderby", metavar="FIELD", help="name, created_at or updated_at ('-' for descending)")
    parser = add_command(project, "show", help="Show a project, its settings and files (default: the linked one).",
                         example="mlportal project show\nmlportal project show churn_prediction -o json", func=project_show)
    add_name(parser, what="project name or id", required=False)

    parser = add_command(project, "settings", help="Show or change a project's run settings: target, limits, network, "
                                                   "outputs cap (default: the linked project).",
                         example="mlportal project settings --outputs-max-mb 512\n"
                                 "mlportal project settings churn_prediction --time-limit 600 --network off",
                         func=project_settings)
    add_name(parser, what="project name or id", required=False)
    parser.add_argument("--target", choices=("docker", "local"), help="the default compute target of its runs")
    parser.add_argument("--time-limit", dest="time_limit", metavar="SECONDS", help="a run's time limit")
    parser.add_argument("--memory-mb", dest="memory_mb", metavar="MIB", help="a run's memory limit")
    parser.add_argument("--cpus", metavar="N", help="a run's CPU limit")
    parser.add_argument("--network", choices=("on", "off"), help="whether docker runs may use the network")
    parser.add_argument("--outputs-max-mb", dest="outputs_max_mb", metavar="MIB",
                        help="cap on the outputs/ a run keeps, at most the portal's maximum (a run over it fails)")

    experiment = add_group(subparsers, "experiment", help="Run scripts of the project: prepare the Docker "
                                                          "environment, submit runs.")
    parser = add_command(experiment, "prepare", help="Build the project's Docker environment once (reused by runs).",
                         example="mlportal experiment prepare -c docker", func=experiment_prepare)
    _run_options(parser)
    parser = add_command(experiment, "submit", help="Upload this folder as the snapshot, run SCRIPT and stream its log; "
                                                    "exits 0 only when the run completed.",
                         example="mlportal experiment submit -c docker CATelcoCustomerChurnModelingWithoutDprep.py\n"
                                 "mlportal experiment submit -c local train.py --epochs 3",
                         func=experiment_submit)
    _run_options(parser)
    parser.add_argument("script", metavar="SCRIPT", help="the script, a path in the project")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to the script")
