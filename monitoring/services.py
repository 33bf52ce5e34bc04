"""Request side of data capture: the switch on a service."""
import hashlib
import hmac

from django.conf import settings

from .checks import check_capture
from .models import Capture


def internal_key(service) -> str:
    """The key the worker pulls a service's replicas with (derived, never stored or shown)."""
    return hmac.new(settings.SECRET_KEY.encode(), f"mlportal-capture:{service.pk}".encode(), hashlib.sha256).hexdigest()


def capture_of(service) -> dict:
    capture = Capture.objects.filter(service=service).first()
    if capture is None:
        return {"mode": "off", "percent": 100.0, "dropped": 0, "last_collected_at": None}
    return {"mode": capture.mode, "percent": capture.percent, "dropped": capture.dropped,
            "last_collected_at": capture.last_collected_at}


def set_capture(*, service, value, user) -> dict:
    """Validates then saves the switch; the replicas get it with the next pull (no redeploy)."""
    from workspaces.models import Role
    from workspaces.services import activity_record, require_role

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    changes = check_capture(value)
    capture, _ = Capture.objects.get_or_create(service=service)
    for name, field_value in changes.items():
        setattr(capture, name, field_value)
    capture.save()
    activity_record(workspace=service.workspace, actor=user, verb="service.capture_changed", target=service,
                    detail={"mode": capture.mode, "percent": capture.percent})
    return capture_of(service)


def container_env(service) -> dict[str, str]:
    """What a new replica starts with: the internal key and the switch as it is now."""
    capture = Capture.objects.filter(service=service).first()
    env = {"MLPORTAL_INTERNAL_KEY": internal_key(service)}
    versions = [f"{m.name}:{m.version}" for m in service.image.manifest.model_versions.order_by("name")]
    if versions:
        env["MLPORTAL_MODEL_VERSION"] = ",".join(versions)
    if capture is not None:
        env["MLPORTAL_CAPTURE_MODE"] = capture.mode
        env["MLPORTAL_CAPTURE_PERCENT"] = f"{capture.percent:g}"
    return env
