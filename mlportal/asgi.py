"""The portal's ASGI application: the scoring gateway (gateway.app) in front of Django's.

Served by uvicorn (``scripts/run_portal.py``, the Dockerfile, docker-compose.yml)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlportal.settings")
django_application = get_asgi_application()

from gateway.app import build  # noqa: E402 (needs the settings Django just loaded)

application = build(django_application)
