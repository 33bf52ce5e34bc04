"""login / logout / whoami, workspaces, and the lab's `account modelmanagement` (a workspace here)."""
from __future__ import annotations

import getpass
import os
import sys

from mlportal_cli.client import CliError, Client, normalise_url
from mlportal_cli.config import config_path, load_config, save_config
from mlportal_cli.context import Context, add_command, add_group, add_name, stdin_is_tty
from mlportal_cli.output import Result, columns

WORKSPACE_COLUMNS = columns(("Name", "name"), ("Role", "role"), ("Current", lambda r: "*" if r.get("current") else ""),
                            ("Description", "description"), ("Created by", "created_by"), ("Created", "created_at"))


def _ask(prompt: str, *, option: str, default: str | None = None) -> str:
    """A line from the terminal, or from piped stdin (`echo $TOKEN | mlportal login …`); `default`
    for an empty answer or an exhausted pipe."""
    line = input(prompt) if stdin_is_tty() else sys.stdin.readline()
    if not line.strip():
        if default:
            return default
        raise CliError(f"nothing was given for {option}: give it as an option (see 'mlportal login --help')")
    return line.strip()


def login(ctx: Context):
    saved = load_config()
    url = ctx.arg("url") or os.environ.get("MLPORTAL_URL")
    if not url:
        default = saved.get("url") or "http://127.0.0.1:8000"
        url = _ask(f"Portal URL [{default}]: ", option="--url", default=default)
    url = normalise_url(url)
    token = ctx.arg("token")
    if token == "-":
        token = sys.stdin.readline()
    elif not token:
        token = os.environ.get("MLPORTAL_TOKEN")
    if not token:
        if stdin_is_tty():
            token = getpass.getpass("API token (from the portal's Tokens page; not shown): ")
        else:
            token = _ask("API token: ", option="--token")
    token = token.strip()
    if not token:
        raise CliError("an API token is needed: create one on the portal's Tokens page and give it with --token")
    me = Client(url, token).get("me/", workspace=False)  # verifies URL and token before saving anything
    path = save_config({**saved, "url": url, "token": token, "username": me.get("username")})
    ctx.progress(f"Logged in to {url} as {me.get('username')} (settings saved in {path}).")
    return Result({"url": url, "username": me.get("username"), "workspace": me.get("workspace"), "role": me.get("role")})


def logout(ctx: Context):
    saved = load_config()
    if not saved.get("token"):
        ctx.progress("Not logged in.")
        return 0
    saved.pop("token", None)
    saved.pop("username", None)
    save_config(saved)
    ctx.progress(f"Logged out of {saved.get('url')}: the token is forgotten here (revoke it on the portal's Tokens "
                 "page if it should stop working).")
    if os.environ.get("MLPORTAL_TOKEN"):
        ctx.note("MLPORTAL_TOKEN is still set in this shell, and commands will keep using it")
    return 0


def whoami(ctx: Context):
    me = ctx.me()
    return Result({"url": ctx.client.url, "username": me.get("username"), "workspace": me.get("workspace"),
                   "role": me.get("role"), "config": str(config_path())})


# --- workspaces -----------------------------------------------------------------------------------

def workspace_list(ctx: Context):
    current = ctx.me().get("workspace_id")
    items, total = ctx.client.list("workspaces/", params=_list_params(ctx), limit=ctx.arg("top"))
    for item in items:
        item["current"] = item.get("id") == current
    return Result(items, WORKSPACE_COLUMNS, total)


def _list_params(ctx: Context) -> dict:
    params = {}
    if ctx.arg("search"):
        params["search"] = ctx.arg("search")
    if ctx.arg("orderby"):
        params["ordering"] = ctx.arg("orderby")
    return params


def workspace_show(ctx: Context):
    ref = ctx.name or ctx.arg("workspace") or ctx.me().get("workspace_id")
    if not ref:
        raise CliError("you belong to no workspace yet: create one with 'mlportal workspace create NAME'")
    data = ctx.client.get(f"workspaces/{ref}/", workspace=False)
    data["members"] = ctx.client.get(f"workspaces/{data['id']}/members/", workspace=False)
    return Result(data)


def workspace_create(ctx: Context):
    data = ctx.client.post("workspaces/", {"name": ctx.name, "description": ctx.arg("description") or ""}, workspace=False)
    ctx.progress(f"Created workspace {data['name']}; it is now your current workspace.")
    return Result(data)


def workspace_set(ctx: Context):
    data = ctx.client.post(f"workspaces/{ctx.name}/select/", workspace=False)
    ctx.progress(f"Current workspace: {data['name']} (you are {data.get('role')}).")
    return Result(data)


# --- API tokens -----------------------------------------------------------------------------------

TOKEN_COLUMNS = columns(("Name", "name"), ("Prefix", "prefix"), ("Scope", lambda r: "read-only" if r.get("read_only") else "read-write"),
                        ("State", "state"), ("Last used", lambda r: r.get("last_used_at") or "never"),
                        ("Expires", "expires_at"), ("Id", "id"))


