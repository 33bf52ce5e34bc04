"""First start: a first admin user with a workspace, and a line saying how to log in."""
import os

from django.core.management.base import BaseCommand

from workspaces import services


class Command(BaseCommand):
    help = "Create the first admin user (MLPORTAL_ADMIN_USER, MLPORTAL_ADMIN_PASSWORD) if missing."

    def handle(self, *args, **options):
        username = os.environ.get("MLPORTAL_ADMIN_USER", "admin")
        password = os.environ.get("MLPORTAL_ADMIN_PASSWORD") or None
        user, created, password = services.user_bootstrap(username=username, password=password, superuser=True)
        if created:
            self.stdout.write(self.style.SUCCESS(f"Created the first user: log in as '{username}' with password '{password}'"))
            from django.conf import settings

            (settings.DATA_DIR / "admin-password.txt").write_text(f"{username}\n{password}\n")
            (settings.DATA_DIR / "admin-password.txt").chmod(0o600)
        else:
            self.stdout.write(f"User '{username}' exists; its first password is in MLPORTAL_DATA_DIR/admin-password.txt if unchanged.")
