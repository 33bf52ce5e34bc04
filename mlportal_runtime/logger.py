"""Run metrics as structured stdout lines.

A script inside a run container logs with ``get_logger().log("Accuracy", 0.93)``. The logger
prints one line, ``METRIC_PREFIX + json``, and flushes it, so no network is needed inside the
container: the worker that streams the container's output recognises the line with
``parse_metric_line`` and stores the metric instead of showing the line in the plain log.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any

METRIC_PREFIX = "##mlportal[metric] "
MAX_NAME_LENGTH = 200
MAX_STRING_VALUE_LENGTH = 1000
# Metric values end up in a database column; integers beyond 64 bits would not fit.
_INT_LIMIT = 2**63
# A metric line is small; anything far bigger is output that merely starts with the prefix.
_MAX_LINE_LENGTH = len(METRIC_PREFIX) + 4 * (MAX_NAME_LENGTH + MAX_STRING_VALUE_LENGTH) + 200


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid metric value")


def _check_name(name: Any) -> str | None:
    """Return why ``name`` is not a valid metric name, or None when it is."""
    if not isinstance(name, str) or not name.strip():
        return "a metric name must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"a metric name must be at most {MAX_NAME_LENGTH} characters"
    return None


class NonFiniteMetric(ValueError):
    """A NaN or infinite metric value."""


def _normalize_value(value: Any) -> int | float | str:
    """Return ``value`` with numpy scalars turned into Python ones.

    Raises TypeError for a value that is not a number or string, ValueError for one out of range
    (NonFiniteMetric for NaN and infinities).
    """
    if hasattr(value, "item") and not isinstance(value, (int, float, str)):
        try:
            value = value.item()  # numpy scalars and 0-d arrays
        except (TypeError, ValueError):
            raise TypeError(f"a metric value must be a number or a string, not {type(value).__name__}") from None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ValueError("an integer metric value must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteMetric(f"a metric value must be a finite number, not {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_VALUE_LENGTH:
            raise ValueError(f"a string metric value must be at most {MAX_STRING_VALUE_LENGTH} characters")
        return value
    raise TypeError(f"a metric value must be a number or a string, not {type(value).__name__}")


class RunLogger:
    """Prints metric lines for the run this process belongs to."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log a scalar metric (no ``step``) or one point of a series (``step=N``).

        Raises TypeError/ValueError for a bad name, step or value type. A NaN or infinite value
        (a diverged loss, say) is not an error of the script: it is reported on stderr and
        skipped, because JSON and the metric store cannot hold it.
        """
        problem = _check_name(name)
        if problem:
            raise ValueError(f"{problem}: {name!r:.80}")
        if step is not None:
            if hasattr(step, "item") and not isinstance(step, int):
                step = step.item()
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError(f"step must be an integer, not {type(step).__name__}")
            if not -_INT_LIMIT <= step < _INT_LIMIT:
                raise ValueError("step must fit in 64 bits")
        try:
            normalized = _normalize_value(value)
        except NonFiniteMetric as exc:
            print(f"mlportal: metric {name!r} not logged: {exc}", file=sys.stderr, flush=True)
            return
        line = METRIC_PREFIX + json.dumps(
            {"name": name, "value": normalized, "step": step, "time": time.time()},
            ensure_ascii=True,
            allow_nan=False,
        )
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def __repr__(self) -> str:
        return "<RunLogger mlportal>"


_default_logger: RunLogger | None = None


def get_logger() -> RunLogger:
    """Return the process-wide run logger (it writes to whatever ``sys.stdout`` is at call time)."""
    global _default_logger
    if _default_logger is None:
        _default_logger = RunLogger()
    return _default_logger


def parse_metric_line(line: str | bytes) -> dict | None:
    """Return ``{"name", "value", "step", "time"}`` for a well-formed metric line, else None.

    Trailing newline/whitespace is ignored; the prefix must start the line. None is returned for
    anything else: other output, broken JSON, NaN/Infinity, non-finite or non-scalar values,
    names that are empty or longer than 200 characters, strings over 1000 characters, a step that
    is not an integer, a time that is not a finite number. ``time`` is None when the line has none.
    """
    if isinstance(line, (bytes, bytearray)):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(line, str) or not line.startswith(METRIC_PREFIX):
        return None
    if len(line) > _MAX_LINE_LENGTH:
        return None
    try:
        data = json.loads(line[len(METRIC_PREFIX):].rstrip(), parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError and the rejected NaN/Infinity
        return None
    if not isinstance(data, dict) or _check_name(data.get("name")) is not None:
        return None
    if "value" not in data:
        return None
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        value = _normalize_value(value)
    except (TypeError, ValueError):
        return None
    step = data.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not -_INT_LIMIT <= step < _INT_LIMIT):
        return None
    stamp = data.get("time")
    if stamp is not None:
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            return None
        stamp = float(stamp)
    return {"name": data["name"], "value": value, "step": step, "time": stamp}
