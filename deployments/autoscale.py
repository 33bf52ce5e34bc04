"""The autoscaler's rule and its settings' checks: pure code (no Django, no engine), so every
decision can be tested with plain numbers.

The signal is concurrency, not CPU: how many scoring workers were busy on average (seconds spent
answering scoring requests per second, summed over the replicas: each replica's
``mlportal_request_duration_seconds_sum`` counter read from its ``/metrics``) over how many there
are (``mlportal_workers`` per replica). A sample is one refresh period; the rule averages the
samples of the last refresh window and

- scales **up** at once to ``ceil(busy / (workers per replica × target))`` (at most max),
- scales **down** only when every sample of the last stable window (``stable_seconds``, 60 by
  default) asked for fewer replicas than run now, to the most any of them asked for (at least min),
- never goes below min or above max (a count outside them is brought inside at once).

Each decision carries the figures that drove it, for the service's event.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Azure ML's defaults (az ml service create realtime --autoscale-*).
DEFAULT_MIN = 1
DEFAULT_MAX = 10
DEFAULT_TARGET = 70
DEFAULT_REFRESH = 1
DEFAULT_STABLE = 60
MAX_REFRESH = 3600
MAX_STABLE = 3600

FIELDS = ("enabled", "min_replicas", "max_replicas", "target_utilization", "refresh_seconds", "stable_seconds")


class AutoscaleInvalid(ValueError):
    """Bad autoscale settings: ``fields`` maps each field at fault (``autoscale_<name>``) to what to change."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class Settings:
    min_replicas: int = DEFAULT_MIN
    max_replicas: int = DEFAULT_MAX
    target_utilization: int = DEFAULT_TARGET  # percent of the workers busy
    refresh_seconds: float = DEFAULT_REFRESH
    stable_seconds: float = DEFAULT_STABLE


@dataclass(frozen=True)
class Sample:
    """One refresh period: when it ended (seconds, any clock), the replicas serving, the scoring
    workers across them, and how many of those were busy on average during the period."""

    at: float
    replicas: int
    workers: int
    busy: float


@dataclass(frozen=True)
class Decision:
    current: int
    replicas: int  # what to run; == current: hold
    desired: int  # what the last refresh window alone asks for
    utilization: float  # percent, averaged over the refresh window
    busy: float
    workers: int
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> bool:
        return self.replicas != self.current


