"""The registry's side of model scanning: every model file is scanned (``registry.scanning``, opcodes
only) before it is stored as a version; manifests refuse dangerous versions and take unknown ones
only when confirmed, unless a workspace owner accepted that version (recorded in the activity log).

An acceptance belongs to the file's bytes within the workspace: a version registered later with the
same sha256 (``service create realtime`` registers a new version each time) carries it over.
"""
from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from registry import scanning
from registry.models import Model, ScanVerdict
from core.errors import PortalError
from workspaces.models import Role
from workspaces.services import activity_record, require_role


class ScanRefused(PortalError):
    """A manifest (or the one-shot) may not bundle a model version because of its scan."""

    def __init__(self, message: str, *, code: str, model: Model, names: list[str], field: str = "models") -> None:
        super().__init__(message, code=code, fields={field: message})
        self.model, self.names = model, names


def scan_limits() -> scanning.Limits:
    return scanning.Limits(max_bytes=settings.MLPORTAL_SCAN_MAX_BYTES,
                           max_total_bytes=4 * settings.MLPORTAL_SCAN_MAX_BYTES,
                           max_opcodes=settings.MLPORTAL_SCAN_MAX_OPCODES,
                           max_members=settings.MLPORTAL_SCAN_MAX_MEMBERS)


def scan_allow() -> tuple:
    return scanning.parse_allow([*scanning.DEFAULT_ALLOW, *settings.MLPORTAL_SCAN_ALLOW])


def scan_stored(storage_name: str, file_name: str) -> scanning.ScanResult:
    """The verdict on a stored file, read as a stream from the default storage."""
    with default_storage.open(storage_name, "rb") as handle:
        return scanning.scan_file(handle, file_name=file_name, allow=scan_allow(), limits=scan_limits())


def scan_fields(result: scanning.ScanResult, *, declared_framework: str = "") -> dict:
    """Model fields for a scan result. The framework is what the file references; a declared one
    counts only for a file with no pickle in it (ONNX, Keras…), where the scan cannot tell."""
    framework = result.framework
    if framework == scanning.UNKNOWN_FRAMEWORK and not result.pickles and declared_framework:
        framework = declared_framework
    return {
        "scan_verdict": result.verdict, "scan_reason": result.reason[:4000], "scan_reason_code": result.reason_code,
        "scan_format": result.format[:32], "scan_globals": result.globals_json()[:500], "scanned_at": timezone.now(),
        "scan_needs_confirmation": result.needs_confirmation,
        "framework": framework[:32], "framework_version": result.framework_version[:64],
    }


def accepted_twin(*, workspace, sha256: str) -> Model | None:
    """A version of the workspace with the same bytes that an owner accepted, if any."""
    return (Model.objects.filter(workspace=workspace, sha256=sha256, accepted_at__isnull=False)
            .select_related("accepted_by").order_by("accepted_at").first())


def carry_acceptance(model: Model, *, user) -> None:
    """Gives a new, not-safe version the acceptance of an accepted version with the same bytes."""
    if model.scan_verdict in ("", ScanVerdict.SAFE):
        return
    twin = accepted_twin(workspace=model.workspace, sha256=model.sha256)
    if twin is None or twin.pk == model.pk:
        return
    model.accepted_by_id, model.accepted_at = twin.accepted_by_id, twin.accepted_at
    model.save(update_fields=["accepted_by", "accepted_at"])
    activity_record(workspace=model.workspace, actor=user, verb="model.accepted", target=model, detail={
        "verdict": model.scan_verdict, "same_file_as": twin.ref,
        "accepted_by": getattr(twin.accepted_by, "username", None), "accepted_at": twin.accepted_at.isoformat()})


def ensure_scanned(model: Model) -> Model:
    """Scans a version registered before scans existed (its verdict is empty), once."""
    if model.scan_verdict:
        return model
    try:
        result = scan_stored(model.file, model.file_name)
    except OSError as exc:
        result = scanning.ScanResult(reason=f"The stored file cannot be read ({exc}).", reason_code=scanning.DAMAGED,
                                     needs_confirmation=True)
    fields = scan_fields(result, declared_framework=model.framework)
    for key, value in fields.items():
        setattr(model, key, value)
    model.save(update_fields=list(fields))
    return model


def _names(model: Model, verdict: str) -> list[str]:
    return list(dict.fromkeys(g.get("global", "") for g in model.scan_globals if g.get("verdict") == verdict))


