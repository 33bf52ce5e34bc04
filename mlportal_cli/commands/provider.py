"""The lab's `az provider register|list`: Azure resource providers have a counterpart here only in
the portal's Docker engine, so registering is a no-op that says so and listing reports whether
that engine answers (the lab checks for `registrationState` `Registered`)."""
from __future__ import annotations

import requests

from mlportal_cli.client import CliError
from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.output import Result, columns

# The providers the lab registers, and what stands in for each here.
PROVIDERS = {
    "Microsoft.ContainerService": "the Docker engine of each environment (mlportal env setup)",
    "Microsoft.ContainerRegistry": "the Docker engine's image store (images are built where they run)",
}
PROVIDER_COLUMNS = columns(("Namespace", "namespace"), ("RegistrationState", "registrationState"),
                           ("Provided by", "providedBy"))


def _engine(ctx: Context) -> tuple[bool, str]:
    """Whether the portal's Docker engine answers, from its health report (which answers 503 when a
    part is down, with the same JSON)."""
    client = ctx.client
    try:
        response = client.session.get(client.api_url("healthz/"), timeout=(5, 15))
        docker = response.json()["parts"]["docker"]
        if not isinstance(docker, dict):
            raise TypeError("parts.docker is not an object")
    except requests.exceptions.RequestException as exc:
        raise CliError(f"cannot reach the portal at {client.url}: {exc.__class__.__name__} "
                       "(is the portal running, and is the URL right?)") from None
    except (ValueError, KeyError, TypeError):
        raise CliError(f"{client.url} did not answer like an MLPortal health report: is this an MLPortal URL?") from None
    return bool(docker.get("ok")), str(docker.get("detail") or "")


def _rows(ctx: Context, namespaces: list[str]) -> list[dict]:
    ok, detail = _engine(ctx)
    state = "Registered" if ok else "NotRegistered"
    return [{"namespace": name, "registrationState": state,
             "providedBy": PROVIDERS[name] + ("" if ok else f"; the engine is down: {detail}")} for name in namespaces]


def _known(name: str) -> str:
    for known in PROVIDERS:
        if known.lower() == (name or "").lower():
            return known
    raise CliError(f"unknown provider {name!r}: the lab registers {' and '.join(PROVIDERS)}")


def provider_register(ctx: Context):
    name = _known(ctx.arg("namespace"))
    ctx.note(f"nothing to register: {name} is {PROVIDERS[name]}")
    return Result(_rows(ctx, [name])[0])


def provider_list(ctx: Context):
    return Result(_rows(ctx, list(PROVIDERS)), PROVIDER_COLUMNS)


def register(subparsers) -> None:
    sub = add_group(subparsers, "provider", help="The lab's Azure resource providers: their counterparts here.")
    parser = add_command(sub, "register", help="Check a provider the lab registers (nothing to register here).",
                         example="mlportal provider register -n Microsoft.ContainerService", func=provider_register)
    parser.add_argument("-n", "--namespace", required=True, metavar="NAMESPACE",
                        help="Microsoft.ContainerService or Microsoft.ContainerRegistry")
    add_command(sub, "list", help="The lab's providers and whether the Docker engine behind them answers.",
                example="mlportal provider list --query \"[?contains(namespace,'Container')]\" -o table",
                func=provider_list)
