"""Makes the configured base image when the Docker engine lacks it: a pull, else the offline build
from Debian packages (air-gapped sites). `make run` calls it with --optional on every start, so the
first run works on a machine with no image registry; it returns at once when the image is there."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Ensure MLPORTAL_BASE_IMAGE exists in the Docker engine; build it with debootstrap if it cannot be pulled."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None, help="Image name (default: the MLPORTAL_BASE_IMAGE setting)")
        parser.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm, Python 3.11)")
        parser.add_argument("--optional", action="store_true",
                            help="a missing engine or a failed build is a warning, not an error (make run)")

    def handle(self, *args, name, suite, optional, **options):
        from compute.baseimage import ensure_base_image
        from compute.engine import EngineError, engine_status

        name = name or settings.MLPORTAL_BASE_IMAGE
        if optional:
            status = engine_status(settings.MLPORTAL_DOCKER_URL)
            if not status["ok"]:
                self.stderr.write(f"warning: {status['error']}; runs and services need it, and the base image "
                                  f"{name} is made on the next start once it answers (or: make base-image)")
                return
        try:
            image_id = ensure_base_image(name, log=lambda line: self.stdout.write(f"[base image] {line}"),
                                         base_url=settings.MLPORTAL_DOCKER_URL, suite=suite,
                                         debootstrap=settings.MLPORTAL_DEBOOTSTRAP)
        except EngineError as exc:
            if optional:
                self.stderr.write(f"warning: the base image {name} is missing and could not be made: {exc}. "
                                  "Runs and services fail until it exists: load it into the engine, or fix the "
                                  "cause and run make base-image")
                return
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{name} is ready ({image_id[:19]})"))
