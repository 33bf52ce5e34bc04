"""load_schema checks an uploaded service_schema.json and says what to fix."""
import json

import pytest

from mlportal_runtime.schema import SchemaError, example_body, load_schema, openapi_document

GOOD = {
    "inputs": {
        "input_df": {
            "kind": "pandas",
            "columns": [{"name": "age", "dtype": "int64"}, {"name": "state", "dtype": "str"}],
            "example": [{"age": 12, "state": "WA"}],
        }
    }
}


def with_input(**entry) -> str:
    return json.dumps({"inputs": {"input_df": entry}})


def test_it_loads_text_bytes_dicts_and_paths(tmp_path):
    path = tmp_path / "service_schema.json"
    path.write_text(json.dumps(GOOD))
    for source in (json.dumps(GOOD), json.dumps(GOOD).encode(), GOOD, path):
        assert load_schema(source).input_names == ["input_df"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        ("[1, 2]", 'JSON object with an "inputs"'),
        ("{}", "has no inputs"),
        ('{"inputs": {}}', "has no inputs"),
        ('{"inputs": {"input_df": 3}}', 'inputs.input_df: expected an object with a "kind"'),
        (with_input(kind="spark"), 'inputs.input_df.kind: unknown kind "spark"; expected one of pandas, numpy, json'),
        (with_input(kind="pandas"), "inputs.input_df.columns: expected a non-empty list"),
        (with_input(kind="pandas", columns=[{"name": "a", "dtype": "complex128"}]), 'columns[0].dtype: unsupported dtype "complex128" for column "a"'),
        (with_input(kind="pandas", columns=[{"name": "a", "dtype": "int64"}, {"name": "a", "dtype": "str"}]), 'column "a" appears twice'),
        (with_input(kind="pandas", columns=[{"dtype": "int64"}]), "columns[0]: expected"),
        (with_input(kind="pandas", columns=[{"name": "a", "dtype": "int64"}], example=[{"a": "x"}]), 'example[0].a: expected an integer, got "x"'),
        (with_input(kind="numpy", dtype="object", shape=[None, 2]), "inputs.input_df.dtype: unsupported dtype"),
        (with_input(kind="numpy", dtype="float64", shape=[None, None]), "shape: expected a list of positive sizes"),
        (with_input(kind="json", type="string"), 'type: expected "object" or "array"'),
        (with_input(kind="pandas", columns=[{"name": "a", "dtype": "int64"}], swagger="x"), "swagger: expected an object"),
        ('{"inputs": {"not-an-identifier": {"kind": "json"}}}', "must be a Python identifier"),
        ('{"version": 7, "inputs": {}}', "version 7 is not supported"),
        ('{"inputs": {"a": {"kind": "json", "example": {"x": NaN}}}}', "not valid JSON"),
    ],
)
def test_it_explains_what_is_wrong(text, message):
    with pytest.raises(SchemaError) as caught:
        load_schema(text)
    assert message in caught.value.message


def test_it_reads_a_lab_era_azure_schema_from_its_swagger_without_unpickling():
    azure = {
        "input": {
            "input_df": {
                "internal": "gASVnotreallyapickle",
                "type": 3,
                "swagger": {
                    "type": "array",
                    "items": {"type": "object", "properties": {
                        "age": {"type": "integer", "format": "int64"},
                        "calldroprate": {"type": "number", "format": "double"},
                        "state": {"type": "string"},
                    }},
                    "example": [{"age": 12, "calldroprate": 0.06, "state": "WA"}],
                },
            }
        }
    }
    spec = load_schema(azure).inputs["input_df"]
    assert spec.kind == "pandas"
    assert [(c.name, c.dtype) for c in spec.columns] == [("age", "int64"), ("calldroprate", "float64"), ("state", "str")]


def test_example_body_uses_the_recorded_example():
    assert example_body(load_schema(GOOD)) == {"input_df": [{"age": 12, "state": "WA"}]}


def test_example_body_makes_placeholders_when_none_was_recorded():
    schema = load_schema(with_input(kind="pandas", columns=[{"name": "age", "dtype": "int64"}, {"name": "s", "dtype": "str"}]))
    assert example_body(schema) == {"input_df": [{"age": 0, "s": "string"}]}


def test_the_openapi_document_lists_every_field_with_the_example():
    document = openapi_document(load_schema(GOOD), "churnpred")
    assert document["openapi"].startswith("3.")
    body = document["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == {"input_df": [{"age": 12, "state": "WA"}]}
    request = document["components"]["schemas"]["ScoreRequest"]
    assert set(request["properties"]["input_df"]["items"]["properties"]) == {"age", "state"}
    assert "/api/v1/service/churnpred/score" in document["paths"]
    assert document["components"]["securitySchemes"]["serviceKey"]["scheme"] == "bearer"
    assert "401" in document["paths"]["/score"]["post"]["responses"]


def test_the_openapi_document_has_no_key_section_for_an_open_service():
    document = openapi_document(load_schema(GOOD), "open", auth=False)
    assert "securitySchemes" not in document["components"]
    assert "security" not in document["paths"]["/score"]["post"]
