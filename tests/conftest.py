"""The shared fixture set: a team workspace with an owner, a contributor and a reader, and an
outsider who owns another workspace. Every endpoint test tries the outsider too.

Integration fixtures start the real parts: a Celery worker process (`celery_worker`) bound to the
test database, and the live server (pytest-django's `live_server`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.signals import before_task_publish
from django.conf import settings
from rest_framework.test import APIClient

from tests.real_parts import missing_part, pytest_runtest_makereport  # noqa: F401 (the strict-skip hook)
from workspaces import services
from workspaces.models import Membership, Role

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
# Local runs are an administrator's choice, off by default; the test deployment turns the portal
# setting on (for this process and the workers it starts) and tests allow them per workspace with
# the `local_runs` fixture. Their working copies and virtualenvs live outside any home folder, so
# the unprivileged run user can reach them; shared between sessions, as the venvs take a while.
LOCAL_RUN_ROOT = Path("/var/tmp/mlportal-test-local-runs")


# The test deployment's engine allowlist: tests point environments at closed ports of this host
# and at 10.0.0.x to see unreachable engines; tests of the allowlist set their own.
TEST_ENGINE_HOSTS = ["127.0.0.1", "10.0.0.0/8"]


@pytest.fixture(scope="session", autouse=True)
def local_runs_setting():
    settings.MLPORTAL_LOCAL_RUNS = True
    settings.MLPORTAL_LOCAL_RUN_ROOT = LOCAL_RUN_ROOT
    settings.MLPORTAL_ENGINE_HOSTS = list(TEST_ENGINE_HOSTS)
    settings.MLPORTAL_PUBLISH_ADDRESSES = ["127.0.0.1", "10.0.0.0/8"]
    settings.MLPORTAL_WEBHOOK_HOSTS = ["127.0.0.1"]  # the tests' receivers listen here


@pytest.fixture
def local_runs(workspace):
    """Allows local runs in the team workspace, as a portal administrator would in the admin."""
    workspace.local_runs_allowed = True
    workspace.save(update_fields=["local_runs_allowed"])
    return workspace


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, password: str = "pw-for-tests-1"):
        return django_user_model.objects.create_user(username=username, password=password)

    return make


@pytest.fixture
def owner(make_user):
    return make_user("olivia")


@pytest.fixture
def workspace(owner):
    return services.workspace_create(name="team", user=owner)


@pytest.fixture
def contributor(make_user, workspace):
    user = make_user("carl")
    Membership.objects.create(workspace=workspace, user=user, role=Role.CONTRIBUTOR)
    return user


@pytest.fixture
def reader(make_user, workspace):
    user = make_user("rita")
    Membership.objects.create(workspace=workspace, user=user, role=Role.READER)
    return user


@pytest.fixture
def outsider(make_user):
    user = make_user("oscar")
    services.workspace_create(name="elsewhere", user=user)
    return user


def _client_for(user) -> APIClient:
    client = APIClient()
    _, secret = services.token_create(user=user, name="tests")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    return client


@pytest.fixture
def api_for():
    """api_for(user) -> an APIClient authenticated with a fresh bearer token of `user`."""
    return _client_for


@pytest.fixture
def owner_api(owner, workspace):
    return _client_for(owner)


@pytest.fixture
def contributor_api(contributor):
    return _client_for(contributor)


@pytest.fixture
def reader_api(reader):
    return _client_for(reader)


@pytest.fixture
def outsider_api(outsider):
    return _client_for(outsider)


@pytest.fixture
def silent_engine():
    """An engine (or a replica) that accepts connections and never answers: tests.helpers.SilentEngine."""
    from tests.helpers import SilentEngine

    engine = SilentEngine()
    yield engine
    engine.close()


@pytest.fixture
def page_client(client):
    """page_client(user) -> Django's test client logged in as `user` (for HTML pages)."""

    def login(user):
        client.force_login(user)
        return client

    return login


# --- real parts ---------------------------------------------------------------------------------