def _int(value: Any, name: str, label: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise AutoscaleInvalid(f"{label} must be a whole number from {low} to {high}.", {name: f"From {low} to {high}."})
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise AutoscaleInvalid(f"{label} must be a whole number from {low} to {high}; got {str(value)[:20]!r}.",
                               {name: f"From {low} to {high}."}) from None
    if not low <= number <= high:
        raise AutoscaleInvalid(f"{label} must be from {low} to {high}; got {number}.", {name: f"From {low} to {high}."})
    return number


def parse_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise AutoscaleInvalid(f"autoscale_enabled must be true or false; got {str(value)[:20]!r}.",
                           {"autoscale_enabled": "true or false"})


def check_settings(given: dict[str, Any], *, current: dict[str, Any] | None = None, cap: int,
                   replicas_given: bool = False) -> dict[str, Any]:
    """Returns the complete autoscale settings (``FIELDS``) from the ``given`` ones (keys from
    FIELDS, missing ones from ``current`` or the defaults; max defaults to min(10, cap)).
    Raises AutoscaleInvalid naming the field: min above max, target outside 1–100, refresh below
    1 s, bounds outside 1…``cap`` (MLPORTAL_MAX_REPLICAS), or a fixed replica count sent
    together with autoscaling on (``replicas_given``)."""
    base = {"enabled": False, "min_replicas": DEFAULT_MIN, "max_replicas": min(DEFAULT_MAX, cap),
            "target_utilization": DEFAULT_TARGET, "refresh_seconds": DEFAULT_REFRESH, "stable_seconds": DEFAULT_STABLE}
    base.update({k: v for k, v in (current or {}).items() if k in FIELDS and v is not None})
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise AutoscaleInvalid(f"Unknown autoscale setting {', '.join(unknown)}: use {', '.join(FIELDS)}.",
                               {f"autoscale_{k}": "Unknown setting." for k in unknown})
    values = dict(base)
    given = {k: v for k, v in given.items() if v is not None and v != ""}
    if "enabled" in given:
        values["enabled"] = parse_flag(given["enabled"])
    values["min_replicas"] = _int(given.get("min_replicas", base["min_replicas"]), "autoscale_min_replicas",
                                  "autoscale_min_replicas", 1, cap)
    values["max_replicas"] = _int(given.get("max_replicas", base["max_replicas"]), "autoscale_max_replicas",
                                  "autoscale_max_replicas", 1, cap)
    values["target_utilization"] = _int(given.get("target_utilization", base["target_utilization"]),
                                        "autoscale_target_utilization", "autoscale_target_utilization", 1, 100)
    refresh = given.get("refresh_seconds", base["refresh_seconds"])
    try:
        refresh_number = float(refresh) if not isinstance(refresh, bool) else float("nan")
    except (TypeError, ValueError):
        refresh_number = float("nan")
    if not refresh_number >= 1:  # also NaN
        raise AutoscaleInvalid(f"autoscale_refresh_seconds must be at least 1 second; got {str(refresh)[:20]}.",
                               {"autoscale_refresh_seconds": "At least 1 second."})
    values["refresh_seconds"] = _int(refresh, "autoscale_refresh_seconds", "autoscale_refresh_seconds", 1, MAX_REFRESH)
    values["stable_seconds"] = _int(given.get("stable_seconds", base["stable_seconds"]), "autoscale_stable_seconds",
                                    "autoscale_stable_seconds", 1, MAX_STABLE)
    if values["min_replicas"] > values["max_replicas"]:
        message = (f"autoscale_min_replicas ({values['min_replicas']}) is above autoscale_max_replicas "
                   f"({values['max_replicas']}): raise the maximum or lower the minimum.")
        raise AutoscaleInvalid(message, {"autoscale_min_replicas": message, "autoscale_max_replicas": message})
    if values["enabled"] and replicas_given:
        message = ("A fixed replica count and autoscaling exclude each other: drop replicas (the autoscaler starts at "
                   "autoscale_min_replicas), or turn autoscaling off.")
        raise AutoscaleInvalid(message, {"replicas": message, "autoscale_enabled": message})
    return values


def desired_for(busy: float, workers_per_replica: float, target: int) -> int:
    """Replicas that keep ``busy`` workers at ``target`` percent of theirs: ceil(busy / (w × t))."""
    if busy <= 0 or workers_per_replica <= 0:
        return 0
    return math.ceil(round(busy / (workers_per_replica * target / 100.0), 6))


def decide(samples: list[Sample], *, current: int, settings: Settings, now: float) -> Decision:
    """What to run next from the samples (any order), ``current`` replicas and ``settings``."""
    lo, hi = settings.min_replicas, settings.max_replicas
    ordered = sorted(samples, key=lambda s: s.at)
    window = [s for s in ordered if s.at > now - settings.refresh_seconds + 1e-6] or ordered[-1:]
    busy = sum(s.busy for s in window) / len(window) if window else 0.0
    workers = window[-1].workers if window else 0
    per_replica = (window[-1].workers / window[-1].replicas) if window and window[-1].replicas else 0
    utilization = 100.0 * busy / workers if workers else 0.0
    desired = max(lo, min(hi, desired_for(busy, per_replica, settings.target_utilization)))
    figures = {"busy_workers": round(busy, 3), "workers": workers, "utilization": round(utilization, 1),
               "target": settings.target_utilization, "current": current, "desired": desired,
               "window_seconds": settings.refresh_seconds, "samples": len(window)}

    def made(replicas: int, reason: str, **extra) -> Decision:
        return Decision(current=current, replicas=replicas, desired=desired, utilization=round(utilization, 1),
                        busy=round(busy, 3), workers=workers, reason=reason, figures={**figures, **extra})

    if current < lo:
        return made(lo, f"{current} replica(s) is below the minimum of {lo}")
    if current > hi:
        return made(hi, f"{current} replica(s) is above the maximum of {hi}")
    if not window:
        return made(current, "no samples yet")
    if desired > current:
        return made(desired, f"utilisation {utilization:.0f}% of {workers} worker(s) over the last "
                             f"{settings.refresh_seconds:g} s is above the target {settings.target_utilization}%")
    if desired == current:
        return made(current, "at the target")
    # Down only after a whole stable window asked for fewer.
    since = now - settings.stable_seconds
    stable = [s for s in ordered if s.at > since]
    # The window must be covered, and by enough samples (a replica that could not be read leaves gaps).
    covered = (bool(ordered) and ordered[0].at <= since + settings.refresh_seconds
               and len(stable) >= max(1, int(settings.stable_seconds / settings.refresh_seconds / 2)))
    asked = [max(lo, min(hi, desired_for(s.busy, s.workers / s.replicas if s.replicas else 0,
                                         settings.target_utilization))) for s in stable]
    if not covered or not asked or max(asked) >= current:
        return made(current, f"waiting for a stable window of {settings.stable_seconds:g} s before scaling down",
                    stable_seconds=settings.stable_seconds)
    peak = max(asked)
    peak_busy = max(s.busy for s in stable)
    return made(peak, f"every sample of the last {settings.stable_seconds:g} s asked for at most {peak} replica(s) "
                      f"(at most {peak_busy:.2f} busy worker(s); target {settings.target_utilization}%)",
                stable_seconds=settings.stable_seconds, peak_busy_workers=round(peak_busy, 3))


def busy_from_counters(previous: dict[str, float], current: dict[str, float], seconds: float) -> float:
    """Average busy workers over ``seconds`` from each replica's busy-seconds counter (keyed by
    container): a replica new since the last sample, or restarted (its counter went back), counts
    from zero."""
    if seconds <= 0:
        return 0.0
    total = 0.0
    for key, value in current.items():
        before = previous.get(key)
        total += value - before if before is not None and value >= before else 0.0
    return max(0.0, total / seconds)


def parse_metrics(text: str) -> dict[str, float]:
    """``{"busy_seconds", "workers"}`` from a scoring server's Prometheus text."""
    found = {}
    for line in text.splitlines():
        if line.startswith("mlportal_request_duration_seconds_sum "):
            found["busy_seconds"] = float(line.split()[1])
        elif line.startswith("mlportal_workers "):
            found["workers"] = float(line.split()[1])
    return found
