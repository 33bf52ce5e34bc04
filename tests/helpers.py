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