def _how_to_accept(model: Model, one_shot: bool) -> str:
    if one_shot:
        return ("A workspace owner can accept the file: register it ('mlportal model register -m FILE'), accept that "
                "version ('mlportal model accept NAME:VERSION', or Accept on its page); the same file then passes here.")
    return (f"A workspace owner can accept {model.ref}: 'mlportal model accept {model.ref}', the Accept button on its "
            f"page, or POST /api/v1/models/{model.pk}/accept/.")


def check_manifest_models(models: list[Model], *, confirm_unknown: bool = False, one_shot: bool = False) -> list[str]:
    """Refuses (ScanRefused) a dangerous version, and an unknown or partly read one unless
    ``confirm_unknown``; versions an owner accepted pass. Returns the refs taken on confirmation."""
    confirmed: list[str] = []
    for model in models:
        ensure_scanned(model)
        if model.is_accepted:
            continue
        what = f"Model {model.ref} (file {model.file_name})"
        if model.scan_verdict == ScanVerdict.DANGEROUS:
            names = _names(model, scanning.DANGEROUS)
            message = (f"{what} is dangerous: it names {', '.join(names[:6]) or 'code'}, which run code or reach the "
                       f"system when the file is loaded, so no image may carry it. {_how_to_accept(model, one_shot)}")
            raise ScanRefused(message, code="model_dangerous", model=model, names=names)
        if model.scan_needs_confirmation and not confirm_unknown:
            names = _names(model, scanning.UNKNOWN)
            if model.scan_verdict == ScanVerdict.UNKNOWN:
                why = f"names {', '.join(names[:6])}, which are not on the portal's list of model libraries"
            else:
                why = f"could not be scanned to its end ({model.scan_reason.rstrip('.')})"
            message = (f"{what} {why}. Confirm that you trust it (confirm_unknown=true in the API, --confirm-unknown in "
                       f"the CLI, the checkbox on the page), or: {_how_to_accept(model, one_shot)}")
            raise ScanRefused(message, code="confirmation_needed", model=model, names=names)
        if model.scan_needs_confirmation:
            confirmed.append(model.ref)
    return confirmed


@transaction.atomic
def model_accept(*, model: Model, user) -> Model:
    """A workspace owner accepts a version the scan did not find safe; recorded in the activity log.
    Raises Forbidden below owner, PortalError for a safe version (nothing to accept)."""
    require_role(user=user, workspace=model.workspace, role=Role.OWNER)
    model = Model.objects.select_for_update().get(pk=model.pk)
    ensure_scanned(model)
    if model.scan_verdict == ScanVerdict.SAFE:
        raise PortalError(f"Model {model.ref} is safe: there is nothing to accept.", code="nothing_to_accept")
    if model.is_accepted:
        return model
    model.accepted_by, model.accepted_at = user, timezone.now()
    model.save(update_fields=["accepted_by", "accepted_at"])
    activity_record(workspace=model.workspace, actor=user, verb="model.accepted", target=model, detail={
        "verdict": model.scan_verdict, "file": model.file_name, "sha256": model.sha256,
        "globals": _names(model, scanning.DANGEROUS) + _names(model, scanning.UNKNOWN)})
    return model


@transaction.atomic
def model_accept_withdraw(*, model: Model, user) -> Model:
    """An owner withdraws the acceptance of a version (and of its twins with the same bytes): new
    manifests refuse it again; those made already keep it."""
    require_role(user=user, workspace=model.workspace, role=Role.OWNER)
    if not model.is_accepted:
        raise PortalError(f"Model {model.ref} is not accepted.", code="not_accepted")
    twins = Model.objects.filter(workspace=model.workspace, sha256=model.sha256, accepted_at__isnull=False)
    refs = [m.ref for m in twins]
    twins.update(accepted_by=None, accepted_at=None)
    activity_record(workspace=model.workspace, actor=user, verb="model.acceptance_withdrawn", target=model,
                    detail={"versions": refs})
    model.refresh_from_db()
    return model


def parse_flag(value, *, field: str = "confirm_unknown") -> bool:
    """A yes/no flag from JSON (a boolean) or a form ("true", "1", "yes", "on"; "", "false", "0", "no", "off")."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("", "false", "0", "no", "off"):
        return False
    message = f"{field} must be true or false, not {str(value)[:20]!r}."
    raise PortalError(message, fields={field: message})
