"""`webhook create|list|deliveries|test`: outgoing webhooks of a workspace (HMAC-signed POSTs on
run finished, model registered, image built, service updated, pipeline finished, drift detected)."""
from __future__ import annotations

import urllib.parse

from mlportal_cli.context import Context, add_command, add_group
from mlportal_cli.output import Result, columns

WEBHOOK_COLUMNS = columns(("Name", "name"), ("URL", "url"), ("Events", lambda r: ", ".join(r.get("events") or []) or "all"),
                          ("Enabled", lambda r: "yes" if r.get("enabled") else "no"),
                          ("Last delivery", lambda r: f"{r['last_delivery']['event']} {r['last_delivery']['status']}"
                           if r.get("last_delivery") else ""), ("ID", "id"))
DELIVERY_COLUMNS = columns(("Event", "event"), ("Status", "status"), ("Attempts", "attempts"),
                           ("Response", lambda r: r.get("response_code") or ""),
                           ("Latency", lambda r: f"{r['latency_ms']:.0f} ms" if r.get("latency_ms") is not None else ""),
                           ("When", "created_at"), ("Error", lambda r: r.get("error") or ""), ("ID", "id"))


def _q(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def webhook_create(ctx: Context):
    body = {"name": ctx.arg("webhook"), "url": ctx.arg("url")}
    if ctx.arg("events"):
        body["events"] = [e.strip() for e in ctx.arg("events").split(",") if e.strip()]
    webhook = ctx.client.post("webhooks/", body)
    ctx.progress(f"Created webhook {webhook['name']} → {webhook['url']}. Its secret (shown this once): {webhook['secret']}")
    ctx.progress("Each POST carries X-MLPortal-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>.")
    return Result(webhook)


def webhook_list(ctx: Context):
    params = {"workspace": ctx.list_workspace()}
    items, total = ctx.client.list("webhooks/", params={k: v for k, v in params.items() if v}, limit=ctx.arg("top"))
    return Result(items, WEBHOOK_COLUMNS, total)


def webhook_deliveries(ctx: Context):
    items, total = ctx.client.list(f"webhooks/{_q(ctx.arg('webhook'))}/deliveries/", limit=ctx.arg("top"))
    return Result(items, DELIVERY_COLUMNS, total)


def webhook_test(ctx: Context):
    delivery = ctx.client.post(f"webhooks/{_q(ctx.arg('webhook'))}/test/")
    ctx.progress(f"A test delivery is queued ({delivery['id']}); 'mlportal webhook deliveries -n {ctx.arg('webhook')}' shows the answer.")
    return Result(delivery)


def register(subparsers) -> None:
    group = add_group(subparsers, "webhook", help="Outgoing webhooks: create, list, deliveries, test.")
    parser = add_command(group, "create", help="Create an outgoing webhook (workspace owners); prints its secret once.",
                         example="mlportal webhook create -n chatops --url https://hooks.example.com/mlportal "
                                 "--events pipeline.finished,service.updated", func=webhook_create)
    parser.add_argument("-n", "--name", dest="webhook", required=True, metavar="NAME", help="the webhook's name")
    parser.add_argument("--url", required=True, help="where the portal POSTs (http or https)")
    parser.add_argument("--events", metavar="A,B", help="run.finished, model.registered, image.built, service.updated, "
                                                        "pipeline.finished, drift.detected (default: all)")
    parser = add_command(group, "list", help="List webhooks.", example="mlportal webhook list -o table", func=webhook_list)
    parser.add_argument("--top", type=int, default=100, metavar="N", help="show at most N (default 100)")
    parser = add_command(group, "deliveries", help="A webhook's delivery log: status, attempts, response code, latency.",
                         example="mlportal webhook deliveries -n chatops", func=webhook_deliveries)
    parser.add_argument("-n", "--name", dest="webhook", required=True, metavar="NAME", help="the webhook")
    parser.add_argument("--top", type=int, default=50, metavar="N", help="show at most N (default 50)")
    parser = add_command(group, "test", help="Send a test delivery (a ping).", example="mlportal webhook test -n chatops",
                         func=webhook_test)
    parser.add_argument("-n", "--name", dest="webhook", required=True, metavar="NAME", help="the webhook")
