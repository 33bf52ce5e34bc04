"""What every command gets: its parsed arguments, stdout/stderr, the API client (made on first
use, so `--help` and `login` need no login), the linked project folder, and the parser helpers
that give each command its global options and an example in `--help`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from mlportal_cli.client import CliError, Client
from mlportal_cli.config import credentials, find_link
from mlportal_cli.output import FORMATS, Result, emit

AZURE_FLAGS = (("resource_group", "-g/--resource-group"), ("location", "-l/--location"),
               ("subscription", "--subscription"))


class UsageError(CliError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one `error:` line (with where to find help), not a
    usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def common_options(formats: tuple[str, ...] = FORMATS) -> Parser:
    """The options every command takes, also accepted after the command as `az` does. Defaults
    are SUPPRESS so a subcommand never overwrites a value given before it. ``formats``: what -o
    takes (a command that writes files too, such as `service data`, takes more)."""
    parser = Parser(add_help=False)
    group = parser.add_argument_group("global options")
    group.add_argument("-o", "--output", choices=formats, default=argparse.SUPPRESS,
                       help="output format: table (default), json or tsv" if formats == FORMATS
                       else f"output format: table (default), {', '.join(f for f in formats if f != 'table')}")
    group.add_argument("--query", default=argparse.SUPPRESS, metavar="JMESPATH",
                       help="JMESPath query applied to the JSON result, e.g. \"[].name\"")
    group.add_argument("--workspace", default=argparse.SUPPRESS, metavar="NAME",
                       help="act in this workspace (default: the linked folder's, else your current one)")
    azure = parser.add_argument_group("Azure options (accepted so the lab's commands paste as they are; ignored)")
    azure.add_argument("-g", "--resource-group", default=argparse.SUPPRESS, metavar="GROUP", help=argparse.SUPPRESS)
    azure.add_argument("-l", "--location", default=argparse.SUPPRESS, metavar="LOCATION", help=argparse.SUPPRESS)
    azure.add_argument("--subscription", default=argparse.SUPPRESS, metavar="ID", help=argparse.SUPPRESS)
    azure.description = "-g/--resource-group, -l/--location and --subscription are accepted and ignored"
    return parser


COMMON = common_options()


def add_group(subparsers, name: str, *, help: str, aliases: tuple[str, ...] = ()):
    """A command group (`run`, `model`, …); run alone it prints its help."""
    parser = subparsers.add_parser(name, help=help, description=help, aliases=list(aliases), parents=[COMMON])
    parser.set_defaults(func=lambda ctx: ctx.print_help(parser))
    return parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)


def add_command(subparsers, name: str, *, help: str, example: str, func: Callable[["Context"], Any],
                aliases: tuple[str, ...] = (), common: Parser | None = None) -> Parser:
    """A leaf command with the global options and `example` shown at the end of its --help
    (``common``: its own copy of the global options, from ``common_options(formats=…)``)."""
    examples = "\n".join(f"  {line}" for line in example.strip().splitlines())
    parser = subparsers.add_parser(
        name, help=help, description=help, aliases=list(aliases), parents=[common or COMMON],
        epilog=f"example:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_name(parser: Parser, *, what: str, required: bool = True, flags: tuple[str, ...] = ("-n", "--name")) -> None:
    """A name given either as a positional argument or with -n/--name (the lab's style)."""
    parser.add_argument("name_pos", nargs="?", metavar="NAME", help=f"the {what}")
    parser.add_argument(*flags, dest="name_opt", metavar="NAME", help=f"the {what} (same as NAME)")
    parser.set_defaults(name_required=required, name_what=what)


class Context:
    def __init__(self, args: argparse.Namespace, *, out: TextIO, err: TextIO, cwd: Path):
        self.args = args
        self.out = out
        self.err = err
        self.cwd = cwd
        self._client: Client | None = None
        self._link: tuple[Path, dict] | None | bool = False
        self._me: dict | None = None

    # --- arguments ---------------------------------------------------------------------------
    def arg(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default)

    @property
    def fmt(self) -> str:
        return self.arg("output") or "table"

    @property
    def name(self) -> str | None:
        """The NAME given positionally or with -n; CliError when it is required and missing, or
        given twice differently."""
        positional, option = self.arg("name_pos"), self.arg("name_opt")
        if positional and option and positional != option:
            raise UsageError(f"give the {self.arg('name_what')} once: '{positional}' or '{option}'")
        value = option or positional
        if not value and self.arg("name_required"):
            raise UsageError(f"name the {self.arg('name_what')} (as NAME or with -n NAME)")
        return value

    # --- printing ----------------------------------------------------------------------------
    def note(self, message: str) -> None:
        self.err.write(f"note: {message}\n")
        self.err.flush()

    def progress(self, message: str = "", *, end: str = "\n") -> None:
        """Progress of a long step, on stderr so stdout keeps only the result."""
        self.err.write(message + end)
        self.err.flush()

    def emit(self, result: Result | Any) -> None:
        if not isinstance(result, Result):
            result = Result(result)
        emit(result, fmt=self.fmt, query=self.arg("query"), out=self.out, err=self.err)
        self.out.flush()

    def print_help(self, parser: argparse.ArgumentParser) -> int:
        self.out.write(parser.format_help())
        return 0

    # --- the portal --------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None:
            url, token = credentials()
            if not url or not token:
                raise CliError("not logged in: run 'mlportal login' (or set MLPORTAL_URL and MLPORTAL_TOKEN)")
            self._client = Client(url, token, workspace=self.workspace)
        return self._client

    @property
    def workspace(self) -> str | None:
        """The workspace named on the command line or in MLPORTAL_WORKSPACE, else the linked
        folder's; None leaves it to the portal (the user's current workspace)."""
        explicit = self.arg("workspace") or os.environ.get("MLPORTAL_WORKSPACE")
        if explicit:
            return explicit
        link = self.link
        if link and not self.arg("project") and self._on_this_portal(link[1]):
            return link[1].get("workspace")
        return None

    @staticmethod
    def _on_this_portal(link: dict) -> bool:
        url, _ = credentials()
        server = (link.get("server") or "").rstrip("/")
        return not server or (bool(url) and server == url.strip().rstrip("/").removesuffix("/api/v1"))

    @property
    def link(self) -> tuple[Path, dict] | None:
        """(root, data) of the project folder the command runs in, if it is linked."""
        if self._link is False:
            self._link = find_link(self.cwd)
        return self._link or None

    def me(self) -> dict:
        if self._me is None:
            self._me = self.client.get("me/", workspace=False)
        return self._me

    def list_workspace(self) -> str | None:
        """The workspace a list shows: the named or linked one, else the user's current one."""
        return self.workspace or self.me().get("workspace")

    def linked_project(self) -> dict | None:
        """The link data when the folder is linked to a project on the server logged in to."""
        link = self.link
        if not link:
            return None
        server = (link[1].get("server") or "").rstrip("/")
        if server and server != self.client.url:
            raise CliError(f"this folder is linked to a project on {server}, but you are logged in to "
                           f"{self.client.url}: log in there, or name a project with --project")
        return link[1]

    def project_ref(self) -> str:
        """The project a command acts on: --project, else the linked folder's (by id)."""
        explicit = self.arg("project")
        if explicit:
            return explicit
        linked = self.linked_project()
        if linked:
            return linked.get("project_id") or linked["project"]
        raise CliError("no project here: run this inside a project folder (made by 'mlportal project create' or "
                       "'mlportal project download'), or name one with --project")


def flush_streams(*streams: TextIO) -> None:
    for stream in streams:
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