def worker_env(db_settings: dict) -> dict[str, str]:
    """Environment for a subprocess (worker, server, CLI) that must use the test database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "mlportal.settings"
    env["MLPORTAL_DATA_DIR"] = str(settings.DATA_DIR)
    engine = db_settings["ENGINE"]
    if engine.endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db_settings['NAME']}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db_settings['USER']}:{db_settings['PASSWORD']}@{db_settings['HOST'] or 'localhost'}:"
            f"{db_settings['PORT'] or 5432}/{db_settings['NAME']}"
        )
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["PYTHONUNBUFFERED"] = "1"
    env["MLPORTAL_LOCAL_RUNS"] = "1"
    env["MLPORTAL_LOCAL_RUN_ROOT"] = str(LOCAL_RUN_ROOT)
    env["MLPORTAL_ENGINE_HOSTS"] = ",".join(TEST_ENGINE_HOSTS)
    env["MLPORTAL_PUBLISH_ADDRESSES"] = "127.0.0.1,10.0.0.0/8"
    env["MLPORTAL_WEBHOOK_HOSTS"] = "127.0.0.1"
    return env


WORKER_QUEUES = ("runs", "builds", "deploy", "celery")  # the session worker's, and what its idle wait counts


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real Celery worker (queues runs, builds, deploy, celery) on the test database, for the session.

    Tests that use it must use `transactional_db` so the worker sees their rows.
    """
    from django.db import connection

    with django_db_blocker.unblock():
        db_settings = dict(connection.settings_dict)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "w")
    node = f"test-worker-{os.getpid()}@{socket.gethostname()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mlportal", "worker", "-Q", ",".join(WORKER_QUEUES),
         "-c", "3", "--loglevel", "INFO", "-n", node, "--without-gossip", "--without-mingle"],
        cwd=REPO, env=worker_env(db_settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    from mlportal.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Celery worker exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if app.control.ping(timeout=1):
                break
        except Exception:  # broker not ready yet
            time.sleep(0.5)
    else:
        raise RuntimeError(f"Celery worker did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
    proc.log_path = log_path
    proc.node = node
    proc.broker_url = app.conf.broker_url
    _session_worker.append(proc)
    yield proc
    _session_worker.clear()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def celery_worker(celery_worker_process, transactional_db):
    return celery_worker_process


@pytest.fixture
def remove_our_containers():
    """Removes, after the test, every service container this test session's portal started, so a
    failing test leaves nothing running."""
    yield
    from compute.runner import list_containers, remove_container
    from deployments.worker import LABEL_PORTAL, portal_instance

    instance = portal_instance()
    for container in list_containers("service"):
        if container["labels"].get(LABEL_PORTAL) == instance:
            remove_container(container["id"])


# A test that sends tasks leaves them to the session worker, which may still be running them on
# the test database when the test ends: its open transaction (a row lock) and the flush's TRUNCATE
# then deadlock, the flush fails, and the next test finds the last one's rows (a CI run saw
# "couldn't be flushed" then "olivia already exists"). So a test that published a task waits,
# before its fixtures are torn down, until the worker has nothing queued, reserved or running.
_session_worker: list = []
_published_in_test: list = []
IDLE_WAIT_SECONDS = 60


@before_task_publish.connect(weak=False)
def _note_publish(**_):
    _published_in_test.append(True)


def _worker_backlog(app, node: str) -> int:
    """Tasks queued in the broker for the session worker's queues, plus those it holds."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        queued = sum(client.llen(key) for queue in WORKER_QUEUES for key in client.scan_iter(match=f"{queue}*")
                     if client.type(key) == b"list")
    inspect = app.control.inspect(destination=[node], timeout=2)
    held = 0
    for reply in (inspect.active(), inspect.reserved()):
        held += sum(len(tasks) for tasks in (reply or {}).values())
    return queued + held


def wait_for_idle_worker(limit: float = IDLE_WAIT_SECONDS) -> bool:
    """True once the session worker has no work left (or none runs); False past `limit` seconds."""
    if not _session_worker or _session_worker[0].poll() is not None:
        return True
    from mlportal.celery import app

    worker = _session_worker[0]
    if app.conf.broker_url != worker.broker_url:  # a test on a broker of its own (tests/durable)
        return True
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if _worker_backlog(app, worker.node) == 0:
                return True
        except Exception as exc:  # the broker is down (a test stopped it): nothing to wait for
            print(f"\nwaiting for the session worker: {exc!r}", file=sys.stderr)
            return True
        time.sleep(0.2)
    return False


# Processes the session keeps running on the test database (the ASGI server re-reads its routing
# table every quarter second with joins across services, images and replicas) take their locks one
# table at a time, as the flush's TRUNCATE of every table does: PostgreSQL then finds a deadlock and
# cancels the flush, whose transaction rolls back whole (a CI run saw "couldn't be flushed", then the
# next test's "olivia already exists"). The flush is retried on a deadlock or a lock it could not
# get; any other failure is raised as before.
FLUSH_ATTEMPTS = 6
LOCK_CONFLICTS = {"40P01", "55P03"}  # deadlock_detected, lock_not_available


def _lock_conflict(exc: BaseException | None) -> bool:
    while exc is not None:
        if getattr(exc, "sqlstate", None) in LOCK_CONFLICTS:
            return True
        exc = exc.__cause__
    return False


def _retry_flush_on_lock_conflicts() -> None:
    from django.core.management.base import CommandError
    from django.core.management.commands import flush

    handle = flush.Command.handle
    if getattr(handle, "retries_lock_conflicts", False):
        return

    def retrying(self, **options):
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                return handle(self, **options)
            except CommandError as exc:
                if attempt == FLUSH_ATTEMPTS or not _lock_conflict(exc.__cause__):
                    raise
                print(f"\nthe flush met a lock conflict ({exc.__cause__}); attempt {attempt + 1}", file=sys.stderr)
                time.sleep(0.1 * attempt)

    retrying.retries_lock_conflicts = True
    flush.Command.handle = retrying


_retry_flush_on_lock_conflicts()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    published = bool(_published_in_test)
    _published_in_test.clear()
    if published and not wait_for_idle_worker():
        print(f"\n{item.nodeid}: the session worker still had work {IDLE_WAIT_SECONDS} s after the test", file=sys.stderr)
    yield


# --- the browser (one Chromium for the whole session, shared by every app's page tests) ----------

@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's) driven by Playwright, for the session."""
    import os
    import shutil

    try:
        import playwright.sync_api as playwright_api
    except ImportError as exc:
        missing_part("Chromium", f"Playwright is not installed ({exc})")

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(executable):
        missing_part("Chromium", f"{executable} does not exist (scripts/install_system_packages.sh installs it)")

    # Playwright's sync API keeps an event loop running in this thread, which Django's ORM takes
    # for an async context; the test code itself stays synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser
        finally:
            browser.close()
            if previous is None:
                os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
            else:
                os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser_page(browser, live_server, client):
    """browser_page(user) -> a Playwright page logged in as `user` on the live server."""
    from django.conf import settings as django_settings

    contexts = []

    def open_for(user):
        client.force_login(user)
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                              "url": live_server.url}])
        contexts.append(context)
        return context.new_page()

    yield open_for
    for context in contexts:
        context.close()
