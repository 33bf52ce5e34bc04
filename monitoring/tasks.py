"""Celery discovers the monitoring tasks here; they live in worker.py."""
from monitoring.worker import collect_capture, compute_drift_task  # noqa: F401
