"""Settings come from the environment and fail loudly; production refuses to start unsafe."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from mlportal import env

REPO = Path(__file__).resolve().parents[2]


def _django(tmp_path, extra_env: dict, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "MLPORTAL_MODE", "ALLOWED_HOSTS", "DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    environ.update({"MLPORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mlportal.settings"}, **extra_env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = _django(tmp_path, {"MLPORTAL_MODE": "production", "ALLOWED_HOSTS": "ml.example.org"}, "check")
    assert result.returncode != 0
    assert "needs SECRET_KEY" in result.stderr


def test_production_with_its_settings_passes_the_deploy_check(tmp_path):
    result = _django(
        tmp_path,
        {"MLPORTAL_MODE": "production", "ALLOWED_HOSTS": "ml.example.org", "SECRET_KEY": "k" * 20 + "Zx9!q" * 10},
        "check", "--deploy", "--fail-level", "WARNING",
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_embedded_mode_keeps_one_secret_key_per_data_folder(tmp_path):
    assert _django(tmp_path, {}, "check").returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) > 50
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"
    assert _django(tmp_path, {}, "check").returncode == 0
    assert (tmp_path / "secret_key").read_text() == key


def test_the_instance_id_comes_from_the_environment_and_a_bad_one_is_refused(tmp_path):
    """README documented MLPORTAL_INSTANCE_ID, but the settings never read it: two portals on one
    engine whose databases had the same name shared one label and swept each other's containers."""
    shown = _django(tmp_path, {"MLPORTAL_INSTANCE_ID": "portal-b"}, "shell", "-c",
                    "from workspaces.instance import portal_instance; print(portal_instance())")
    assert shown.returncode == 0 and shown.stdout.strip().splitlines()[-1] == "portal-b", shown.stdout + shown.stderr
    bad = _django(tmp_path, {"MLPORTAL_INSTANCE_ID": "two words"}, "check")
    assert bad.returncode != 0 and "MLPORTAL_INSTANCE_ID='two words' must be 1 to 64 letters" in bad.stderr


def test_a_bad_value_names_the_variable(tmp_path):
    result = _django(tmp_path, {"MLPORTAL_MAX_REPLICAS": "many"}, "check")
    assert result.returncode != 0 and "MLPORTAL_MAX_REPLICAS='many' is not an integer" in result.stderr


@pytest.mark.parametrize(
    "reader, raw, expected",
    [(lambda: env.env_bool("X_T", False), "yes", True), (lambda: env.env_bool("X_T", True), "off", False),
     (lambda: env.env_int("X_T", 1), "42", 42), (lambda: env.env_list("X_T", []), "a, b,,c", ["a", "b", "c"])],
)
def test_typed_readers_read_good_values(monkeypatch, reader, raw, expected):
    monkeypatch.setenv("X_T", raw)
    assert reader() == expected


@pytest.mark.parametrize(
    "reader, raw",
    [(lambda: env.env_bool("X_T"), "maybe"), (lambda: env.env_int("X_T", 1, minimum=5), "2"),
     (lambda: env.env_float("X_T", 1.0), "fast"), (lambda: env.env_choice("X_T", "a", {"a", "b"}), "c")],
)
def test_typed_readers_fail_loudly_on_bad_values(monkeypatch, reader, raw):
    monkeypatch.setenv("X_T", raw)
    with pytest.raises(ImproperlyConfigured, match="X_T"):
        reader()


def test_tasks_run_under_the_time_limits_of_their_queue(settings):
    from mlportal.celery import app

    app.loader.import_default_modules()
    app.finalize(auto=True)
    limits = settings.CELERY_QUEUE_TIME_LIMITS
    checked = 0
    for name, task in app.tasks.items():
        if name.split(".")[0] not in ("runs", "registry", "deployments", "monitoring"):
            continue
        queue = app.amqp.router.route({}, name)["queue"].name  # where Celery really sends it
        assert (task.soft_time_limit, task.time_limit) == limits[queue], name
        checked += 1
    assert limits["builds"] == (settings.MLPORTAL_BUILD_TIMEOUT, settings.MLPORTAL_BUILD_TIMEOUT + 120)
    assert limits["runs"][0] > settings.MLPORTAL_RUN_TIMEOUT_MAX
    assert all(soft < hard for soft, hard in limits.values())
    assert checked >= 5


def test_maintenance_never_shares_a_queue_with_runs(settings):
    """Sweeps, reconcile, builds and deploys go to queues that the runs worker does not serve."""
    from mlportal.celery import app

    app.loader.import_default_modules()
    app.finalize(auto=True)
    route = lambda name: app.amqp.router.route({}, name)["queue"].name  # noqa: E731
    assert route("runs.tasks.execute_run") == "runs"
    periodic = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"runs.tasks.sweep_lost_runs", "deployments.tasks.reconcile_services"} <= periodic
    for name in periodic | {"registry.tasks.build_image", "deployments.tasks.deploy_service"}:
        assert route(name) != "runs", name


def test_the_embedded_broker_is_looked_at_ten_times_a_second(tmp_path):
    """kombu's file-system transport polls its folder; at its default (1 s) every hop of the
    autoscaler (a tick re-sent, the scale it decided) waited up to a second more."""
    result = _django(tmp_path, {"CELERY_BROKER_URL": "filesystem://"}, "shell", "-c",
                     "from mlportal.celery import app; c = app.connection_for_read(); print(c.transport.polling_interval)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0.1"


def test_an_administrators_scan_allow_list_comes_from_the_environment_and_a_bad_entry_stops_startup(tmp_path):
    # Issue 20: the allow list is a setting a portal administrator extends (MLPORTAL_SCAN_ALLOW).
    judge = ("import io; from registry import model_scan, scanning; "
             "data = b'\\x80\\x04\\x8c\\x0cmylab.models\\x8c\\x06Ranker\\x93)\\x81.'; "
             "print(scanning.scan_file(io.BytesIO(data), allow=model_scan.scan_allow()).verdict)")
    assert _django(tmp_path, {}, "shell", "-v", "0", "-c", judge).stdout.split() == ["unknown"]
    allowed = _django(tmp_path, {"MLPORTAL_SCAN_ALLOW": "otherlab, mylab.models:Ranker"}, "shell", "-v", "0", "-c", judge)
    assert allowed.stdout.split() == ["safe"], allowed.stderr
    bad = _django(tmp_path, {"MLPORTAL_SCAN_ALLOW": "my lab"}, "check")
    assert bad.returncode != 0 and "MLPORTAL_SCAN_ALLOW" in bad.stderr and "is not a package" in bad.stderr
