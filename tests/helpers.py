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
