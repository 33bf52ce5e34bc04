"""Prints a new API token for a user, so scripts and CI can log in without a browser."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from workspaces import services
from core.errors import PortalError


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (create the user with --create)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A name for the token (default: cli)")
        parser.add_argument("--create", action="store_true", help="Create the user (and a workspace they own) if missing")
        parser.add_argument("--workspace", default=None, help="Workspace for a created user (default: their username)")
        parser.add_argument("--expires-days", type=int, default=None, help="Lifetime in days (default: MLPORTAL_TOKEN_DAYS, 90)")
        parser.add_argument("--read-only", action="store_true", help="The token may only read (GET requests)")

    def handle(self, *args, username, name, create, workspace, expires_days, read_only, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"No user named '{username}': pass --create to create one.")
            user, _, _ = services.user_bootstrap(username=username, workspace_name=workspace or username.lower())
        if not user.is_active:
            raise CommandError(f"User '{username}' is deactivated.")
        try:
            _, secret = services.token_create(user=user, name=name, expires_in_days=expires_days, read_only=read_only)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(secret)
