"""Run metrics, params and tags as structured stdout lines.

A script inside a run container logs with ``get_logger().log("Accuracy", 0.93)``,
``log_param("max_depth", 4)`` or ``set_tag("team", "churn")``. The logger prints one line,
``<PREFIX> + json``, and flushes it, so no network is needed inside the container: the worker that
streams the container's output recognises the line with ``parse_line`` and stores it instead of
showing it in the plain log.

NaN and the infinities are logged as MLflow's client logs them (a diverged loss is a fact about
the run, not an error of the script): the line carries JSON's ``NaN`` / ``Infinity`` /
``-Infinity`` literals, and the portal stores them as MLflow's SQL store and the portal's own
MLflow API do (NaN as NaN, ±Infinity as ±1.7976931348623157e308).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any

METRIC_PREFIX = "##mlportal[metric] "
METRICS_PREFIX = "##mlportal[metrics] "  # several metrics of one step on one line (log_metrics)
METRICS_PER_LINE = 100
PARAM_PREFIX = "##mlportal[param] "
TAG_PREFIX = "##mlportal[tag] "
MAX_NAME_LENGTH = 200
MAX_STRING_VALUE_LENGTH = 1000
# MLflow's limits (mlflow/utils/validation.py), so code moving between the two fits both.
MAX_PARAM_NAME_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_NAME_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000
# Metric values end up in a database column; integers beyond 64 bits would not fit.
_INT_LIMIT = 2**63
# A metric line is small; anything far bigger is output that merely starts with the prefix.
_MAX_LINE_LENGTH = len(METRIC_PREFIX) + 4 * (MAX_NAME_LENGTH + MAX_STRING_VALUE_LENGTH) + 200
_MAX_METRICS_LINE_LENGTH = len(METRICS_PREFIX) + METRICS_PER_LINE * 4 * (MAX_NAME_LENGTH + MAX_STRING_VALUE_LENGTH) + 200
# Param and tag lines are ASCII-escaped JSON: at most 6 characters per character of text.
_MAX_KV_LINE_LENGTH = len(PARAM_PREFIX) + 6 * (MAX_TAG_NAME_LENGTH + MAX_TAG_VALUE_LENGTH) + 200


class DuplicateParam(ValueError):
    """A param logged again in the same run with a different value (MLflow refuses it too)."""


def check_param(name: Any, value: Any) -> tuple[str, str]:
    """Returns ``(name, str(value))`` for a loggable param; raises ValueError saying what to change."""
    return _check_kv("param", name, value, MAX_PARAM_NAME_LENGTH, MAX_PARAM_VALUE_LENGTH)


def check_tag(key: Any, value: Any) -> tuple[str, str]:
    """Returns ``(key, str(value))`` for a settable tag; raises ValueError saying what to change."""
    return _check_kv("tag", key, value, MAX_TAG_NAME_LENGTH, MAX_TAG_VALUE_LENGTH)


def _check_kv(what: str, name: Any, value: Any, name_max: int, value_max: int) -> tuple[str, str]:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {what} name must be a non-empty string, not {name!r:.80}")
    if len(name) > name_max:
        raise ValueError(f"{what} name {name[:40]!r}… is {len(name)} characters; the limit is {name_max}")
    text = value if isinstance(value, str) else str(value)
    if len(text) > value_max:
        raise ValueError(f"the value of {what} {name[:80]!r} is {len(text)} characters; the limit is {value_max}")
    return name, text


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid metric value")


_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _metric_constant(token: str) -> float:
    """A metric line's NaN / Infinity / -Infinity; where any other field holds one, that field's
    own check (a whole step, a finite time, a text name) refuses the line."""
    return _CONSTANTS[token]


def _check_name(name: Any) -> str | None:
    """Return why ``name`` is not a valid metric name, or None when it is."""
    if not isinstance(name, str) or not name.strip():
        return "a metric name must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"a metric name must be at most {MAX_NAME_LENGTH} characters"
    return None


def _check_step(step: Any) -> int | None:
    if step is None:
        return None
    if hasattr(step, "item") and not isinstance(step, int):
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an integer, not {type(step).__name__}")
    if not -_INT_LIMIT <= step < _INT_LIMIT:
        raise ValueError("step must fit in 64 bits")
    return step


def _normalize_value(value: Any) -> int | float | str:
    """Return ``value`` with numpy scalars turned into Python ones.

    Raises TypeError for a value that is not a number or string, ValueError for one out of range.
    NaN and the infinities pass (the portal stores them as MLflow does).
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
        self._params: dict[str, str] = {}

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def log_param(self, name: str, value: Any) -> None:
        """Record a parameter of the run (stored as text, like MLflow's ``str(value)``).

        Logging the same name again with the same value does nothing; with another value it raises
        DuplicateParam (a run's params describe how it ran, so they cannot change: log the new value
        under another name). ValueError for an empty or too long name or a value over 6,000 characters.
        """
        name, text = check_param(name, value)
        with self._lock:
            known = self._params.get(name)
            if known is not None and known != text:
                raise DuplicateParam(f"param {name!r} was already logged in this run with value {known[:80]!r}; "
                                     f"a run's params cannot change (got {text[:80]!r}): log it under another name")
            if known is not None:
                return
            self._params[name] = text
        self._write(PARAM_PREFIX + json.dumps({"name": name, "value": text}, ensure_ascii=True))

    def log_params(self, params: dict) -> None:
        """``log_param`` for each item of ``params``; all are checked before any is written."""
        checked = [check_param(k, v) for k, v in dict(params).items()]
        for name, text in checked:
            self.log_param(name, text)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag of the run (a later call with the same key replaces its value)."""
        key, text = check_tag(key, value)
        self._write(TAG_PREFIX + json.dumps({"key": key, "value": text}, ensure_ascii=True))

    def set_tags(self, tags: dict) -> None:
        checked = [check_tag(k, v) for k, v in dict(tags).items()]
        for key, text in checked:
            self._write(TAG_PREFIX + json.dumps({"key": key, "value": text}, ensure_ascii=True))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Log several metrics at one step, on as few lines as possible (100 a line): what a
        training loop logging ten series per step should call, a tenth of the lines of ``log``.
        Checks as ``log`` does, every item before any is written."""
        step = _check_step(step)
        values: dict[str, Any] = {}
        for name, value in dict(metrics).items():
            problem = _check_name(name)
            if problem:
                raise ValueError(f"{problem}: {name!r:.80}")
            values[name] = _normalize_value(value)
        items = list(values.items())
        now = time.time()
        for start in range(0, len(items), METRICS_PER_LINE):
            self._write(METRICS_PREFIX + json.dumps({"metrics": dict(items[start:start + METRICS_PER_LINE]), "step": step,
                                                     "time": now}, ensure_ascii=True))

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log a scalar metric (no ``step``) or one point of a series (``step=N``).

        Raises TypeError/ValueError for a bad name, step or value type. A NaN or infinite value
        (a diverged loss, say) is logged as MLflow logs it: the portal keeps NaN as NaN and
        clamps ±Infinity to ±1.7976931348623157e308.
        """
        problem = _check_name(name)
        if problem:
            raise ValueError(f"{problem}: {name!r:.80}")
        step = _check_step(step)
        normalized = _normalize_value(value)
        line = METRIC_PREFIX + json.dumps(
            {"name": name, "value": normalized, "step": step, "time": time.time()},
            ensure_ascii=True,
        )
        self._write(line)

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
    anything else: other output, broken JSON, non-scalar values (NaN and ±Infinity are values),
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
        data = json.loads(line[len(METRIC_PREFIX):].rstrip(), parse_constant=_metric_constant)
    except ValueError:  # JSONDecodeError
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


def _parse_kv(line: str, prefix: str, key_field: str, checker) -> dict | None:
    if len(line) > _MAX_KV_LINE_LENGTH:
        return None
    try:
        data = json.loads(line[len(prefix):].rstrip(), parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        return None
    try:
        name, value = checker(data.get(key_field), data["value"])
    except ValueError:
        return None
    return {key_field: name, "value": value}


def _parse_metrics_line(line: str) -> list[dict] | None:
    """The points of a ``log_metrics`` line, or None when any part of it is not well formed."""
    if len(line) > _MAX_METRICS_LINE_LENGTH:
        return None
    try:
        data = json.loads(line[len(METRICS_PREFIX):].rstrip(), parse_constant=_metric_constant)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or not data["metrics"]:
        return None
    step, stamp = data.get("step"), data.get("time")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not -_INT_LIMIT <= step < _INT_LIMIT):
        return None
    if stamp is not None:
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            return None
        stamp = float(stamp)
    points = []
    for name, value in data["metrics"].items():
        if _check_name(name) is not None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return None
        try:
            value = _normalize_value(value)
        except (TypeError, ValueError):
            return None
        points.append({"name": name, "value": value, "step": step, "time": stamp})
    return points


def parse_line(line: str | bytes) -> tuple[str, dict] | None:
    """Returns ``("metric", {...})`` (as ``parse_metric_line``), ``("metrics", [{...}, …])`` for a
    ``log_metrics`` line, ``("param", {"name", "value"})`` or
    ``("tag", {"key", "value"})`` for a well-formed structured line, else None (plain output)."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(line, str) or not line.startswith("##mlportal["):
        return None
    if line.startswith(METRIC_PREFIX):
        metric = parse_metric_line(line)
        return None if metric is None else ("metric", metric)
    if line.startswith(METRICS_PREFIX):
        points = _parse_metrics_line(line)
        return None if points is None else ("metrics", points)
    if line.startswith(PARAM_PREFIX):
        param = _parse_kv(line, PARAM_PREFIX, "name", check_param)
        return None if param is None else ("param", param)
    if line.startswith(TAG_PREFIX):
        tag = _parse_kv(line, TAG_PREFIX, "key", check_tag)
        return None if tag is None else ("tag", tag)
    return None
