"""What the registry tells other apps, without importing them.

``image_finished`` is sent once a build's end (succeeded or failed) is committed, with
``image_id`` and ``status``: the deploys waiting on that image are enqueued by
``deployments`` (its receiver is connected in ``DeploymentsConfig.ready``)."""
from django.dispatch import Signal

image_finished = Signal()
