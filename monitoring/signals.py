"""Signals other apps subscribe to (the retraining pipelines of issue 17 listen to drift).

``drift_detected`` is sent, after the commit, when a drift report finds a service drifted and the
report before it did not (one event per episode, not one per hourly check), with
``sender=DriftReport`` and keyword arguments ``service`` (the Service), ``report`` (the DriftReport)
and ``trigger`` ("schedule" or "demand"). Receivers run in the worker that
computed the report (the maintenance worker: hourly or a drift job asked for on demand): keep
them quick, enqueue real work.
"""
from django.dispatch import Signal

drift_detected = Signal()
