"""A run's metrics tab with 1,000,000 points in 10 series, in Chromium.

    .venv/bin/python benchmarks/charts.py [--series 10] [--points 100000] [--repeats 5] [--server portal|thread]

Builds a throwaway portal (a throwaway PostgreSQL database next to DATABASE_URL's when it names
one, else SQLite under a temporary MLPORTAL_DATA_DIR; migrated from scratch) with
one run whose 10 series hold 100,000 points each, written through the worker's own service
(`run_record_metrics`); the worker's end-of-run step (`runs.worker.prepare_charts`) downsamples
them, timed. The portal then serves on a local port as ``make run`` serves it (uvicorn, its own
processes; ``--server thread``: Django's threaded WSGI server in a thread of this process, which
shares its interpreter lock with Playwright's driver — how the figures before 2026-12-01 18:00
were taken) and Playwright's Chromium (Debian's) opens `/runs/<id>/#metrics` as a logged-in
member, `--repeats` times with a fresh cache each time. Per visit:

* **render**: navigation start to the chart having drawn all 10 series (`data-state="drawn"`,
  `data-series="10"`), read from `performance.now()` in the page;
* **bytes**: what crossed the wire for the page and everything it loaded (Resource Timing
  `transferSize`, navigation included): HTML, CSS, JavaScript and the series data.

It also checks the data: every series reaches its last step (99,999). Goals: render < 1 s and
page + data < 200 KB (the old page: 2.7 s and 1.6 MB, and it stopped at step 49,999).
Ends with ``charts render_ms=… kbytes=…``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

RENDER_GOAL_MS = 1000.0
BYTES_GOAL = 200 * 1024


def setup_django(data_dir: Path, database_url: str | None) -> None:
    os.environ["MLPORTAL_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlportal.settings")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(series: int, points: int):
    """A user, a workspace, a project and one completed run with `series` × `points` points."""
    from django.contrib.auth import get_user_model

    from runs import metrics, services, worker
    from workspaces import services as ws

    user = get_user_model().objects.create_user(username="olivia", password="bench-password-1")
    workspace = ws.workspace_create(name="charts", user=user)
    project = services.project_create(workspace=workspace, name="deep", user=user)
    services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=user)
    run = services.run_submit(project=project, script="train.py", user=user)
    worker.run_claim(run_id=run.id, worker="bench")
    worker.run_mark_running(run_id=run.id, image="bench")
    t0 = time.perf_counter()
    for s in range(series):
        batch = []
        for step in range(points):
            batch.append({"name": f"series_{s:02d}", "value": math.exp(-step / points * (s + 1)) + 0.01 * math.sin(step),
                          "step": step, "time": None})
            if len(batch) == 20_000:
                metrics.run_record_metrics(run_id=run.id, workspace_id=workspace.id, points=batch)
                batch = []
        if batch:
            metrics.run_record_metrics(run_id=run.id, workspace_id=workspace.id, points=batch)
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    worker.prepare_charts(run.id)
    prepare_s = time.perf_counter() - t0
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    return user, run, insert_s, prepare_s


@contextlib.contextmanager
def _thread_server():
    base, server = serve()
    try:
        yield base
    finally:
        server.shutdown()


def serve():
    """The portal on 127.0.0.1:<free port> in a daemon thread; returns (base url, server)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    port = common.free_port()
    server = ThreadedWSGIServer(("127.0.0.1", port), QuietHandler, allow_reuse_address=True)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


