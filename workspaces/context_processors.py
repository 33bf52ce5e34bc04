from django.conf import settings
from django.urls import NoReverseMatch, reverse

from workspaces.selectors import workspaces_for_user

NAV = [
    ("Dashboard", "dashboard", "▦"),
    ("Projects", "project-list", "▤"),
    ("Runs", "run-list", "▶"),
    ("Models", "model-list", "◈"),
    ("Manifests", "manifest-list", "☰"),
    ("Images", "image-list", "▣"),
    ("Services", "service-list", "⚡"),
    ("Pipelines", "pipeline-list", "⟳"),
    ("Webhooks", "webhook-list", "↗"),
    ("Environments", "environment-list", "☁"),
    ("Storage", "storage", "▤"),
    ("Activity", "activity-list", "≡"),
]


def _url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


def portal(request) -> dict:
    """The top bar and left navigation: workspaces to switch to, the sections of the portal."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    nav = [{"label": label, "url_name": name, "url": _url(name), "icon": icon} for label, name, icon in NAV]
    return {
        "nav": [item for item in nav if item["url"]],
        "my_workspaces": list(workspaces_for_user(user).order_by("name")),
        "current_workspace": getattr(request, "workspace", None),
        "current_role": getattr(request, "role", None),
        "poll_interval_ms": settings.MLPORTAL_POLL_INTERVAL_MS,
    }
