"""Template filters of the runs pages."""
from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def get_item(mapping, key):
    """mapping[key], or None (templates cannot index a dict by a variable)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def metric(value) -> str:
    """A metric value for a table cell: floats with up to 6 significant digits, strings as they are."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


@register.filter
def filesize(value) -> str:
    """Bytes as '812 B', '3.4 KiB', '2.1 MiB'."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
