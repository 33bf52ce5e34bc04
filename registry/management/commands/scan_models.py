"""Re-scan stored model versions: after MLPORTAL_SCAN_ALLOW changes, or for versions registered
before model files were scanned. Acceptances stay as they are."""
from __future__ import annotations

from collections import Counter

from django.core.management.base import BaseCommand

from registry import model_scan
from registry.models import Model


class Command(BaseCommand):
    help = "Scan stored model files again (opcodes only, never loaded) and store each version's verdict."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", help="only this workspace (its name)")
        parser.add_argument("--unscanned", action="store_true", help="only versions that have no verdict yet")

    def handle(self, *args, workspace=None, unscanned=False, **options):
        qs = Model.objects.order_by("workspace__name", "name", "version")
        if workspace:
            qs = qs.filter(workspace__name=workspace)
        if unscanned:
            qs = qs.filter(scan_verdict="")
        counts: Counter[str] = Counter()
        for model in qs.iterator():
            before = model.scan_verdict
            model.scan_verdict = ""
            model_scan.ensure_scanned(model)
            counts[model.scan_verdict] += 1
            if before != model.scan_verdict:
                self.stdout.write(f"{model.workspace.name}/{model.ref}: {before or 'not scanned yet'} -> {model.scan_verdict}")
        summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "no versions"
        self.stdout.write(f"scanned {sum(counts.values())} versions: {summary}")
