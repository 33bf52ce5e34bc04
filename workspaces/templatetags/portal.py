"""Template helpers shared by every page: times, durations, status badges, byte sizes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

from django import template
from django.utils.html import format_html

register = template.Library()


@register.filter
def when(value: datetime | None):
    """A <time> the page's script shows in local time; the UTC value stays on hover."""
    if not value:
        return "—"
    utc = value.astimezone(dt_timezone.utc)
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>', utc.isoformat(), utc.strftime("%Y-%m-%d %H:%M:%S"),
        utc.strftime("%Y-%m-%d %H:%M UTC"),
    )


@register.filter
def duration(value) -> str:
    """Seconds (or a timedelta) as '1h 02m', '3m 05s', '4.2 s'."""
    if value is None or value == "":
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@register.filter
def badge(status: str | None):
    """A coloured status badge; the status text is escaped."""
    status = status or "unknown"
    return format_html('<span class="badge badge-{}" data-status="{}">{}</span>', status.replace(" ", "_"), status, status)


@register.simple_tag(takes_context=True)
def nav_active(context, *names: str) -> str:
    match = getattr(context.get("request"), "resolver_match", None)
    return "active" if match and match.url_name in names else ""
