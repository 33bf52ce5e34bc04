"""Fixtures for workers on several hosts: a local S3-compatible server (moto's standalone server),
the portal's own image built from its Dockerfile (cached in the engine by a hash of what it copies),
and a second worker running in a container of that image, which shares nothing with this host but
the network.

How the second "host" reaches things, as a real one would over its network:
- a Docker bridge of its own (``mlportal-hosts-<pid>``), whose gateway address stands for this
  host's address on a LAN;
- PostgreSQL, Redis, the S3 server and the Docker engine listen on loopback only here; the
  forwarder (forward.py) offers each on the gateway address to that bridge's subnet alone;
- the Docker engine is this host's own engine, reached over TCP (``DOCKER_HOST=tcp://…``) as a
  worker drives a remote engine; the services it starts publish their port on the gateway address
  (the environment's publish address), which the portal's gateway here and the worker there both
  reach.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.real_parts import missing_part

REPO = Path(__file__).resolve().parents[2]
BUCKET = "mlportal-test"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def docker(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout, **kw)


# --- the S3-compatible server ---------------------------------------------------------------------

class S3Server:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.endpoint = f"http://127.0.0.1:{port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, bucket: str = BUCKET) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def storage_options(self, bucket: str = BUCKET, location: str = "") -> dict:
        return {"bucket_name": bucket, "endpoint_url": self.endpoint, "access_key": "testing", "secret_key": "testing",
                "region_name": "us-east-1", "addressing_style": "path", "default_acl": None, "location": location}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on a free loopback port, for the session."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.fail("moto_server is missing: `make install` installs the test extras (moto[server])")
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = S3Server(proc, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.client().list_buckets()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto's S3 server did not start")
            time.sleep(0.2)
    yield server
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket for one test; its name."""
    name = f"t{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**8}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    for key in s3_server.keys(name):
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_storages(settings, s3_server, s3_bucket):
    """This process's default and capture storages on the test bucket (as MLPORTAL_STORAGE=s3 sets)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "core.s3storage.PortalS3Storage", "OPTIONS": s3_server.storage_options(s3_bucket)},
        "capture": {"BACKEND": "core.s3storage.PortalS3Storage",
                    "OPTIONS": s3_server.storage_options(s3_bucket, "capture")},
    }
    return s3_bucket


# --- the portal's own image ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def portal_image() -> str:
    """The tag of the image of the portal's Dockerfile with this checkout's code (tests/multihost/image.py)."""
    from tests.multihost.image import ImageError, ensure_portal_image

    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        missing_part("Docker engine", "docker info failed (scripts/start_services.sh starts it)")
    try:
        return ensure_portal_image()
    except ImageError as exc:
        pytest.fail(str(exc))


# --- the second host: its network, the forwarder, the worker container -----------------------------

class SecondHost:
    """What the second worker sees: ``gateway`` (this host's address on its network) and the ports
    there of PostgreSQL, Redis, the S3 server and the Docker engine."""

    def __init__(self, network: str, gateway: str, subnet: str, forwarder, ports: dict[str, int]) -> None:
        self.network, self.gateway, self.subnet, self.forwarder, self.ports = network, gateway, subnet, forwarder, ports


@pytest.fixture(scope="session")
def second_host_network(s3_server, django_db_setup, django_db_blocker):
    from django.conf import settings
    from django.db import connection

    from tests.multihost.forward import Forwarder

    with django_db_blocker.unblock():
        db = dict(connection.settings_dict)
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("workers on several hosts share PostgreSQL: set DATABASE_URL (SQLite serves one host)")
    broker = urlparse(settings.CELERY_BROKER_URL)
    if broker.scheme != "redis":
        missing_part("Redis", "workers on several hosts share a Redis broker: set CELERY_BROKER_URL=redis://…")
    name = f"mlportal-hosts-{os.getpid()}"
    docker("network", "create", "--label", "mlportal.test=multihost", "-o",
           f"com.docker.network.bridge.name=mlp-h{os.getpid() % 10**9}", name)
    try:
        config = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"][0]
        gateway, subnet = config["Gateway"], config["Subnet"]
        forwarder = Forwarder(bind=gateway, allowed=subnet)
        docker_sock = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").removeprefix("unix://")
        ports = {
            "postgres": forwarder.add((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))),
            "redis": forwarder.add((broker.hostname or "127.0.0.1", broker.port or 6379)),
            "s3": forwarder.add(("127.0.0.1", s3_server.port)),
            "docker": forwarder.add(docker_sock),
        }
        yield SecondHost(name, gateway, subnet, forwarder, ports)
        forwarder.close()
    finally:
        docker("network", "rm", name, check=False)


def isolated_broker_url(broker_url: str) -> str:
    """The broker the multi-host test's portal and worker share: another Redis database than the
    session's own worker listens on, so that worker never takes the test's tasks."""
    parsed = urlparse(broker_url)
    db = int((parsed.path or "/0").strip("/") or 0)
    return parsed._replace(path=f"/{(db + 8) % 16}").geturl()


class SecondWorker:
    def __init__(self, container: str, hostname: str) -> None:
        self.container, self.hostname = container, hostname

    def logs(self) -> str:
        out = docker("logs", "--tail", "200", self.container, check=False)
        return (out.stdout + out.stderr)[-6000:]

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return docker("exec", self.container, *cmd, check=False)


def start_second_worker(*, image: str, host: SecondHost, db: dict, broker_db: int, bucket: str, secret_key: str,
                        extra_env: dict[str, str] | None = None) -> SecondWorker:
    """A Celery worker (all queues) in a container of the portal's image on the second host's network."""
    gw = host.gateway
    hostname = "second-host"
    env = {
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{gw}:{host.ports['postgres']}/{db['NAME']}",
        "CELERY_BROKER_URL": f"redis://{gw}:{host.ports['redis']}/{broker_db}",
        "MLPORTAL_STORAGE": "s3", "MLPORTAL_S3_BUCKET": bucket,
        "MLPORTAL_S3_ENDPOINT_URL": f"http://{gw}:{host.ports['s3']}", **S3_KEYS,
        "DOCKER_HOST": f"tcp://{gw}:{host.ports['docker']}",
        "SECRET_KEY": secret_key,  # the service keys are encrypted with it
        "MLPORTAL_ENGINE_HOSTS": gw, "MLPORTAL_PUBLISH_ADDRESSES": f"127.0.0.1,{gw}",
        **(extra_env or {}),
    }
    args = ["create", "--network", host.network, "--hostname", hostname, "--label", "mlportal.test=multihost"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    args += [image, "celery", "-A", "mlportal", "worker", "-Q", "runs,builds,deploy,celery", "-c", "3",
             "-n", f"{hostname}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    container = docker(*args).stdout.strip()
    # This machine reaches PyPI through a proxy whose certificate only this host trusts: the worker's
    # own pip (it fills its own wheel cache) gets a copy of the bundle, nothing else of this host.
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "pip.conf"
            conf.write_text("[global]\ncert = /etc/mlportal-host-ca.crt\n")
            docker("cp", str(bundle), f"{container}:/etc/mlportal-host-ca.crt")
            docker("cp", str(conf), f"{container}:/etc/pip.conf")
    docker("start", container)
    return SecondWorker(container, hostname)


def stop_second_worker(worker: SecondWorker) -> None:
    docker("rm", "-f", worker.container, check=False)


def subnet_has(subnet: str, address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