def token_create(ctx: Context):
    body = {"name": ctx.name, "read_only": bool(ctx.arg("read_only"))}
    if ctx.arg("expires_days") is not None:
        body["expires_in_days"] = ctx.arg("expires_days")
    data = ctx.client.post("tokens/", body, workspace=False)
    ctx.progress(f"Created token {data['name']} (expires {data['expires_at']}); it is shown only now.")
    return Result(data)


def token_list(ctx: Context):
    items, total = ctx.client.list("tokens/", params=_list_params(ctx), limit=ctx.arg("top"))
    return Result(items, TOKEN_COLUMNS, total)


def token_revoke(ctx: Context):
    ref = ctx.name
    items, _ = ctx.client.list("tokens/", limit=1000)
    matches = [t for t in items if ref in (t["id"], t["name"], t["prefix"]) and t["state"] != "revoked"]
    if not matches:
        raise CliError(f"no active token named or with the id {ref!r}: see 'mlportal token list'")
    if len(matches) > 1:
        raise CliError(f"{len(matches)} active tokens are named {ref!r}: give the id (see 'mlportal token list')")
    ctx.client.delete(f"tokens/{matches[0]['id']}/", workspace=False)
    ctx.progress(f"Revoked token {matches[0]['name']}: it stops working at once.")
    return Result({**matches[0], "state": "revoked"})


def _list_options(parser, *, top: int = 100) -> None:
    parser.add_argument("--top", type=int, default=top, metavar="N", help=f"show at most N items (default {top})")
    parser.add_argument("--search", metavar="TEXT", help="only items matching TEXT")
    parser.add_argument("--orderby", metavar="FIELD", help="order by FIELD (prefix '-' for descending)")


def register(subparsers) -> None:
    parser = add_command(subparsers, "login", help="Log in to a portal with an API token (verified, then saved 0600).",
                         example="mlportal login --url http://127.0.0.1:8000 --token mlp_xxxx\n"
                                 "echo $TOKEN | mlportal login --url https://portal.example --token -",
                         func=login)
    parser.add_argument("--url", help="the portal's address, e.g. http://127.0.0.1:8000 (prompted if left out)")
    parser.add_argument("--token", help="an API token from the portal's Tokens page; '-' reads it from stdin "
                                        "(prompted, hidden, if left out)")
    add_command(subparsers, "logout", help="Forget the saved token.", example="mlportal logout", func=logout)
    add_command(subparsers, "whoami", help="Show the portal, user, current workspace and role.",
                example="mlportal whoami -o json", func=whoami)

    tokens = add_group(subparsers, "token", help="Your API tokens: create (with an expiry and scope), list, revoke.")
    parser = add_command(tokens, "create", help="Create an API token (its value is shown only once).",
                         example="mlportal token create ci --expires-days 30 --read-only -o json", func=token_create)
    add_name(parser, what="token name")
    parser.add_argument("--expires-days", type=int, metavar="DAYS",
                        help="lifetime in days (default: the portal's, 90)")
    parser.add_argument("--read-only", action="store_true", help="the token may only read (GET requests)")
    parser = add_command(tokens, "list", help="List your tokens with their scope, last use and expiry.",
                         example="mlportal token list -o table", func=token_list)
    _list_options(parser)
    parser = add_command(tokens, "revoke", help="Revoke a token by name, prefix or id.",
                         example="mlportal token revoke ci", func=token_revoke)
    add_name(parser, what="token name, prefix or id")

    ws = add_group(subparsers, "workspace", help="Workspaces (teams): create, list, show, set the current one.")
    _add_workspace_commands(ws, prefix="mlportal workspace")

    account = add_group(subparsers, "account", help="The lab's accounts: 'account modelmanagement' is a workspace here.")
    mm = account.add_parser("modelmanagement", help="Model management accounts (workspaces).",
                            description="Model management accounts: each is a workspace of this portal.")
    mm.set_defaults(func=lambda ctx: ctx.print_help(mm))
    mm_commands = mm.add_subparsers(title="commands", metavar="COMMAND")
    _add_workspace_commands(mm_commands, prefix="mlportal account modelmanagement", flags_only=True)


def _add_workspace_commands(sub, *, prefix: str, flags_only: bool = False) -> None:
    name_example = "-n team" if flags_only else "team"
    parser = add_command(sub, "create", help="Create a workspace (you become its owner).",
                         example=f"{prefix} create {name_example}" + (" -l eastus2 -g my-rg" if flags_only else ""),
                         func=workspace_create)
    add_name(parser, what="workspace name")
    parser.add_argument("-d", "--description", help="a description")
    parser = add_command(sub, "list", help="List your workspaces (* marks the current one).",
                         example=f"{prefix} list -o table", func=workspace_list)
    _list_options(parser)
    parser = add_command(sub, "show", help="Show a workspace and its members (default: the current one).",
                         example=f"{prefix} show" + (" -n team" if flags_only else " team"), func=workspace_show)
    add_name(parser, what="workspace name", required=False)
    parser = add_command(sub, "set", help="Make a workspace your current one (also the portal's top bar).",
                         example=f"{prefix} set {name_example}" + (" -g my-rg" if flags_only else ""), func=workspace_set)
    add_name(parser, what="workspace name")
