"""`model alias set|list`: aliases of model versions (production, staging, any name) and their
history ("which version was in production when")."""
from __future__ import annotations

import urllib.parse

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.output import Result, columns

NOW_COLUMNS = columns(("Alias", "alias"), ("Version", "version"), ("Since", "set_at"), ("Set by", lambda r: r.get("set_by") or "portal"))
HISTORY_COLUMNS = columns(("Alias", "alias"), ("Version", "version"), ("From", "from"),
                          ("Until", lambda r: r.get("until") or "now"), ("Set by", lambda r: r.get("set_by") or "portal"),
                          ("Why", lambda r: r.get("reason") or ""))


def _name(ctx: Context) -> str:
    if not ctx.arg("model_name"):
        raise CliError("name the model with -n NAME, e.g. -n model.pkl")
    return urllib.parse.quote(ctx.arg("model_name"), safe="")


def alias_set(ctx: Context):
    body = {"alias": ctx.arg("alias"), "reason": ctx.arg("reason") or "set from the command line"}
    if ctx.arg("version") is not None:
        body["version"] = ctx.arg("version")
    answer = ctx.client.post(f"models/{_name(ctx)}/aliases/", body)
    now = next((a for a in answer["aliases"] if a["alias"] == ctx.arg("alias")), None)
    if now is not None:
        ctx.progress(f"{answer['name']}@{now['alias']} is version {now['version']}.")
    return Result(answer["aliases"], NOW_COLUMNS, len(answer["aliases"]))


def alias_list(ctx: Context):
    params = {"alias": ctx.arg("alias")} if ctx.arg("alias") else None
    answer = ctx.client.get(f"models/{_name(ctx)}/aliases/", params=params)
    if ctx.arg("history") or ctx.arg("alias"):
        return Result(answer["history"], HISTORY_COLUMNS, len(answer["history"]))
    return Result(answer["aliases"], NOW_COLUMNS, len(answer["aliases"]))


def register(model_group) -> None:
    group = add_group(model_group, "alias", help="Aliases of model versions (production, staging …) and their history.")
    parser = add_command(group, "set", help="Point an alias at a version (default: the latest).",
                         example="mlportal model alias set -n model.pkl --alias production --version 2", func=alias_set)
    parser.add_argument("-n", "--name", dest="model_name", required=True, metavar="NAME", help="the model's name")
    parser.add_argument("--alias", "-a", required=True, help="the alias, e.g. production")
    parser.add_argument("--version", "-v", type=int, help="the version (default: the latest)")
    parser.add_argument("--reason", help="why, kept in the history")
    parser = add_command(group, "list", help="The model's aliases now; --history (or --alias A) every period.",
                         example="mlportal model alias list -n model.pkl\nmlportal model alias list -n model.pkl --alias production",
                         func=alias_list)
    parser.add_argument("-n", "--name", dest="model_name", required=True, metavar="NAME", help="the model's name")
    parser.add_argument("--alias", "-a", help="only this alias's history (which version was it when)")
    parser.add_argument("--history", action="store_true", help="every alias's history")
