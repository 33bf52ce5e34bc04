"""Checks on what users send for pipelines: each returns the clean value or raises PortalError
naming the field and what to change. Nothing here writes."""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from core.errors import PortalError

GATE_RE = re.compile(r"^\s*(?P<metric>.+?)\s*(?P<op>>=|<=|==|>|<)\s*(?P<rhs>.+?)\s*$")
SERVED_RE = re.compile(r"^served(?:\s*(?P<sign>[+-])\s*(?P<delta>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?))?$")
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
GATE_EXAMPLE = 'e.g. "DTree Accuracy >= served - 0.01" or "DTree Accuracy >= 0.8"'
OUTPUT_PREFIX = "outputs/"


@dataclass(frozen=True)
class Gate:
    """A parsed gate: ``metric op (served + offset)`` or ``metric op threshold``."""

    metric: str
    op: str
    relative: bool
    value: float  # the offset from the served value, or the fixed threshold

    def limit(self, served: float | None) -> float:
        return (served + self.value) if self.relative else self.value

    def passes(self, new: float, served: float | None) -> bool:
        return OPS[self.op](new, self.limit(served))

    def describe(self, served: float | None = None) -> str:
        if not self.relative:
            return f"{self.metric} {self.op} {self.value:g}"
        rhs = "served" if self.value == 0 else f"served {'+' if self.value > 0 else '-'} {abs(self.value):g}"
        if served is not None:
            rhs += f" = {self.limit(served):g}"
        return f"{self.metric} {self.op} {rhs}"


def _gate_error(message: str) -> PortalError:
    return PortalError(message, code="invalid_gate", fields={"gate": message})


def parse_gate(value: Any) -> Gate | None:
    """The gate written as ``<metric> <op> <right side>``: op one of >= > <= < ==, the right side
    a number, ``served`` (the same metric of the run that produced the model in service), or
    ``served ± number``. Empty: no gate."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise _gate_error(f"The gate must be text, {GATE_EXAMPLE}.")
    if len(value) > 300:
        raise _gate_error("The gate is too long (at most 300 characters).")
    match = GATE_RE.match(value)
    if not match:
        raise _gate_error(f"Gate {value[:80]!r} does not parse: write '<metric> <op> <value>' with op one of "
                          f">=, >, <=, <, ==, {GATE_EXAMPLE}.")
    metric, op, rhs = match.group("metric").strip().strip("'\""), match.group("op"), match.group("rhs").strip()
    if not metric or any(c in metric for c in "<>="):
        raise _gate_error(f"Gate {value[:80]!r} names no metric before its operator (>=, >, <=, <, ==): {GATE_EXAMPLE}.")
    served = SERVED_RE.match(rhs)
    if served:
        delta = float(served.group("delta") or 0)
        return Gate(metric=metric, op=op, relative=True, value=-delta if served.group("sign") == "-" else delta)
    try:
        threshold = float(rhs)
    except ValueError:
        raise _gate_error(f"Gate {value[:80]!r}: the right side {rhs[:40]!r} is neither a number nor 'served' "
                          f"(optionally 'served - 0.01'): {GATE_EXAMPLE}.") from None
    if not math.isfinite(threshold):
        raise _gate_error(f"Gate {value[:80]!r}: the threshold must be a finite number.")
    return Gate(metric=metric, op=op, relative=False, value=threshold)


def check_output_path(value: Any) -> str:
    """A run output path such as ``outputs/model.pkl`` (``model.pkl`` means the same)."""
    text = str(value or "").strip() or "outputs/model.pkl"
    if text.startswith(OUTPUT_PREFIX):
        rest = text[len(OUTPUT_PREFIX):]
    else:
        rest = text
    parts = rest.split("/")
    if len(text) > 255 or not rest or any(p in ("", ".", "..") for p in parts) or "\\" in text or "\x00" in text:
        message = f"Output path {text[:80]!r} is not a file under outputs/: name what the script writes, like outputs/model.pkl."
        raise PortalError(message, fields={"output_path": message})
    return OUTPUT_PREFIX + rest


def check_choice(value: Any, choices, *, field: str, default: str) -> str:
    if value in (None, ""):
        return default
    if value not in choices:
        message = f"Unknown {field.replace('_', ' ')} {str(value)[:30]!r}: use {' or '.join(choices)}."
        raise PortalError(message, fields={field: message})
    return value


def check_int(value: Any, *, field: str, minimum: int, maximum: int, default: int, what: str) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if isinstance(value, bool) or number is None or not minimum <= number <= maximum:
        message = f"{what} must be a whole number from {minimum} to {maximum}; got {str(value)[:20]!r}."
        raise PortalError(message, fields={field: message})
    return number


CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
INTERVAL_RE = re.compile(r"^every\s+(?P<n>[0-9]+)\s*(?P<unit>s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SCHEDULE_EXAMPLE = 'a cron line such as "0 3 * * *" (minute hour day month weekday) or "every 6 hours"'
MIN_INTERVAL_SECONDS = 5


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``interval`` seconds, or the five ``cron`` fields."""

    text: str
    interval: int | None = None
    cron: tuple[str, ...] | None = None


def _schedule_error(message: str) -> PortalError:
    return PortalError(message, code="invalid_schedule", fields={"schedule": message})


def parse_schedule(value: Any) -> Schedule | None:
    """A cron line (five fields, as celery's crontab reads them) or ``every N seconds|minutes|hours|days``;
    empty: no schedule. A line that does not parse is a 400 naming it and the field at fault."""
    from celery.schedules import crontab

    if value in (None, ""):
        return None
    text = " ".join(str(value).split())
    if len(text) > 100:
        raise _schedule_error("The schedule is too long (at most 100 characters).")
    interval = INTERVAL_RE.match(text.lower())
    if interval:
        seconds = int(interval.group("n")) * UNIT_SECONDS[interval.group("unit")[0]]
        if not MIN_INTERVAL_SECONDS <= seconds <= 366 * 86400:
            raise _schedule_error(f"Schedule {text!r}: the interval must be from {MIN_INTERVAL_SECONDS} seconds to a year.")
        return Schedule(text=text, interval=seconds)
    parts = text.split(" ")
    if len(parts) != 5:
        raise _schedule_error(f"Schedule {text[:80]!r} does not parse: write {SCHEDULE_EXAMPLE}.")
    for name, part in zip(CRON_FIELDS, parts):
        try:
            crontab(**{name: part})
        except (ValueError, TypeError, IndexError) as exc:
            raise _schedule_error(f"Schedule {text[:80]!r} does not parse: its {name.replace('_', ' ')} field "
                                  f"{part[:20]!r} is not valid ({exc}); write {SCHEDULE_EXAMPLE}.") from None
    return Schedule(text=text, cron=tuple(parts))
