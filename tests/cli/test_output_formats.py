"""How results print: a table by default, -o json / -o tsv, and --query (JMESPath) before printing."""
from __future__ import annotations

import json

import pytest

from mlportal_cli.client import CliError
from mlportal_cli.output import Result, columns, format_result

ROWS = [
    {"name": "model.pkl", "version": 2, "size": 86801, "tags": {"stage": "dev"}, "created_at": "2026-05-09T07:35:25.123456Z"},
    {"name": "other", "version": 1, "size": None, "tags": {}, "created_at": "2026-05-08T01:02:03Z"},
]
COLS = columns(("Name", "name"), ("Version", "version"), ("Created", "created_at"))


def test_a_list_prints_as_a_table_with_the_commands_columns_and_short_dates():
    text = format_result(Result(ROWS, COLS), fmt="table", query=None)
    lines = text.splitlines()
    assert lines[0].split() == ["Name", "Version", "Created"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["model.pkl", "2", "2026-05-09", "07:35:25"]
    assert "tags" not in text and "86801" not in text


def test_json_prints_the_whole_data_whatever_the_columns():
    assert json.loads(format_result(Result(ROWS, COLS), fmt="json", query=None)) == ROWS


def test_tsv_prints_rows_of_tab_separated_values_without_a_header():
    assert format_result(Result(ROWS, COLS), fmt="tsv", query=None).splitlines() == [
        "model.pkl\t2\t2026-05-09 07:35:25", "other\t1\t2026-05-08 01:02:03"]


def test_a_query_picks_from_the_json_and_its_result_decides_the_table_columns():
    query = "[?version > `1`].{n: name, stage: tags.stage}"
    assert json.loads(format_result(Result(ROWS, COLS), fmt="json", query=query)) == [{"n": "model.pkl", "stage": "dev"}]
    assert format_result(Result(ROWS, COLS), fmt="table", query=query).splitlines()[2].split() == ["model.pkl", "dev"]
    assert format_result(Result(ROWS, COLS), fmt="tsv", query="[].name") == "model.pkl\nother"


def test_a_detail_object_prints_as_properties_with_nested_values_flattened():
    data = {"name": "churnpred", "metrics": {"DTree Accuracy": 0.9143333}, "containers": [{"number": 1, "port": 32768}],
            "args": ["--n", "3"]}
    lines = format_result(Result(data), fmt="table", query=None).splitlines()
    assert lines == ["name                    churnpred", "metrics.DTree Accuracy  0.914333",
                     "containers[0]           number=1  port=32768", "args                    --n, 3"]


def test_an_invalid_query_is_a_user_error_naming_the_query():
    with pytest.raises(CliError, match="not valid JMESPath"):
        format_result(Result(ROWS), fmt="json", query="[?name ==")


def test_an_empty_list_prints_nothing_as_a_table_and_an_empty_array_as_json():
    assert format_result(Result([], COLS), fmt="table", query=None) == ""
    assert format_result(Result([], COLS), fmt="json", query=None) == "[]"
