"""`model register|list|show|download`, `manifest create|list|show|delete`, `image create|list|show|usage|logs|delete`.

Models, manifests and images are named by id, `name:version`, or name (its latest version);
images also by Docker tag.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

from mlportal_cli.client import CliError
from mlportal_cli.commands import aliases
from mlportal_cli.commands.runs import POLL_SECONDS, download_to, resolve_run
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.folder import human_size
from mlportal_cli.output import Result, columns
from mlportal_runtime.logsafe import escape_controls

def _scan_cell(row: dict) -> str:
    scan = row.get("scan") or {}
    verdict = (scan.get("verdict") or "not scanned yet").replace("_", " ")
    return f"{verdict} (accepted)" if scan.get("accepted") else verdict


MODEL_COLUMNS = columns(("Name", "name"), ("Version", "version"), ("Ref", "ref"), ("Framework", "framework"),
                        ("Scan", _scan_cell),
                        ("Size", lambda r: human_size(r["size"]) if r.get("size") is not None else ""),
                        ("Workspace", "workspace"), ("Created by", "created_by"), ("Created", "created_at"), ("ID", "id"))
MANIFEST_COLUMNS = columns(("Name", "name"), ("Version", "version"), ("Ref", "ref"), ("Runtime", "runtime"),
                           ("Models", lambda r: ", ".join(m["ref"] for m in r.get("models") or [])),
                           ("Created by", "created_by"), ("Created", "created_at"), ("ID", "id"))
IMAGE_COLUMNS = columns(("Name", "name"), ("Version", "version"), ("Status", "status"), ("Tag", "tag"),
                        ("Manifest", "manifest"), ("Size", lambda r: human_size(r["size"]) if r.get("size") else ""),
                        ("Build", lambda r: f"{r['build_seconds']:.1f}s" if r.get("build_seconds") is not None else ""),
                        ("Created", "created_at"), ("ID", "id"))


def _ref(ctx: Context, what: str) -> str:
    ref = ctx.arg("ref") or ctx.arg("ref_opt")
    if not ref:
        raise CliError(f"name the {what}: its id, name:version, or name (the latest version), e.g. -i model.pkl:1")
    return ref


def _local_file(ctx: Context, value: str, *, option: str) -> Path:
    path = (ctx.cwd / value).resolve()
    if not path.is_file():
        raise CliError(f"{option} {value}: no such file")
    return path


def _list(ctx: Context, path: str, cols, *, extra: dict | None = None) -> Result:
    params = {"workspace": ctx.list_workspace(), "search": ctx.arg("search"), "ordering": ctx.arg("orderby"),
              **(extra or {})}
    items, total = ctx.client.list(path, params={k: v for k, v in params.items() if v}, limit=ctx.arg("top"))
    return Result(items, cols, total)


# --- models ---------------------------------------------------------------------------------------

def _tags(values: list[str] | None) -> dict:
    tags = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"tag {item!r} is not KEY=VALUE")
        tags[key.strip()] = value
    return tags


def model_register(ctx: Context):
    tags = _tags(ctx.arg("tag"))
    common = {"description": ctx.arg("description") or "", "framework": ctx.arg("framework") or ""}
    if ctx.arg("run"):
        if ctx.arg("model"):
            raise CliError("give the model as a local file (-m) or as a run's output (--run with --path), not both")
        run = resolve_run(ctx, ctx.arg("run"))
        path = ctx.arg("path") or "model.pkl"
        path = path[len("outputs/"):] if path.startswith("outputs/") else path
        name = ctx.arg("name") or Path(path).name
        body = {"name": name, "run": run["id"], "path": path, **common}
        if tags:
            body["tags"] = tags
        model = ctx.client.post("models/", body)
    else:
        if not ctx.arg("model"):
            raise CliError("give the model file with -m/--model FILE (or a run's output with --run RUN --path PATH)")
        path = _local_file(ctx, ctx.arg("model"), option="-m/--model")
        ctx.progress(f"Uploading {path.name} ({human_size(path.stat().st_size)}) …")
        data = {"name": ctx.arg("name") or path.name, **common}
        if tags:
            data["tags"] = json.dumps(tags)
        with open(path, "rb") as handle:
            model = ctx.client.post("models/", data=data, files={"file": (path.name, handle, "application/octet-stream")},
                                    timeout=600)
    ctx.progress(f"Registered model {model['ref']} ({model['id']}).")
    _say_scan(ctx, model)
    return Result(model)


def _say_scan(ctx: Context, model: dict) -> None:
    scan = model.get("scan") or {}
    if scan.get("verdict") and scan["verdict"] != "safe":
        ctx.note(f"scan of {model['ref']}: {scan['verdict'].replace('_', ' ')}: {scan.get('reason')}"
                 + ("" if scan.get("accepted") else
                    f" (an owner can accept it: mlportal model accept {model['ref']})"))


def model_list(ctx: Context):
    return _list(ctx, "models/", MODEL_COLUMNS, extra={"name": ctx.arg("name")})


def model_show(ctx: Context):
    return Result(ctx.client.get(f"models/{_ref(ctx, 'model')}/"))


def model_accept(ctx: Context):
    ref = _ref(ctx, "model")
    if ctx.arg("withdraw"):
        model = ctx.client.delete(f"models/{ref}/accept/")
        ctx.progress(f"Withdrew the acceptance of {model['ref']}.")
    else:
        model = ctx.client.post(f"models/{ref}/accept/", {})
        scan = model.get("scan") or {}
        ctx.progress(f"Accepted {model['ref']} ({scan.get('verdict', '').replace('_', ' ')}) as "
                     f"{scan.get('accepted_by')}: manifests may bundle it.")
    return Result(model)


def model_download(ctx: Context):
    model = ctx.client.get(f"models/{_ref(ctx, 'model')}/")
    dest = (ctx.cwd / ctx.arg("dir")).resolve() if ctx.arg("dir") else (ctx.link[0] if ctx.link else ctx.cwd)
    target = dest / Path(model["file_name"]).name
    size = download_to(ctx, f"models/{model['id']}/download/", target, label=f"model {model['ref']}")
    return Result({"model": model["ref"], "file": str(target), "size": size, "sha256": model.get("sha256")})


# --- manifests ------------------------------------------------------------------------------------

def manifest_create(ctx: Context):
    if ctx.arg("runtime") and ctx.arg("runtime") != "python":
        raise CliError(f"runtime {ctx.arg('runtime')!r} is not available: use -r python")
    models = ctx.arg("model_refs") or []
    if not models:
        raise CliError("name the model version(s) the manifest bundles with -i MODEL (e.g. -i model.pkl:1)")
    score = _local_file(ctx, ctx.arg("score"), option="-f/--score-file")
    schema = _local_file(ctx, ctx.arg("schema"), option="-s/--schema-file")
    requirements = _local_file(ctx, ctx.arg("requirements"), option="-p/--requirements") if ctx.arg("requirements") else None
    with ExitStack() as stack:
        files = {"score_file": ("score.py", stack.enter_context(open(score, "rb"))),
                 "schema_file": ("service_schema.json", stack.enter_context(open(schema, "rb")))}
        if requirements:
            files["requirements_file"] = ("requirements.txt", stack.enter_context(open(requirements, "rb")))
        data = {"name": ctx.arg("name"), "runtime": "python", "models": json.dumps(models)}
        if ctx.arg("confirm_unknown"):
            data["confirm_unknown"] = "true"
        manifest = ctx.client.post("manifests/", data=data, files=files)
    ctx.progress(f"Created manifest {manifest['ref']} ({manifest['id']}).")
    return Result(manifest)


def manifest_list(ctx: Context):
    return _list(ctx, "manifests/", MANIFEST_COLUMNS, extra={"name": ctx.arg("name")})


def manifest_show(ctx: Context):
    return Result(ctx.client.get(f"manifests/{_ref(ctx, 'manifest')}/"))


def manifest_delete(ctx: Context):
    manifest = ctx.client.get(f"manifests/{_ref(ctx, 'manifest')}/")
    images, _total = ctx.client.list("images/", params={"manifest": manifest["id"], "ordering": "version"})
    ctx.client.delete(f"manifests/{manifest['id']}/")
    gone = f" and its image(s) {', '.join(i['ref'] for i in images)} (their Docker images leave the engine next)" if images else ""
    ctx.progress(f"Deleted manifest {manifest['ref']}{gone}.")
    return Result({"manifest": manifest["ref"], "images": [i["ref"] for i in images]})


# --- images ---------------------------------------------------------------------------------------

def follow_image_log(ctx: Context, image: dict, *, to_stderr: bool = True) -> dict:
    """Streams the image's build log until the build ends; returns the image's final JSON."""
    stream = ctx.err if to_stderr else ctx.out
    offset, last = 0, "\n"
    while True:
        body = ctx.client.get_patiently(f"images/{image['id']}/log/", params={"offset": offset}, say=ctx.progress)
        text = body.get("text") or ""
        if text:
            stream.write(escape_controls(text))
            stream.flush()
            last = text[-1]
        offset = body.get("offset", offset)
        if body.get("done"):
            break
        if not text:
            time.sleep(POLL_SECONDS)
    if last != "\n":
        stream.write("\n")
    return ctx.client.get_patiently(f"images/{image['id']}/", say=ctx.progress)


def image_failed(image: dict) -> CliError:
    step = f" at {image['error_step']}" if image.get("error_step") else ""
    return CliError(f"image {image.get('ref')} failed to build{step}: {image.get('error') or 'see mlportal image logs'}")


def image_create(ctx: Context):
    body = {"manifest": ctx.arg("manifest")}
    if ctx.arg("name"):
        body["name"] = ctx.arg("name")
    image = ctx.client.post("images/", body)
    ctx.progress(f"Image {image['ref']} ({image['id']}) is {image['status']}.")
    if ctx.arg("no_wait"):
        return Result(image)
    ctx.progress("Building (the build log follows; Ctrl-C stops watching, the build goes on) …")
    image = follow_image_log(ctx, image)
    if image.get("status") != "succeeded":
        raise image_failed(image)
    ctx.progress(f"Image {image['ref']} built in {image.get('build_seconds') or 0:.1f}s: {image.get('tag')}")
    return Result(image)


def image_list(ctx: Context):
    return _list(ctx, "images/", IMAGE_COLUMNS, extra={"name": ctx.arg("name"), "status": ctx.arg("status")})


def image_show(ctx: Context):
    return Result(ctx.client.get(f"images/{_ref(ctx, 'image')}/"))


def image_usage(ctx: Context):
    usage = ctx.client.get(f"images/{_ref(ctx, 'image')}/usage/")
    if ctx.fmt == "json" or ctx.arg("query"):
        return Result(usage)
    ctx.out.write(f"Run it:   {usage['docker_run']}\nCall it:  {usage['curl']}\n")
    return 0


def image_logs(ctx: Context):
    image = ctx.client.get(f"images/{_ref(ctx, 'image')}/")
    if ctx.arg("follow"):
        image = follow_image_log(ctx, image, to_stderr=False)
        if image.get("status") != "succeeded":
            raise image_failed(image)
        return 0
    offset = 0
    while True:  # the endpoint pages long logs
        body = ctx.client.get_patiently(f"images/{image['id']}/log/", params={"offset": offset}, say=ctx.progress)
        ctx.out.write(escape_controls(body.get("text") or ""))
        if not body.get("text") or body.get("offset", offset) == offset:
            break
        offset = body["offset"]
    ctx.out.flush()
    return 0


def image_delete(ctx: Context):
    image = ctx.client.get(f"images/{_ref(ctx, 'image')}/")
    ctx.client.delete(f"images/{image['id']}/")
    ctx.progress(f"Deleted image {image['ref']} ({image['tag']}: it leaves the Docker engine next).")
    return Result({"image": image["ref"], "tag": image["tag"]})


# --- parser ---------------------------------------------------------------------------------------

def _ref_args(parser, what: str) -> None:
    parser.add_argument("ref", nargs="?", metavar="REF", help=f"the {what}: id, name:version, or name (latest version)")
    parser.add_argument("-i", "--id", dest="ref_opt", metavar="REF", help=f"the {what} (same as REF)")


def _list_args(parser, what: str) -> None:
    parser.add_argument("-n", "--name", help=f"only {what} of this name")
    parser.add_argument("--search", metavar="TEXT", help="only items matching TEXT")
    parser.add_argument("--orderby", metavar="FIELD", help="order by FIELD ('-' for descending)")
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N items (default 100)")


def register(subparsers) -> None:
    model = add_group(subparsers, "model", help="Registered models (versioned files): register, list, show, download.")
    parser = add_command(model, "register", help="Register a model file, or a run's output, as the next version of NAME.",
                         example="mlportal model register -m model.pkl -n model.pkl -t stage=dev\n"
                                 "mlportal model register --run last --path outputs/model.pkl -n model.pkl",
                         func=model_register)
    parser.add_argument("-m", "--model", "--model-file", dest="model", metavar="FILE", help="the model file to upload")
    parser.add_argument("-n", "--name", help="the model's name (default: the file's name)")
    parser.add_argument("--run", metavar="RUN", help="register this run's output instead (id, number or 'last')")
    parser.add_argument("--path", metavar="PATH", help="the run's output to register (default outputs/model.pkl)")
    parser.add_argument("--project", metavar="PROJECT", help="the project of a run number (default: the linked folder's)")
    parser.add_argument("-d", "--description", help="a description")
    parser.add_argument("-t", "--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
    parser.add_argument("--framework", help="e.g. scikit-learn (default: guessed from the file)")
    parser = add_command(model, "list", help="List model versions, latest first per name.",
                         example="mlportal model list -o table", func=model_list)
    _list_args(parser, "models")
    parser = add_command(model, "show", help="Show a model version.", example="mlportal model show model.pkl:1",
                         func=model_show)
    _ref_args(parser, "model")
    parser = add_command(model, "accept", help="Accept a version whose scan found it dangerous, unknown or not fully "
                                               "readable, so manifests may bundle it (workspace owners only).",
                         example="mlportal model accept barscanary:1\nmlportal model accept barscanary:1 --withdraw",
                         func=model_accept)
    _ref_args(parser, "model")
    parser.add_argument("--withdraw", action="store_true", help="withdraw the acceptance instead")
    aliases.register(model)
    parser = add_command(model, "download", help="Download a model version's file.",
                         example="mlportal model download model.pkl:2 -d ./models", func=model_download)
    _ref_args(parser, "model")
    parser.add_argument("-d", "--dir", metavar="DIR", help="where to save (default: the project's folder, else here)")

    manifest = add_group(subparsers, "manifest", help="Manifests: model versions + score.py + schema + requirements.")
    parser = add_command(manifest, "create", help="Create a manifest from local files and registered model versions.",
                         example="mlportal manifest create -n churnpred -f score.py -r python -s service_schema.json "
                                 "-i model.pkl:1 -p requirements.txt",
                         func=manifest_create)
    parser.add_argument("-n", "--name", required=True, help="the manifest's name")
    parser.add_argument("-f", "--score-file", dest="score", required=True, metavar="FILE", help="score.py (init() and run())")
    parser.add_argument("-s", "--schema-file", dest="schema", required=True, metavar="FILE", help="service_schema.json")
    parser.add_argument("-r", "--runtime", default="python", help="python (the only runtime)")
    parser.add_argument("-i", "--model-id", dest="model_refs", action="append", metavar="MODEL",
                        help="a model version to bundle, e.g. model.pkl:1 (repeatable)")
    parser.add_argument("-p", "--requirements", "--pip-requirements", dest="requirements", metavar="FILE",
                        help="requirements.txt of score.py")
    parser.add_argument("--confirm-unknown", action="store_true",
                        help="take model versions whose scan found unknown globals or could not finish")
    parser = add_command(manifest, "list", help="List manifests.", example="mlportal manifest list", func=manifest_list)
    _list_args(parser, "manifests")
    parser = add_command(manifest, "show", help="Show a manifest.", example="mlportal manifest show churnpred:1",
                         func=manifest_show)
    _ref_args(parser, "manifest")
    parser = add_command(manifest, "delete", help="Delete a manifest and the images built from it (owner; refused while "
                         "a service runs one of them).", example="mlportal manifest delete churnpred:1",
                         func=manifest_delete)
    _ref_args(parser, "manifest")

    image = add_group(subparsers, "image", help="Docker images built from manifests: create, list, show, usage, logs, "
                      "delete.")
    parser = add_command(image, "create", help="Build a Docker image from a manifest, showing its build log.",
                         example="mlportal image create -n churnpred --manifest-id churnpred:1", func=image_create)
    parser.add_argument("--manifest-id", "--manifest", dest="manifest", required=True, metavar="MANIFEST",
                        help="the manifest (id, name:version or name)")
    parser.add_argument("-n", "--name", help="the image's name (default: the manifest's)")
    parser.add_argument("--no-wait", action="store_true", help="return once the build is queued")
    parser = add_command(image, "list", help="List images.", example="mlportal image list -o table", func=image_list)
    _list_args(parser, "images")
    parser.add_argument("--status", choices=("queued", "building", "succeeded", "failed"), help="only images in this status")
    parser = add_command(image, "show", help="Show an image.", example="mlportal image show churnpred:1",
                         func=image_show)
    _ref_args(parser, "image (or its Docker tag)")
    parser = add_command(image, "usage", help="How to run the image with Docker and call it.",
                         example="mlportal image usage churnpred:1", func=image_usage)
    _ref_args(parser, "image (or its Docker tag)")
    parser = add_command(image, "logs", help="Print an image's build log (-f follows a build in progress).",
                         example="mlportal image logs churnpred:1 -f", func=image_logs)
    _ref_args(parser, "image (or its Docker tag)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the build ends")
    parser = add_command(image, "delete", help="Delete an image from the portal and the Docker engine (owner; refused "
                         "while a service runs it).", example="mlportal image delete churnpred:1", func=image_delete)
    _ref_args(parser, "image (or its Docker tag)")