@contextlib.contextmanager
def portal_process():
    """The portal as ``make run`` serves it (``scripts/run_portal.web_command``: uvicorn,
    ``WEB_WORKERS`` processes, default 2) on a free port, in its own process group on this
    run's database and data folder; yields its base url. Unlike the in-process server, it does
    not share an interpreter (and its lock) with Playwright's driver."""
    sys.path.insert(0, str(common.REPO / "scripts"))
    import run_portal

    port = common.free_port()
    env = {**os.environ, "WEB_WORKERS": os.environ.get("WEB_WORKERS", "2"), "MLPORTAL_ACCESS_LOG": "0"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    saved = os.environ.copy()
    try:
        os.environ.update(env)  # web_command reads (and may set) PROMETHEUS_MULTIPROC_DIR there
        command = run_portal.web_command(Path(sys.executable).parent, "127.0.0.1", str(port))
        env = os.environ.copy()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    process = subprocess.Popen(command, cwd=common.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        common.wait_http("127.0.0.1", port, "/login/", timeout_s=120, alive=lambda: process.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def session_cookie(user) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    # The backend that loads users (not a guard such as django-axes', which may come first).
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


MEASURE = """() => {
  const entries = [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')];
  const nav = entries[0], data = entries.filter((e) => e.name.includes('/series/'));
  const statics = entries.filter((e) => e.name.includes('/static/'));
  const chart = document.querySelector('[data-testid=metric-chart]').dataset;
  return { bytes: entries.reduce((n, e) => n + (e.transferSize || 0), 0),
           files: entries.map((e) => [e.name.replace(location.origin, ''), e.transferSize]),
           drawn: window.__drawnAt, htmlStart: nav.responseStart, html: nav.responseEnd,
           server: nav.responseStart - nav.requestStart, ready: nav.domContentLoadedEventEnd,
           statics: Math.max(0, ...statics.map((e) => e.responseEnd)),
           seriesRequests: data.length, dataStart: data.length ? data[0].startTime : null,
           dataEnd: data.length ? data[0].responseEnd : null,
           from: chart.from, loadAt: parseFloat(chart.loadAt), draw: parseFloat(chart.drawMs) };
}"""

# Installed before the page's own scripts (an init script), so the first animation frame after the
# chart has drawn is seen however late the benchmark's driver gets to the page.
WATCH = """(() => {
  const check = () => {
    const el = document.querySelector('[data-testid=metric-chart]');
    if (el && el.dataset.state === 'drawn' && el.dataset.series === String(%d)) {
      window.__drawnAt = performance.now(); window.__maxStep = el.dataset.maxStep;
    } else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})()"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--server", choices=("portal", "thread"), default="portal",
                        help="portal: uvicorn in its own process, as make run serves it (default); thread: Django's "
                             "threaded WSGI server inside this process (the figures before 2026-12-01 18:00)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    data_dir = Path(tempfile.mkdtemp(prefix="mlportal-charts-"))
    import ingestion

    database_url, drop = ingestion.make_database(data_dir)
    servers = contextlib.ExitStack()
    try:
        common.log(f"building a portal under {data_dir} on {'PostgreSQL' if database_url else 'SQLite'} "
                   f"(load average {common.loadavg()})")
        setup_django(data_dir, database_url)
        user, run, insert_s, prepare_s = fill(args.series, args.points)
        total = args.series * args.points
        common.log(f"inserted {total} points in {insert_s:.1f} s; the worker downsampled them in {prepare_s:.2f} s")
        base = servers.enter_context(portal_process() if args.server == "portal" else _thread_server())
        key = session_cookie(user)
        from django.conf import settings

        renders, sizes, files, phases = [], [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            try:
                for i in range(args.repeats + 1):  # the first visit warms the server (templates, imports)
                    context = browser.new_context(viewport={"width": 1300, "height": 900})
                    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": key, "url": base}])
                    context.add_init_script(WATCH % args.series)
                    page = context.new_page()
                    page.goto(f"{base}/runs/{run.id}/#metrics", wait_until="commit")
                    page.wait_for_function("() => window.__drawnAt !== undefined", timeout=60_000)
                    max_step = page.evaluate("() => window.__maxStep")
                    figures = page.evaluate(MEASURE)
                    context.close()
                    if str(max_step) != str(args.points - 1):
                        raise SystemExit(f"the chart stopped at step {max_step}, not {args.points - 1}")
                    if i:
                        phases.append(figures)
                        renders.append(figures["drawn"])
                        sizes.append(figures["bytes"])
                        files = figures["files"]
            finally:
                browser.close()
    finally:
        servers.close()  # the portal's processes first: the database goes next
        drop()
        shutil.rmtree(data_dir, ignore_errors=True)

    render = statistics.median(renders)
    size = statistics.median(sizes)
    print(f"charts: one run, {args.series} series × {args.points} points = {total} points "
          f"({'PostgreSQL' if database_url else 'SQLite'}; served by "
          f"{'uvicorn as make run starts it' if args.server == 'portal' else 'a thread of this process'}; "
          f"load average {common.loadavg()}), "
          f"median of {args.repeats} visits in Chromium")
    print(f"  worker's downsampling at the end of the run: {prepare_s * 1000:.0f} ms")
    print(f"  metrics tab drawn with every series to step {args.points - 1}: {render:.0f} ms "
          f"(max {max(renders):.0f})  goal < {RENDER_GOAL_MS:.0f} ms: {'met' if render < RENDER_GOAL_MS else 'MISSED'}")
    print(f"  page + data over the wire: {size / 1024:.1f} KB  goal < {BYTES_GOAL // 1024} KB: "
          f"{'met' if size < BYTES_GOAL else 'MISSED'}")
    med = lambda key: statistics.median(p[key] or 0 for p in phases)  # noqa: E731
    sources = sorted({p["from"] or "fetch" for p in phases})
    print(f"  where the time goes (medians, ms from navigation start): page's server time {med('server'):.0f} "
          f"(first byte at {med('htmlStart'):.0f}), HTML in {med('html'):.0f}, stylesheet and scripts in "
          f"{med('statics'):.0f}, DOM ready {med('ready'):.0f}, chart started {med('loadAt'):.0f}, drawn {render:.0f}")
    print(f"  series from {'/'.join(sources)}: {max(p['seriesRequests'] for p in phases)} series request(s)"
          + (f", requested {med('dataStart'):.0f} and in {med('dataEnd'):.0f}" if any(p['seriesRequests'] for p in phases) else "")
          + f"; the chart's draw itself {med('draw'):.1f} ms")
    for name, n in files:
        print(f"    {n / 1024:7.1f} KB  {name[:90]}")
    print(f"charts render_ms={render:.0f} kbytes={size / 1024:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
