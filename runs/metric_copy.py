"""Metric points as the text of one PostgreSQL ``COPY … FROM STDIN`` (text format).

psycopg's ``Copy.write_row`` adapts every value of every row in Python (about 1.3 µs a value);
formatting a batch's rows as COPY text here and sending it with one ``Copy.write`` does the same
in a fraction of the time, which is most of what a 1,000-metric MLflow ``log-batch`` costs.
"""
from __future__ import annotations

from datetime import datetime

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def _text(value: str) -> str:
    return value.translate(_ESCAPES) if ("\\" in value or "\t" in value or "\n" in value or "\r" in value) else value


def _number(value) -> str:
    value = float(value)
    if value - value == 0:  # finite
        return repr(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def copy_text(run_id: str, workspace_id: str, rows: list[tuple]) -> str:
    """``run_id\\tworkspace_id\\tname\\tvalue\\ttext\\tstep\\tlogged_at`` lines for rows of
    (name, value, text, step, logged_at); value and step may be None (``\\N``), logged_at is an
    aware datetime (written with its offset, so the server's time zone does not matter)."""
    prefix = f"{run_id}\t{workspace_id}\t"
    stamps: dict[datetime, str] = {}
    lines = []
    for name, value, text, step, logged_at in rows:
        stamp = stamps.get(logged_at)
        if stamp is None:
            stamp = stamps[logged_at] = logged_at.isoformat()
        lines.append(f"{prefix}{_text(name)}\t{NULL if value is None else _number(value)}\t{_text(text)}\t"
                     f"{NULL if step is None else int(step)}\t{stamp}\n")
    return "".join(lines)
