"""MLPortal settings, read from the environment (see README "Configuration").

Two shapes: the embedded default (SQLite in WAL mode, a file-system Celery broker, all files under
MLPORTAL_DATA_DIR, the local Docker engine) and the team configuration (DATABASE_URL, CELERY_BROKER_URL,
SECRET_KEY, ALLOWED_HOSTS). MLPORTAL_MODE=production refuses to start without a secret key.
"""
from __future__ import annotations

import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from mlportal.env import env_bool, env_choice, env_float, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
MODE = env_choice("MLPORTAL_MODE", "development", {"development", "production"})
PRODUCTION = MODE == "production"
DEBUG = env_bool("DEBUG", False)

DATA_DIR = env_path("MLPORTAL_DATA_DIR", BASE_DIR / "data")
DATA_DIR.mkdir(parents=True, exist_ok=True)
if DATA_DIR.stat().st_uid == __import__("os").geteuid():
    DATA_DIR.chmod(0o700)  # the database, SECRET_KEY and the admin password: the portal's user only


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if PRODUCTION and len(key) < 50:
            raise ImproperlyConfigured("SECRET_KEY is too short for production: use at least 50 random characters")
        return key
    if PRODUCTION:
        raise ImproperlyConfigured(
            "MLPORTAL_MODE=production needs SECRET_KEY; generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(64))'"
        )
    # Embedded mode: one random key per data folder, kept so sessions survive a restart.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "django_celery_beat",
    "workspaces",
    "runs",
    "registry",
    "deployments",
    "retention",
    "gateway",
    "monitoring",
    "pipelines",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "workspaces.middleware.BodySizeLimitMiddleware",
    "workspaces.middleware.JsonDepthMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "workspaces.middleware.CurrentWorkspaceMiddleware",
    "workspaces.idempotency.IdempotencyMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "mlportal.urls"
