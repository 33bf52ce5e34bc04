"""Small helpers for tests (import as `from tests.helpers import wait_until`)."""
import time


def wait_until(predicate, *, timeout: float = 60, interval: float = 0.25, message: str = "condition"):
    """Polls `predicate` until it returns a truthy value (returned) or raises AssertionError at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class SilentEngine:
    """A local socket that accepts every connection and never sends a byte: an engine (or a
    replica) that does not answer. ``accepted`` counts the connections; ``close()`` drops them."""

    def __init__(self) -> None:
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.accepted = 0
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def engine_image_ids() -> set[str]:
    """Every image id the engine holds (untagged ones too). The low-level list: images.list()
    inspects each listed image, and one removed meanwhile (by a worker, by another test) raises."""
    from compute.engine import connect

    with connect() as client:
        return {i["Id"] for i in client.api.images(all=True)}


def build_unique_image(tag: str) -> str:
    """Builds ``tag``: the base image plus one layer of its own bytes, so its id leaves the engine
    when the tag is removed; returns the id."""
    import io
    import uuid

    from django.conf import settings

    from compute.engine import connect

    dockerfile = f"FROM {settings.MLPORTAL_BASE_IMAGE}\nRUN echo {uuid.uuid4().hex} > /marker\n".encode()
    with connect() as client:
        return client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)[0].id
