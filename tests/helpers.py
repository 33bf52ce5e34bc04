"""Small helpers for tests (import as `from tests.helpers import wait_until`)."""
import socket
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


def raw_exchange(port: int, payload: bytes, *, timeout: float = 10,
                 close_wait: float | None = None) -> tuple[bytes, bool]:
    """Sends ``payload`` (raw bytes, any HTTP a test wants to try) on a fresh connection to
    127.0.0.1:``port``; returns (what came back, whether the server closed the connection).

    It reads until the server closes, a reset, or ``timeout``. With ``close_wait``, once a whole
    answer is in (a head and its Content-Length body), a silence that long ends the wait too
    (closed False): for servers that should close after refusing but may keep a good answer alive."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return data, False
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
            if close_wait is not None and _whole_answer(data):
                sock.settimeout(close_wait)
        return data, False


def _whole_answer(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


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


def build_unique_image(tag: str, *, labels: dict[str, str] | None = None) -> str:
    """Builds ``tag`` (with ``labels``): the base image plus one layer of its own bytes, so its id
    leaves the engine when the tag is removed; returns the id."""
    import io
    import uuid

    from django.conf import settings

    from compute.engine import connect

    dockerfile = f"FROM {settings.MLPORTAL_BASE_IMAGE}\nRUN echo {uuid.uuid4().hex} > /marker\n".encode()
    with connect() as client:
        return client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, labels=labels or {})[0].id
