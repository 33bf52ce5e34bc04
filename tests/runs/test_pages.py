"""The runs pages: projects (list, new from a template, dashboard, files, settings, run form), all
runs with metric columns, run details, outputs and compare; escaped HTML; outsiders 404, readers 403."""
from __future__ import annotations

import io
import json
import re

import pytest
from django.urls import reverse

from core.storage import open_file
from runs import services
from runs.models import Project, ProjectFile, Run

pytestmark = pytest.mark.django_db


def test_the_projects_page_finds_the_churn_template_and_creates_a_project_from_it(page_client, owner, workspace):
    client = page_client(owner)
    page = client.get(reverse("project-list") + "?tq=churn")
    assert page.status_code == 200 and "Customer Churn Prediction" in page.content.decode()
    assert "Customer Churn Prediction" not in client.get(reverse("project-list") + "?tq=zzz").content.decode()
    res = client.post(reverse("project-list"), {"name": "churn_prediction", "template": "churn"})
    project = Project.objects.get(name="churn_prediction")
    assert res.status_code == 302 and res["Location"] == project.get_absolute_url()
    page = client.get(project.get_absolute_url()).content.decode()
    assert "CATelcoCustomerChurnModelingWithoutDprep.py" in page and 'data-testid="run-button"' in page
    assert "scikit-learn" in page  # the environment spec on the Settings tab


def test_a_bad_project_name_is_shown_next_to_the_field(page_client, owner, workspace):
    res = page_client(owner).post(reverse("project-list"), {"name": "Bad Name"})
    assert res.status_code == 200 and "is not allowed" in res.content.decode()


def test_the_projects_list_searches_and_escapes(page_client, owner, workspace):
    services.project_create(workspace=workspace, name="evil", user=owner, description="<script>alert(1)</script>")
    services.project_create(workspace=workspace, name="other", user=owner)
    page = page_client(owner).get(reverse("project-list") + "?q=evil").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert ">other<" not in page


def test_the_run_form_submits_and_shows_a_bad_argument_line(page_client, owner, blank):
    client = page_client(owner)
    res = client.post(reverse("project-run", args=[blank.pk]), {"script": "train.py", "args": "--a 'b c'", "target": "docker"})
    run = Run.objects.get()
    assert res.status_code == 302 and res["Location"] == run.get_absolute_url()
    assert run.args == ["--a", "b c"]
    res = client.post(reverse("project-run", args=[blank.pk]), {"script": "train.py", "args": "'open", "target": "docker"})
    assert res.status_code == 400 and "close every quote" in res.content.decode()


def test_settings_save_the_environment_spec_as_requirements_txt(page_client, owner, blank):
    res = page_client(owner).post(reverse("project-settings", args=[blank.pk]), {
        "requirements": "numpy>=1.26\n", "default_target": "local", "time_limit_s": 60, "memory_mb": 512, "cpus": 1.5,
    })
    assert res.status_code == 302
    blank.refresh_from_db()
    assert blank.requirements == "numpy>=1.26\n" and blank.default_target == "local" and blank.cpus == 1.5
    assert ProjectFile.objects.filter(project=blank, path="requirements.txt").exists()
    res = page_client(owner).post(reverse("project-settings", args=[blank.pk]), {
        "requirements": "", "default_target": "docker", "time_limit_s": 0, "memory_mb": 512, "cpus": 1,
    })
    assert res.status_code == 400


def test_files_are_viewed_escaped_edited_and_uploaded(page_client, owner, blank):
    client = page_client(owner)
    services.project_file_put(project=blank, path="notes.html", content=b"<b>bold</b>", user=owner)
    page = client.get(reverse("project-file", args=[blank.pk, "notes.html"])).content.decode()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    res = client.post(reverse("project-file", args=[blank.pk, "train.py"]), {"action": "save", "content": "print('edited')\n"})
    assert res.status_code == 302
    with open_file(ProjectFile.objects.get(project=blank, path="train.py").storage_name) as handle:
        assert handle.read() == b"print('edited')\n"
    upload = io.BytesIO(b"x,y\n")
    upload.name = "d.csv"
    res = client.post(reverse("project-upload", args=[blank.pk]), {"file": upload, "path": "data/d.csv"})
    assert res.status_code == 302 and ProjectFile.objects.filter(project=blank, path="data/d.csv").exists()
    download = client.get(reverse("project-file", args=[blank.pk, "data/d.csv"]) + "?download=1")
    assert download["Content-Disposition"].startswith("attachment")


def test_the_runs_page_has_a_column_per_metric_sorted_by_it(page_client, owner, blank, finished_run):
    low = finished_run(blank, owner, metrics={"DTree Accuracy": 0.71})
    high = finished_run(blank, owner, metrics={"DTree Accuracy": 0.93})
    page = page_client(owner).get(reverse("run-list") + "?ordering=-metric:DTree Accuracy").content.decode()
    assert "DTree Accuracy" in page and "0.93" in page and "0.71" in page
    assert page.index(str(high)) < page.index(str(low)) if str(high) != str(low) else True
    assert page.index("0.93") < page.index("0.71")
    page = page_client(owner).get(reverse("run-list") + "?metric=DTree Accuracy&metric_gt=0.8").content.decode()
    assert "0.93" in page and "0.71" not in page
    page = page_client(owner).get(reverse("run-list") + "?ordering=nonsense").content.decode()
    assert "Cannot order runs by" in page


