"""The error boundary: an engine that cannot be reached is one clear EngineError."""

import time

import pytest

from compute.engine import EngineError, EngineUnreachable, engine_status, get_client

pytestmark = pytest.mark.docker

NOWHERE = "tcp://127.0.0.1:1"


def test_an_unreachable_engine_raises_a_one_line_engine_error():
    with pytest.raises(EngineUnreachable) as caught:
        get_client(NOWHERE)
    message = str(caught.value)
    assert message.startswith("Docker engine unreachable at tcp://127.0.0.1:1: connection refused")
    assert "\n" not in message
    assert isinstance(caught.value, EngineError)


def test_a_missing_socket_is_named_in_the_message():
    with pytest.raises(EngineError, match="unreachable at unix:///nonexistent/docker.sock: no socket"):
        get_client("unix:///nonexistent/docker.sock")


def test_engine_status_reports_an_unreachable_engine_quickly():
    started = time.monotonic()
    status = engine_status(NOWHERE)
    assert time.monotonic() - started < 5
    assert status["ok"] is False and status["version"] is None
    assert "connection refused" in status["error"]


def test_engine_status_reports_the_local_engine_version(docker_engine):
    status = engine_status()
    assert status == {"ok": True, "version": status["version"], "error": None}
    assert status["version"]