WSGI_APPLICATION = "mlportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "workspaces.context_processors.portal",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
_SQLITE_OPTIONS = {
    # WAL lets the web process read while the worker writes; IMMEDIATE avoids lock upgrades failing.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
    "transaction_mode": "IMMEDIATE",
}
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        DATABASES["default"]["OPTIONS"] = dict(_SQLITE_OPTIONS)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "OPTIONS": dict(_SQLITE_OPTIONS),
            # A file, not memory, so a Celery worker process started by the tests sees the test data.
            "TEST": {"NAME": str(DATA_DIR / "test-db.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# --- login lockout (django-axes) -----------------------------------------------------------------
# A user name tried from one address is locked out after MLPORTAL_LOGIN_FAILURE_LIMIT failures, on
# /login/ and /admin/login/ alike (both log in through the authentication backends), for
# MLPORTAL_LOGIN_COOLOFF_MINUTES; the answer is 429 with Retry-After.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("MLPORTAL_LOGIN_LOCKOUT", True)
AXES_FAILURE_LIMIT = env_int("MLPORTAL_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("MLPORTAL_LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "workspaces.lockout.lockout_response"
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

# --- files ----------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = env_path("STATIC_ROOT", DATA_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Front-end libraries come from npm (package.json), not from copies in the repository.
_NODE_MODULES = BASE_DIR / "node_modules"
if (_NODE_MODULES / "chart.js" / "dist").is_dir():
    STATICFILES_DIRS.append(("vendor/chart.js", _NODE_MODULES / "chart.js" / "dist"))
WHITENOISE_USE_FINDERS = True  # serve straight from the apps' static folders; no collectstatic step needed
MEDIA_ROOT = DATA_DIR / "files"
STORAGES = {
    # FileSystemStorage that removes a partly written file and answers 507 when the disk is full.
    "default": {"BACKEND": "core.filestorage.PortalFileSystemStorage", "OPTIONS": {"location": MEDIA_ROOT}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Captured model data (monitoring/): Parquet partitions in a storage of their own (a folder beside
# the files, or a prefix of the same bucket).
STORAGES["capture"] = {"BACKEND": "core.filestorage.PortalFileSystemStorage",
                       "OPTIONS": {"location": DATA_DIR / "capture"}}
# Where every stored file lives: one folder under the data folder (the default), or an S3-compatible
# bucket (django-storages), which a team with workers on several hosts needs: each worker then reads
# and writes the same files, and no host keeps one the others cannot see (README "Workers on several
# hosts"). Credentials come from boto3's usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY...).
MLPORTAL_STORAGE = env_choice("MLPORTAL_STORAGE", "filesystem", {"filesystem", "s3"})
if MLPORTAL_STORAGE == "s3":
    _bucket = env_str("MLPORTAL_S3_BUCKET")
    if not _bucket:
        raise ImproperlyConfigured("MLPORTAL_STORAGE=s3 needs MLPORTAL_S3_BUCKET (the name of an existing bucket)")
    _prefix = env_str("MLPORTAL_S3_PREFIX").strip("/")
    _s3 = {
        "bucket_name": _bucket,
        "endpoint_url": env_str("MLPORTAL_S3_ENDPOINT_URL") or None,  # empty: AWS itself
        "region_name": env_str("MLPORTAL_S3_REGION") or None,
        # Path style works with every S3-compatible server (MinIO, Ceph, moto) and with AWS.
        "addressing_style": env_choice("MLPORTAL_S3_ADDRESSING_STYLE", "path", {"path", "virtual", "auto"}),
        "default_acl": None,  # private objects; the portal streams every download itself
        "querystring_auth": True,
    }
    STORAGES["default"] = {"BACKEND": "core.s3storage.PortalS3Storage",
                           "OPTIONS": {**_s3, "location": _prefix}}
    STORAGES["capture"] = {"BACKEND": "core.s3storage.PortalS3Storage",
                           "OPTIONS": {**_s3, "location": f"{_prefix}/capture".lstrip("/")}}

# Request size caps: JSON/form bodies and file uploads (413 beyond them, see workspaces.middleware).
MLPORTAL_MAX_BODY_BYTES = env_int("MLPORTAL_MAX_BODY_BYTES", 2 * 1024 * 1024, minimum=1024)
MLPORTAL_MAX_UPLOAD_BYTES = env_int("MLPORTAL_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MLPORTAL_MAX_BODY_BYTES
# Seconds a scoring request may run inside a service container before it answers 504 (0: no limit).
MLPORTAL_SCORING_TIMEOUT_SECONDS = env_float("MLPORTAL_SCORING_TIMEOUT_SECONDS", 60.0, minimum=0)
# The most a service's own request time limit may be (Service.request_timeout_s).
MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS = env_float("MLPORTAL_SCORING_TIMEOUT_MAX_SECONDS", 600.0, minimum=1)
# JSON bodies nested deeper than this answer 400 (see workspaces.middleware.JsonDepthMiddleware).
MLPORTAL_MAX_JSON_DEPTH = env_int("MLPORTAL_MAX_JSON_DEPTH", 64, minimum=8)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = 2000

# --- compute --------------------------------------------------------------------------------
MLPORTAL_BASE_IMAGE = env_str("MLPORTAL_BASE_IMAGE", "python:3.11-slim")
# The debootstrap that builds the base image offline when it cannot be pulled (default: on PATH).
MLPORTAL_DEBOOTSTRAP = env_str("MLPORTAL_DEBOOTSTRAP") or None
MLPORTAL_DOCKER_URL = env_str("DOCKER_HOST") or None  # None: the local engine
# The mlportal.portal label on everything this portal starts or builds on the engine (workspaces.instance):
# set it when two portals share an engine and their databases have the same name.
MLPORTAL_INSTANCE_ID = env_str("MLPORTAL_INSTANCE_ID").strip()
if MLPORTAL_INSTANCE_ID and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", MLPORTAL_INSTANCE_ID):
    raise ImproperlyConfigured(f"MLPORTAL_INSTANCE_ID={MLPORTAL_INSTANCE_ID!r} must be 1 to 64 letters, digits, "
                               "'.', '_' or '-', starting with a letter or digit")
# Machines workspace owners may point environments at (deployments/hosts.py): engine hosts (names,
# addresses, CIDR networks), publish addresses, and whether ssh:// engines are allowed at all.
# Loopback, link-local, 0.0.0.0 and the portal's own addresses need to be listed themselves.
MLPORTAL_ENGINE_HOSTS = env_list("MLPORTAL_ENGINE_HOSTS", [])
MLPORTAL_PUBLISH_ADDRESSES = env_list("MLPORTAL_PUBLISH_ADDRESSES", ["127.0.0.1"])
# Private, loopback and own addresses an outgoing webhook may be sent to (public ones always may).
MLPORTAL_WEBHOOK_HOSTS = env_list("MLPORTAL_WEBHOOK_HOSTS", [])
MLPORTAL_ENGINE_SSH = env_bool("MLPORTAL_ENGINE_SSH", False)
MLPORTAL_CACHE_DIR = env_path("MLPORTAL_CACHE_DIR", Path.home() / ".cache" / "mlportal")
MLPORTAL_WHEEL_CACHE = env_path("MLPORTAL_WHEEL_CACHE", MLPORTAL_CACHE_DIR / "wheels")
MLPORTAL_WORK_DIR = env_path("MLPORTAL_WORK_DIR", DATA_DIR / "work")
# Environment images (mlportal-env:<hash>) nothing used this many days go at the daily retention,
# except the last N used (retention.envimages).
MLPORTAL_ENV_IMAGE_KEEP_DAYS = env_int("MLPORTAL_ENV_IMAGE_KEEP_DAYS", 14, minimum=0)
MLPORTAL_ENV_IMAGE_KEEP_LAST = env_int("MLPORTAL_ENV_IMAGE_KEEP_LAST", 3, minimum=0)
MLPORTAL_RUN_TIMEOUT_MAX = env_int("MLPORTAL_RUN_TIMEOUT_MAX", 6 * 3600, minimum=10)
# Packages published only as source are refused (their build code would run); on, they are built in a
# throwaway container of the base image without network (compute/sourcebuild.py), never on the worker.
MLPORTAL_SOURCE_PACKAGES = env_bool("MLPORTAL_SOURCE_PACKAGES", False)
MLPORTAL_BUILD_TIMEOUT = env_int("MLPORTAL_BUILD_TIMEOUT", 1800, minimum=30)
# At least Azure ML's default autoscale maximum (10), so `--autoscale-enabled` alone gets that default.
MLPORTAL_MAX_REPLICAS = env_int("MLPORTAL_MAX_REPLICAS", 10, minimum=1)
# Swarm reserves this share of a replica's CPU and memory limits on its node (cluster environments).
MLPORTAL_SWARM_RESERVATION = env_float("MLPORTAL_SWARM_RESERVATION", 0.25, minimum=0.0)
# The port a swarm the portal initialises listens on for other nodes (docker swarm join HOST:PORT).
MLPORTAL_SWARM_LISTEN_PORT = env_int("MLPORTAL_SWARM_LISTEN_PORT", 2377, minimum=1)
# The most a project's runs and a service's replicas may ask for (the portal's maxima).
MLPORTAL_RUN_MAX_MEMORY_MB = env_int("MLPORTAL_RUN_MAX_MEMORY_MB", 16 * 1024, minimum=64)
MLPORTAL_RUN_MAX_CPUS = env_float("MLPORTAL_RUN_MAX_CPUS", 8.0, minimum=0.1)
MLPORTAL_SERVICE_MAX_MEMORY_MB = env_int("MLPORTAL_SERVICE_MAX_MEMORY_MB", 16 * 1024, minimum=64)
MLPORTAL_SERVICE_MAX_CPUS = env_float("MLPORTAL_SERVICE_MAX_CPUS", 8.0, minimum=0.1)
# The scoring gateway (gateway/): how often it re-reads services and keys (a regenerated key is
# refused within this plus one query), how often it asks replicas for /ready, the default
# per-service concurrency limit and queue bound (a service may set its own), and how long a queued
# request waits for a slot before it is answered 503.
MLPORTAL_GATEWAY_REFRESH_SECONDS = env_float("MLPORTAL_GATEWAY_REFRESH_SECONDS", 0.5, minimum=0.05)
MLPORTAL_GATEWAY_PROBE_SECONDS = env_float("MLPORTAL_GATEWAY_PROBE_SECONDS", 1.0, minimum=0.1)
MLPORTAL_GATEWAY_CONCURRENCY = env_int("MLPORTAL_GATEWAY_CONCURRENCY", 32, minimum=1)
MLPORTAL_GATEWAY_QUEUE = env_int("MLPORTAL_GATEWAY_QUEUE", 64, minimum=0)
MLPORTAL_GATEWAY_QUEUE_TIMEOUT = env_float("MLPORTAL_GATEWAY_QUEUE_TIMEOUT", 30.0, minimum=0.1)
# How long a scoring request's body may take to arrive after its head (gateway/server.py): past it, 408.
MLPORTAL_GATEWAY_BODY_TIMEOUT = env_float("MLPORTAL_GATEWAY_BODY_TIMEOUT", 30.0, minimum=0.1)
# How long any request head may take from its first byte, and a new connection may stay silent
# (gateway/server.py): past it, 408 and the connection closed.
MLPORTAL_GATEWAY_HEAD_TIMEOUT = env_float("MLPORTAL_GATEWAY_HEAD_TIMEOUT", 10.0, minimum=0.1)
# Where the gateway's per-service slots live (a lock file per service, gateway/slots.py): every web
# process of one host must see the same folder, so a service's limits hold across the processes.
MLPORTAL_GATEWAY_SLOTS_DIR = env_path("MLPORTAL_GATEWAY_SLOTS_DIR", DATA_DIR / "gateway-slots")
# /metrics answers this bearer token; without one, only requests from this host (127.0.0.1, ::1).
MLPORTAL_METRICS_TOKEN = env_str("MLPORTAL_METRICS_TOKEN")
MLPORTAL_LOG_MAX_BYTES = env_int("MLPORTAL_LOG_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
# What a run may write: outputs/ (a project may set less), /tmp (a tmpfs), and the rest of its
# container's writable layer beyond its outputs (the project folder, caches).
MLPORTAL_RUN_OUTPUTS_MAX_MB = env_int("MLPORTAL_RUN_OUTPUTS_MAX_MB", 4096, minimum=1)
MLPORTAL_RUN_TMP_MB = env_int("MLPORTAL_RUN_TMP_MB", 1024, minimum=16)
MLPORTAL_RUN_SCRATCH_MB = env_int("MLPORTAL_RUN_SCRATCH_MB", 2048, minimum=16)
MLPORTAL_LOST_AFTER_SECONDS = env_int("MLPORTAL_LOST_AFTER_SECONDS", 60, minimum=5)
# Local runs (target `local`) run contributor code on the worker's host: off unless this is on AND a
# portal administrator allowed them for the workspace (Admin → Workspaces). They run as
# MLPORTAL_LOCAL_RUN_UID (a uid that owns nothing else) in working copies under MLPORTAL_LOCAL_RUN_ROOT,
# which needs a worker running as root (to switch to that uid) with util-linux's unshare.
MLPORTAL_LOCAL_RUNS = env_bool("MLPORTAL_LOCAL_RUNS", False)
MLPORTAL_LOCAL_RUN_UID = env_int("MLPORTAL_LOCAL_RUN_UID", 61234, minimum=1000)
MLPORTAL_LOCAL_RUN_ROOT = env_path("MLPORTAL_LOCAL_RUN_ROOT", Path("/var/lib/mlportal/local-runs"))
MLPORTAL_LOCAL_RUN_PYTHON = env_str("MLPORTAL_LOCAL_RUN_PYTHON", "")  # default: one the run user may execute
if MLPORTAL_LOCAL_RUN_ROOT.resolve().is_relative_to(DATA_DIR.resolve()):
    raise ImproperlyConfigured("MLPORTAL_LOCAL_RUN_ROOT must lie outside MLPORTAL_DATA_DIR (local runs must not reach it)")
# Queued work (runs, builds) unclaimed this long is sent again (the broker may have lost it).
MLPORTAL_REQUEUE_AFTER_SECONDS = env_int("MLPORTAL_REQUEUE_AFTER_SECONDS", 120, minimum=1)
# How often the maintenance worker's beat runs the sweeps (lost runs, lost work, reconcile).
MLPORTAL_SWEEP_INTERVAL_SECONDS = env_int("MLPORTAL_SWEEP_INTERVAL_SECONDS", 30, minimum=1)
# How often the maintenance worker looks at the Swarm tasks of cluster environments (replaced tasks → events).
MLPORTAL_SWARM_WATCH_SECONDS = env_int("MLPORTAL_SWARM_WATCH_SECONDS", 5, minimum=1)
# How often the maintenance worker pulls captured model data from the replicas (issue 16).
MLPORTAL_CAPTURE_INTERVAL_SECONDS = env_int("MLPORTAL_CAPTURE_INTERVAL_SECONDS", 60, minimum=1)
# Rows a replica keeps for the collector; past it the oldest go and are counted (the Data tab's
# "dropped"). Sent with every pull, so a change reaches running replicas.
MLPORTAL_CAPTURE_SPOOL_ROWS = env_int("MLPORTAL_CAPTURE_SPOOL_ROWS", 10_000, minimum=1)
if MLPORTAL_CAPTURE_SPOOL_ROWS > 1_000_000:  # mlportal_runtime.capture.MAX_SPOOL_ROWS: replicas refuse more
    raise ImproperlyConfigured(f"MLPORTAL_CAPTURE_SPOOL_ROWS={MLPORTAL_CAPTURE_SPOOL_ROWS} is above its maximum of 1000000")
# How often a running retraining pipeline looks again at the step it waits on (a run, a build, an update).
MLPORTAL_PIPELINE_POLL_SECONDS = env_int("MLPORTAL_PIPELINE_POLL_SECONDS", 2, minimum=1)
# Outgoing webhooks: how often the beat turns what happened into deliveries, the first retry's
# wait (it doubles each time) and how many attempts a delivery gets in all.
MLPORTAL_WEBHOOK_SCAN_SECONDS = env_int("MLPORTAL_WEBHOOK_SCAN_SECONDS", 5, minimum=1)
MLPORTAL_WEBHOOK_RETRY_SECONDS = env_int("MLPORTAL_WEBHOOK_RETRY_SECONDS", 2, minimum=1)
MLPORTAL_WEBHOOK_ATTEMPTS = env_int("MLPORTAL_WEBHOOK_ATTEMPTS", 6, minimum=1)

# --- model scanning (registry.scanning: every registered model file, by its opcodes) ---------
# Packages ("mypackage") or single globals ("mymodule:MyClass") added to the built-in allow list of
# model libraries; the deny list (os, subprocess, eval, …) always wins.
MLPORTAL_SCAN_ALLOW = env_list("MLPORTAL_SCAN_ALLOW", [])
try:
    from registry.scanning import parse_allow as _parse_allow

    _parse_allow(MLPORTAL_SCAN_ALLOW)
except ValueError as _exc:
    raise ImproperlyConfigured(f"MLPORTAL_SCAN_ALLOW: {_exc}") from None
MLPORTAL_SCAN_MAX_BYTES = env_int("MLPORTAL_SCAN_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024)
MLPORTAL_SCAN_MAX_MEMBERS = env_int("MLPORTAL_SCAN_MAX_MEMBERS", 1000, minimum=1)
MLPORTAL_SCAN_MAX_OPCODES = env_int("MLPORTAL_SCAN_MAX_OPCODES", 2_000_000, minimum=1000)  # ~5 µs each here

# --- Celery ---------------------------------------------------------------------------------
_BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    # kombu's file-system transport: one folder both ways, so no broker server is needed.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # Broadcast (ping, inspect) exchanges; kombu's default is a folder in the working directory.
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
        # A worker looks for new messages this often (kombu's default, 1 s, was added to every hop: an
        # autoscaler tick re-sent, the scale it decides). A look is one listdir of the folder.
        "polling_interval": 0.1,
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long tasks: don't hoard them on one worker
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    "runs.tasks.*": {"queue": "runs"},
    "registry.tasks.*": {"queue": "builds"},
    "deployments.tasks.*": {"queue": "deploy"},
    "gateway.tasks.*": {"queue": "deploy"},
    # Periodic maintenance (exact names win over the patterns above) goes to the default queue,
    # which the maintenance worker serves with builds and deploys: never behind a training run.
    "runs.tasks.sweep_lost_runs": {"queue": "celery"},
    "runs.tasks.requeue_lost_runs": {"queue": "celery"},
    "runs.tasks.prepare_run_charts": {"queue": "celery"},
    "registry.tasks.requeue_lost_builds": {"queue": "celery"},
    "registry.tasks.remove_engine_image": {"queue": "celery"},
    "retention.tasks.apply_retention": {"queue": "celery"},
    "retention.tasks.remove_images_of_deleted_service": {"queue": "celery"},
    "monitoring.tasks.collect_capture": {"queue": "celery"},
    "monitoring.tasks.compute_drift": {"queue": "celery"},
    "monitoring.tasks.compute_drift_job": {"queue": "celery"},
    "monitoring.tasks.remove_service_capture": {"queue": "celery"},
    # The autoscaler's one chain (a round per due refresh period, for every autoscaled service) never
    # waits behind a deploy.
    "deployments.tasks.autoscale_services": {"queue": "celery"},
    "deployments.tasks.autoscale_service": {"queue": "celery"},  # the old per-service tick, adopted
    "deployments.tasks.watch_swarm_tasks": {"queue": "celery"},
}
# Time limits per queue, on purpose: runs enforce their own (per-project) limit inside compute and
# the task limit is the backstop; builds and deploys are bounded by the engine's work.
CELERY_QUEUE_TIME_LIMITS = {
    "runs": (MLPORTAL_RUN_TIMEOUT_MAX + 300, MLPORTAL_RUN_TIMEOUT_MAX + 600),
    "builds": (MLPORTAL_BUILD_TIMEOUT, MLPORTAL_BUILD_TIMEOUT + 120),
    "deploy": (600, 660),
    "celery": (120, 180),
}
CELERY_TASK_ANNOTATIONS = ["mlportal.celery.QueueTimeLimits"]
CELERY_BEAT_SCHEDULE = {
    "sweep-lost-runs": {"task": "runs.tasks.sweep_lost_runs", "schedule": float(MLPORTAL_SWEEP_INTERVAL_SECONDS)},
    "requeue-lost-runs": {"task": "runs.tasks.requeue_lost_runs", "schedule": float(MLPORTAL_SWEEP_INTERVAL_SECONDS)},
    "requeue-lost-builds": {"task": "registry.tasks.requeue_lost_builds", "schedule": float(MLPORTAL_SWEEP_INTERVAL_SECONDS)},
    "reconcile-services": {"task": "deployments.tasks.reconcile_services", "schedule": float(MLPORTAL_SWEEP_INTERVAL_SECONDS)},
    # Cluster environments: the tasks Swarm replaced, seen within seconds (the full sweep is every 30 s).
    "watch-swarm-tasks": {"task": "deployments.tasks.watch_swarm_tasks", "schedule": float(MLPORTAL_SWARM_WATCH_SECONDS)},
    # Pull the captured rows (issue 16) from every replica, store them as Parquet.
    "collect-capture": {"task": "monitoring.tasks.collect_capture", "schedule": float(MLPORTAL_CAPTURE_INTERVAL_SECONDS)},
    # Hourly: drift of every service with scheduled drift settings against its reference.
    "compute-drift": {"task": "monitoring.tasks.compute_drift", "schedule": crontab(minute=7)},
    # Daily: runs' logs and outputs and unused images past each workspace's retention; dangling layers.
    # Retraining pipelines whose look was lost are advanced again; queued ones of idle pipelines start.
    "sweep-pipelines": {"task": "pipelines.tasks.sweep_pipelines", "schedule": float(MLPORTAL_SWEEP_INTERVAL_SECONDS)},
    # Outgoing webhooks (issue 17): what happened becomes signed deliveries.
    "scan-webhook-events": {"task": "pipelines.tasks.scan_webhook_events", "schedule": float(MLPORTAL_WEBHOOK_SCAN_SECONDS)},
    "apply-retention": {"task": "retention.tasks.apply_retention", "schedule": crontab(hour=3, minute=17)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# The beat reads its schedule from the database (django-celery-beat), so pipelines' schedules set
# in the portal take effect without a restart; the entries above are written there at its start.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "workspaces.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.Pagination",
    "PAGE_SIZE": 25,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["workspaces.throttles.TokenRateThrottle", "workspaces.throttles.TokenWriteRateThrottle"],
}
# POSTs with an Idempotency-Key header: how long their first answer is replayed, and after how long a
# first request that never answered (its process died) frees its key.
MLPORTAL_IDEMPOTENCY_HOURS = env_int("MLPORTAL_IDEMPOTENCY_HOURS", 24, minimum=1)
MLPORTAL_IDEMPOTENCY_STALE_SECONDS = env_int("MLPORTAL_IDEMPOTENCY_STALE_SECONDS", 900, minimum=10)
# API tokens: the lifetime a new token gets unless its maker chooses another, and the longest allowed.
MLPORTAL_TOKEN_DAYS = env_int("MLPORTAL_TOKEN_DAYS", 90, minimum=1)
MLPORTAL_TOKEN_MAX_DAYS = env_int("MLPORTAL_TOKEN_MAX_DAYS", 365, minimum=1)
if MLPORTAL_TOKEN_DAYS > MLPORTAL_TOKEN_MAX_DAYS:
    raise ImproperlyConfigured("MLPORTAL_TOKEN_DAYS is above MLPORTAL_TOKEN_MAX_DAYS")
# Per token (or signed-in user): "<n>/<s|min|hour|day>"; 429 with Retry-After beyond.
MLPORTAL_API_RATE = env_str("MLPORTAL_API_RATE", "1200/min")
MLPORTAL_API_WRITE_RATE = env_str("MLPORTAL_API_WRITE_RATE", "240/min")
for _name, _rate in (("MLPORTAL_API_RATE", MLPORTAL_API_RATE), ("MLPORTAL_API_WRITE_RATE", MLPORTAL_API_WRITE_RATE)):
    _n, _, _period = _rate.partition("/")
    if not _n.isdigit() or int(_n) < 1 or _period[:1] not in {"s", "m", "h", "d"}:
        raise ImproperlyConfigured(f"{_name}={_rate!r} is not a rate: use e.g. 600/min")

# The throttles' counters (and other short-lived shared state): Redis when MLPORTAL_CACHE_URL names
# one (team configuration: every web process counts together), else this process's memory.
MLPORTAL_CACHE_URL = env_str("MLPORTAL_CACHE_URL")
if MLPORTAL_CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": MLPORTAL_CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "mlportal"}}
SPECTACULAR_SETTINGS = {
    "TITLE": "MLPortal API",
    "DESCRIPTION": "Runs, models, manifests, images and realtime services. "
    "Authenticate with `Authorization: Bearer <token>` (tokens are made on the Tokens page).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts, styles, images, fonts and fetches from this origin
# only; no inline script, inline style or event-handler attribute anywhere (templates hold markup,
# behaviour lives in static/js/<page>.js). Violations are reported to /csp-report/ and logged by
# mlportal.csp. report-uri, not report-to: Chromium ignores report-uri when report-to is present and
# delivers report-to batches up to a minute late, so a violation would reach the log too late to see.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # data: for the icons in Swagger UI's style sheet
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "report-uri": ["/csp-report/"],
    },
}
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("MLPORTAL_MODE=production needs ALLOWED_HOSTS (comma-separated host names)")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}

# Seconds a page waits between live refreshes of status and logs.
MLPORTAL_POLL_INTERVAL_MS = env_int("MLPORTAL_POLL_INTERVAL_MS", 1000, minimum=200)

# /healthz answers from a report at most this many seconds old (one real check per process per period).
MLPORTAL_HEALTH_MAX_AGE = env_float("MLPORTAL_HEALTH_MAX_AGE", 1.0, minimum=0.1)