def test_the_run_page_shows_properties_metrics_chart_and_outputs(page_client, owner, blank, finished_run):
    run = finished_run(blank, owner, metrics={"acc": 0.9, "loss": [(0, 1.0), (1, 0.5)]},
                       outputs={"model.pkl": b"P", "plot.png": b"\x89PNG\r\n", "<img src=x>.txt": b"<script>x</script>"},
                       log=["<script>alert('log')</script>"])
    page = page_client(owner).get(run.get_absolute_url()).content.decode()
    assert run.snapshot_sha256 in page and "mlportal-env:test" in page and 'data-module="metric-chart"' in page
    assert "/models/register/?run=" in page and "path=model.pkl" in page
    assert "<img src=x>" not in page and "&lt;img src=x&gt;.txt" in page
    assert "js/metric_chart.js" in page and "<script>\n" not in page  # behaviour from static/js only
    series = page_client(owner).get(f"/api/v1/runs/{run.pk}/series/").json()["series"]
    assert series == {"loss": {"steps": [0, 1], "values": [1.0, 0.5], "points": 2, "sampled": False}}


def test_image_outputs_are_shown_inline_with_their_type_and_others_never(page_client, owner, blank, finished_run):
    run = finished_run(blank, owner, outputs={"plot.png": b"\x89PNG\r\n", "page.html": b"<script>x</script>"})
    client = page_client(owner)
    image = client.get(reverse("run-output", args=[run.pk, "plot.png"]) + "?inline=1")
    assert image["Content-Type"] == "image/png" and image["X-Content-Type-Options"] == "nosniff"
    assert "attachment" not in image.get("Content-Disposition", "")
    html = client.get(reverse("run-output", args=[run.pk, "page.html"]) + "?inline=1")
    assert html["Content-Disposition"].startswith("attachment") and html["X-Content-Type-Options"] == "nosniff"
    preview = client.get(reverse("run-output", args=[run.pk, "page.html"]) + "?preview=1").content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in preview


def test_compare_shows_runs_side_by_side_with_differences(page_client, owner, blank, finished_run):
    a = finished_run(blank, owner, metrics={"acc": 0.7})
    b = finished_run(blank, owner, metrics={"acc": 0.9})
    page = page_client(owner).get(reverse("run-compare") + f"?ids={a.pk}&ids={b.pk}").content.decode()
    assert 'class="diff"' in page and "0.9" in page and "0.7" in page
    res = page_client(owner).get(reverse("run-compare") + f"?ids={a.pk}")
    assert res.status_code == 302


def test_outsider_gets_404_on_every_page(page_client, outsider, owner, blank, finished_run):
    run = finished_run(blank, owner, outputs={"model.pkl": b"P"})
    other = finished_run(blank, owner)
    client = page_client(outsider)
    for url in [reverse("project-detail", args=[blank.pk]), reverse("project-detail", args=["scratch"]),
                reverse("project-file", args=[blank.pk, "train.py"]), reverse("run-detail", args=[run.pk]),
                reverse("run-output", args=[run.pk, "model.pkl"]), reverse("run-compare") + f"?ids={run.pk}&ids={other.pk}"]:
        assert client.get(url).status_code == 404, url
    for url in [reverse("project-run", args=[blank.pk]), reverse("project-prepare", args=[blank.pk]),
                reverse("project-settings", args=[blank.pk]), reverse("project-upload", args=[blank.pk]),
                reverse("project-file-new", args=[blank.pk]), reverse("project-file", args=[blank.pk, "train.py"]),
                reverse("run-cancel", args=[run.pk])]:
        assert client.post(url, {}).status_code == 404, url
    assert str(run) not in client.get(reverse("run-list")).content.decode()


def test_reader_sees_pages_but_gets_403_on_every_write(page_client, reader, owner, blank, churn):
    run = services.run_submit(project=churn, script="score.py", user=owner)
    client = page_client(reader)
    assert client.get(blank.get_absolute_url()).status_code == 200
    assert 'data-testid="run-button"' not in client.get(blank.get_absolute_url()).content.decode()
    assert client.get(run.get_absolute_url()).status_code == 200
    for url, data in [(reverse("project-run", args=[blank.pk]), {"script": "train.py", "target": "docker"}),
                      (reverse("project-prepare", args=[blank.pk]), {}),
                      (reverse("project-settings", args=[blank.pk]), {}),
                      (reverse("project-upload", args=[blank.pk]), {}),
                      (reverse("project-file-new", args=[blank.pk]), {"path": "x.py"}),
                      (reverse("project-file", args=[blank.pk, "train.py"]), {"action": "save", "content": "x"}),
                      (reverse("run-cancel", args=[run.pk]), {}),
                      (reverse("project-list"), {"name": "newproj"})]:
        assert client.post(url, data).status_code == 403, url
    assert Run.objects.get(id=run.id).status == "queued" and not Project.objects.filter(name="newproj").exists()
