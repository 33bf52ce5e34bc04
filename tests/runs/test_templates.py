"""The template registry and `load_project_templates` (run by `make run`)."""
from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from runs import catalog


def test_the_churn_template_is_read_from_its_folder():
    template = catalog.get_template("churn")
    assert template.name == "Customer Churn Prediction"
    assert template.default_script == "CATelcoCustomerChurnModelingWithoutDprep.py"
    assert "data/CATelcoCustomerChurnTrainingSample.csv" in template.files and "template.json" not in template.files
    assert template.matches("churn") and template.matches("CUSTOMER") and not template.matches("iris")


def test_loading_templates_twice_lists_the_same_templates():
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        call_command("load_project_templates", stdout=out)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] and "Template churn: Customer Churn Prediction" in outputs[0]


def test_a_broken_template_folder_is_reported_by_name(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "template.json").write_text(json.dumps({"name": "B", "slug": "b", "description": "", "default_script": "x.py"}))
    with pytest.raises(catalog.TemplateError, match="broken.*x.py"):
        catalog._read_template(folder)
