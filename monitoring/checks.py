"""Validation of the capture switch (pure: no database)."""
from typing import Any

from core.errors import PortalError

MODES = ("off", "inputs", "predictions", "both")


def check_capture(value: Any) -> dict:
    """{"mode": off|inputs|predictions|both, "percent": 0-100}; either key may be left out."""
    if not isinstance(value, dict):
        raise PortalError('capture must be an object such as {"mode": "both", "percent": 10}.',
                          fields={"capture": "send an object with mode and/or percent"})
    unknown = sorted(set(value) - {"mode", "percent"})
    if unknown:
        raise PortalError(f"capture has no field {unknown[0]!r}; use mode and percent.", fields={f"capture.{unknown[0]}": "unknown field"})
    out: dict = {}
    if "mode" in value:
        if value["mode"] not in MODES:
            raise PortalError(f"capture.mode must be one of {', '.join(MODES)}.", fields={"capture.mode": f"one of {', '.join(MODES)}"})
        out["mode"] = value["mode"]
    if "percent" in value:
        percent = value["percent"]
        if isinstance(percent, str):
            try:
                percent = float(percent)
            except ValueError:
                percent = None
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100 or percent != percent:
            raise PortalError("capture.percent must be a number from 0 to 100 (the share of requests captured).",
                              fields={"capture.percent": "a number from 0 to 100"})
        out["percent"] = float(percent)
    return out


def check_moment(raw: Any, name: str):
    """An ISO date or time (UTC when it names no zone), or None when empty."""
    import datetime as dt

    if raw in (None, ""):
        return None
    try:
        moment = dt.datetime.fromisoformat(str(raw))
    except ValueError:
        raise PortalError(f"{name} must be an ISO date or time such as 2026-12-01 or 2026-12-01T15:00Z.",
                          fields={name: "not an ISO date/time"}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def check_range(since, until, *, since_name: str = "since", until_name: str = "until") -> None:
    if since is not None and until is not None and since >= until:
        raise PortalError(f"{since_name} must be before {until_name} (the time range is reversed or empty).",
                          fields={until_name: f"must be after {since_name}"})


def check_number(value: Any, name: str, low: float, high: float, *, whole: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not low <= value <= high
            or (whole and value != int(value))):
        kind = "a whole number" if whole else "a number"
        raise PortalError(f"{name} must be {kind} from {low:g} to {high:g}.", fields={name: f"{kind} from {low:g} to {high:g}"})
    return int(value) if whole else float(value)


DRIFT_FIELDS = ("reference", "project", "path", "window_start", "window_end", "current_hours",
                "feature_threshold", "share_threshold", "scheduled")


def check_drift_settings(value: Any) -> dict:
    """Validates a drift settings change (any subset of DRIFT_FIELDS); project is left as given
    (resolved against the workspace by the service)."""
    if not isinstance(value, dict):
        raise PortalError('Send the drift settings as an object such as {"reference": "file", "project": "churn", "path": "data/x.csv"}.',
                          fields={"drift": "send an object"})
    unknown = sorted(set(value) - set(DRIFT_FIELDS))
    if unknown:
        raise PortalError(f"Drift settings have no field {unknown[0]!r}; use {', '.join(DRIFT_FIELDS)}.",
                          fields={unknown[0]: "unknown field"})
    out: dict = {}
    if "reference" in value:
        if value["reference"] not in ("file", "window"):
            raise PortalError("reference must be file (a project data file) or window (a time window of capture).",
                              fields={"reference": "file or window"})
        out["reference"] = value["reference"]
    for name in ("project", "path"):
        if name in value:
            out[name] = str(value[name] or "").strip()
    for name in ("window_start", "window_end"):
        if name in value:
            out[name] = check_moment(value[name], name)
    if "current_hours" in value:
        out["current_hours"] = check_number(value["current_hours"], "current_hours", 1, 24 * 90, whole=True)
    if "feature_threshold" in value:
        out["feature_threshold"] = check_number(value["feature_threshold"], "feature_threshold", 0.001, 10)
    if "share_threshold" in value:
        out["share_threshold"] = check_number(value["share_threshold"], "share_threshold", 0.001, 1)
    if "scheduled" in value:
        if not isinstance(value["scheduled"], bool):
            raise PortalError("scheduled must be true or false.", fields={"scheduled": "true or false"})
        out["scheduled"] = value["scheduled"]
    return out


MAX_LABELS = 100_000


def parse_ground_truth_csv(data: bytes) -> list[tuple[str, str]]:
    """(request id, label) pairs from CSV text: a header ``request_id,label`` (optional), then one
    pair a line. Raises naming the first bad line; nothing is taken from a file with one."""
    import csv
    import io

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PortalError("The ground-truth file must be UTF-8 text (CSV: request_id,label).", fields={"file": "not UTF-8"}) from None
    pairs = []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if number == 1 and [c.strip().lower() for c in cells] == ["request_id", "label"]:
            continue
        if len(cells) != 2:
            raise PortalError(f"Line {number} of the ground-truth file has {len(cells)} cells; each line must be request_id,label.",
                              fields={"file": f"line {number}: expected 2 cells, found {len(cells)}"})
        pairs.append(_check_pair(cells[0], cells[1], where=f"Line {number} of the ground-truth file", field="file"))
    if not pairs:
        raise PortalError("The ground-truth file has no request_id,label lines.", fields={"file": "empty"})
    if len(pairs) > MAX_LABELS:
        raise PortalError(f"Send at most {MAX_LABELS} labels at a time.", fields={"file": "too many lines"})
    return pairs


def _check_pair(request_id: Any, label: Any, *, where: str, field: str) -> tuple[str, str]:
    import re

    rid = str(request_id if request_id is not None else "").strip()
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}(#[0-9]{1,6})?", rid):
        raise PortalError(f"{where}: request id {rid[:40]!r} is not one (1-128 of A-Z a-z 0-9 . _ : -, then #<n> for a record of a batch).",
                          fields={field: f"{where}: bad request id"})
    if label is None or isinstance(label, (dict, list)) or not str(label).strip() or len(str(label)) > 500:
        raise PortalError(f"{where}: the label must be a number or text of 1-500 characters.", fields={field: f"{where}: bad label"})
    return rid, str(label).strip()


def parse_ground_truth_json(value: Any) -> list[tuple[str, str]]:
    """(request id, label) pairs from ``{"labels": [{"request_id", "label"} | [id, label], ...]}`` or the bare list."""
    items = value.get("labels") if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise PortalError('Send {"labels": [{"request_id": "...", "label": "..."}, ...]} or upload a CSV file as "file".',
                          fields={"labels": "a non-empty list"})
    if len(items) > MAX_LABELS:
        raise PortalError(f"Send at most {MAX_LABELS} labels at a time.", fields={"labels": "too many"})
    pairs = []
    for index, item in enumerate(items):
        where = f"labels[{index}]"
        if isinstance(item, dict):
            pairs.append(_check_pair(item.get("request_id"), item.get("label"), where=where, field="labels"))
        elif isinstance(item, list) and len(item) == 2:
            pairs.append(_check_pair(item[0], item[1], where=where, field="labels"))
        else:
            raise PortalError(f"{where} must be {{\"request_id\", \"label\"}} or [request_id, label].", fields={"labels": f"{where}: bad pair"})
    return pairs
