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
