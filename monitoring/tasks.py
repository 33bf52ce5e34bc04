"""Celery discovers the capture collection here; it lives in worker.py."""
from monitoring.worker import collect_capture  # noqa: F401
