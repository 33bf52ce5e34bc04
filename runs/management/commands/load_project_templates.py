"""Checks and lists the project templates the portal offers (run by `make run`; safe to repeat)."""
from django.core.management.base import BaseCommand, CommandError

from runs import catalog


class Command(BaseCommand):
    help = "Read runs/project_templates/*/template.json, check every template and list them."

    def handle(self, *args, **options):
        try:
            templates = catalog.reload()
        except catalog.TemplateError as exc:
            raise CommandError(str(exc)) from None
        if not templates:
            self.stdout.write("No project templates found.")
        for template in templates:
            self.stdout.write(
                f"Template {template.slug}: {template.name} ({len(template.files)} files, "
                f"{template.total_size} bytes, default script {template.default_script})"
            )
