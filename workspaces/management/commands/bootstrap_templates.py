"""Loads the project templates when the runs app provides them (`load_project_templates`)."""
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Load project templates (the runs app's load_project_templates) if that command is installed."

    def handle(self, *args, **options):
        if "load_project_templates" in get_commands():
            call_command("load_project_templates", stdout=self.stdout)
        else:
            self.stdout.write("No project templates to load (the runs app has no load_project_templates command).")
