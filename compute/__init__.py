"""The Docker engine wrapper and the local-process runner.

Plain Python, no Django: the only package of the product that imports ``docker``. Every
``docker.errors.*`` and connection error is turned into :class:`compute.engine.EngineError` (or
its subclasses) before it leaves this package, so callers never need to know the SDK.

Modules: ``engine`` (clients, errors, labels), ``baseimage`` (offline base image), ``wheels``
(the host's wheel cache), ``envimage`` (the shared environment image), ``runner`` (runs in a
container or a local process), ``images`` (service images), ``containers`` (service containers).
"""
