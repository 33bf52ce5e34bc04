"""`mlportal`: the portal from a terminal, mirroring the Azure ML Workbench lab's `az ml`.

    mlportal login --url http://127.0.0.1:8000 --token mlp_…
    mlportal project create churn_prediction --template churn
    mlportal experiment submit -c docker CATelcoCustomerChurnModelingWithoutDprep.py
    mlportal service create realtime -n churnpred --model-file model.pkl -f score.py -r python -s service_schema.json

Exit codes: 0 success, 1 a failure (the portal's message on one `error:` line), 2 a usage mistake,
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

from mlportal_cli import __version__
from mlportal_cli.client import CliError
from mlportal_cli.commands import account, deployments, pipelines, projects, provider, registry, runs, storage, webhooks
from mlportal_cli.context import AZURE_FLAGS, COMMON, Context, Parser, flush_streams

DESCRIPTION = """The MLPortal command line: projects, experiment runs, models, manifests, images,
environments and realtime services, as the lab's `az ml` does (`mlportal ml …` works too)."""
EPILOG = """examples:
  mlportal login --url http://127.0.0.1:8000 --token mlp_xxxx
  mlportal project create churn_prediction --template churn
  mlportal experiment submit -c docker CATelcoCustomerChurnModelingWithoutDprep.py
  mlportal run download last --path outputs/model.pkl
  mlportal service create realtime -n churnpred --model-file model.pkl -f score.py -r python -s service_schema.json
  mlportal service run realtime -i churnpred -d @sample_request.json

environment: MLPORTAL_URL and MLPORTAL_TOKEN override the login; MLPORTAL_CONFIG moves the config
file (default ~/.config/mlportal/config.json); MLPORTAL_WORKSPACE picks a workspace."""


def build_parser() -> Parser:
    parser = Parser(prog="mlportal", description=DESCRIPTION, epilog=EPILOG, parents=[COMMON],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlportal {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    account.register(subparsers)
    projects.register(subparsers)
    runs.register(subparsers)
    registry.register(subparsers)
    deployments.register(subparsers)
    provider.register(subparsers)
    storage.register(subparsers)
    pipelines.register(subparsers)
    webhooks.register(subparsers)
    parser.set_defaults(func=lambda ctx: ctx.print_help(parser))
    return parser


def _run(argv: list[str], out: TextIO, err: TextIO) -> int:
    if argv[:1] == ["ml"]:  # `az ml …` lines with `az` replaced by `mlportal`
        argv = argv[1:]
    argv, script_args = projects.split_script_args(argv)
    parser = build_parser()
    try:
        # argparse prints --help / --version to sys.stdout itself: send them where main() writes.
        with contextlib.redirect_stdout(out):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if script_args is not None:
        args.args = script_args
    ctx = Context(args, out=out, err=err, cwd=Path.cwd())
    for dest, flag in AZURE_FLAGS:
        if getattr(args, dest, None) is not None:
            ctx.note(f"{flag} is an Azure setting; ignored here")
    result = args.func(ctx)
    if isinstance(result, int):
        return result
    if result is not None:
        ctx.emit(result)
    return 0


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Runs one command; returns the exit code (the console script exits with it)."""
    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv, out, err)
    except CliError as exc:
        flush_streams(out)
        err.write(f"error: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        flush_streams(out, err)
        return 130
    except BrokenPipeError:  # `mlportal run list | head`: the reader left, nothing to say
        try:
            sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush does not complain
        except OSError:
            pass
        return 1
    except OSError as exc:  # a local file the user named: missing, unreadable, not writable
        where = f"{exc.filename}: " if exc.filename else ""
        err.write(f"error: {where}{exc.strerror or exc}\n")
        return 1
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if os.environ.get("MLPORTAL_DEBUG"):
            raise
        err.write(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                  "(set MLPORTAL_DEBUG=1 to see where)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
