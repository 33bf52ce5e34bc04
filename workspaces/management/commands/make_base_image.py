"""Makes the configured base image offline from Debian packages when it is missing (air-gapped sites)."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Ensure MLPORTAL_BASE_IMAGE exists in the Docker engine; build it with debootstrap if it cannot be pulled."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None, help="Image name (default: the MLPORTAL_BASE_IMAGE setting)")
        parser.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm, Python 3.11)")

    def handle(self, *args, name, suite, **options):
        from compute.baseimage import ensure_base_image
        from compute.engine import EngineError

        name = name or settings.MLPORTAL_BASE_IMAGE
        try:
            image_id = ensure_base_image(name, log=self.stdout.write, base_url=settings.MLPORTAL_DOCKER_URL, suite=suite)
        except EngineError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{name} is ready ({image_id[:19]})"))
