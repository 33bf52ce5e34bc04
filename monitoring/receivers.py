"""Where a drift event goes besides the service's events and the activity log: the retraining
pipelines (issue 17) record it with ``pipelines.services.drift_signal_record``, which sends it to
webhooks as ``drift.detected`` and starts the service's pipelines that retrain on drift."""
from __future__ import annotations


def drift_to_pipelines(sender, *, service, report, trigger, **kwargs) -> None:
    from pipelines.services import drift_signal_record

    drift_signal_record(service=service, detail={
        "features": ", ".join(f["name"] for f in report.features if f.get("drifted"))[:200],
        "share": round(report.share_drifted, 4), "reference": report.reference[:200], "report": report.pk,
        "trigger": trigger})
