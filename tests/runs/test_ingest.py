"""run_record_metrics writes a batch as COPY text on PostgreSQL (runs.metric_copy) and keeps
exactly what the ORM's own insert keeps: names with tabs, backslashes and newlines, text values,
NaN (kept as MLflow keeps it), infinities (clamped to ±DOUBLE_MAX as MLflow's SQL store does), missing
steps and times — the COPY text must not bend any of them."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from runs import metrics, services
from runs.metric_copy import copy_text
from runs.models import Metric, RunMetricSummary

AWKWARD = [
    {"name": "tab\there", "value": 0.1, "step": 0, "time": 1_700_000_000.5},
    {"name": "back\\slash \\N", "value": -2.5e-300, "step": -(2**31), "time": 1_700_000_000.5},
    {"name": "new\nline\r", "value": 1.7976931348623157e308, "step": 2**31 - 1, "time": None},
    {"name": "ünïcode 📈", "value": "a text \t value\\", "step": None, "time": 1},
    {"name": "nan", "value": float("nan"), "step": 3, "time": 2.25},
    {"name": "inf", "value": float("inf"), "step": 4, "time": 3},
    {"name": "whole", "value": 7, "step": 5, "time": 4},
    {"name": "tab\there", "value": 0.2, "step": 1, "time": 1_700_000_001},
]


def _stored(run):
    return sorted((m.name, m.value, m.text, m.step, m.logged_at if m.logged_at.year < 2026 else "now")
                  for m in Metric.objects.filter(run=run))


@pytest.mark.django_db
def test_run_record_metrics_stores_what_the_orm_would(owner, blank):
    fast = services.run_submit(project=blank, script="train.py", user=owner)
    plain = services.run_submit(project=blank, script="train.py", user=owner)
    metrics.run_record_metrics(run_id=fast.id, workspace_id=fast.workspace_id, points=AWKWARD)
    Metric.objects.bulk_create([Metric(run_id=plain.id, workspace_id=plain.workspace_id, name=n, value=v, text=t, step=s,
                                       logged_at=at) for n, v, t, s, at in metrics.rows_of(AWKWARD)])

    assert _stored(fast) == _stored(plain) and len(_stored(fast)) == len(AWKWARD)
    got = {m.name: m for m in Metric.objects.filter(run=fast, step__in=[0, 3, 4, -(2**31)])}
    assert got["tab\there"].value == 0.1 and got["nan"].value is None and got["nan"].text == "NaN"
    assert got["inf"].value == 1.7976931348623157e308 and got["back\\slash \\N"].value == -2.5e-300
    assert got["tab\there"].logged_at == datetime.fromtimestamp(1_700_000_000.5, tz=timezone.utc)
    summaries = {s.name: (s.value, s.text, s.step, s.count) for s in RunMetricSummary.objects.filter(run=fast)}
    assert summaries["tab\there"] == (0.2, "", 1, 2) and summaries["ünïcode 📈"] == (None, "a text \t value\\", None, 1)


def test_copy_text_escapes_what_copy_would_read_as_structure():
    when = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)
    text = copy_text("r", "w", [("a\tb\\c\nd\re", None, "x\ty", None, when), ("n", float("-inf"), "", 7, when)])
    assert text == ("r\tw\ta\\tb\\\\c\\nd\\re\t\\N\tx\\ty\t\\N\t2026-01-02T03:04:05.600000+00:00\n"
                    "r\tw\tn\t-Infinity\t\t7\t2026-01-02T03:04:05.600000+00:00\n")
