"""generate_schema writes a plain-JSON service_schema.json from samples (never a pickle)."""
import json

import numpy as np
import pandas as pd
import pytest

from mlportal_runtime.schema import DataTypes, SampleDefinition, SchemaError, generate_schema, load_schema


def run(input_df):
    return input_df


def test_it_records_pandas_columns_dtypes_example_and_swagger(tmp_path, sample_record):
    path = tmp_path / "service_schema.json"
    data = generate_schema(run, inputs={"input_df": SampleDefinition(DataTypes.PANDAS, pd.DataFrame([sample_record]))}, filepath=path)
    assert json.loads(path.read_text()) == data
    entry = data["inputs"]["input_df"]
    assert entry["kind"] == "pandas"
    dtypes = {c["name"]: c["dtype"] for c in entry["columns"]}
    assert len(dtypes) == 29
    assert dtypes["age"] == "int64" and dtypes["calldroprate"] == "float64" and dtypes["state"] == "str"
    assert entry["example"] == [sample_record]
    swagger = entry["swagger"]
    assert swagger["type"] == "array" and swagger["example"] == [sample_record]
    properties = swagger["items"]["properties"]
    assert properties["age"]["type"] == "integer" and properties["calldroprate"]["type"] == "number"
    assert properties["noadditionallines"]["type"] == "string"
    assert set(swagger["items"]["required"]) == set(sample_record)


def test_the_example_keeps_only_the_first_rows():
    frame = pd.DataFrame({"x": range(100), "y": [0.5] * 100})
    entry = generate_schema(run, inputs={"input_df": frame})["inputs"]["input_df"]
    assert entry["example"] == [{"x": 0, "y": 0.5}, {"x": 1, "y": 0.5}, {"x": 2, "y": 0.5}]


def test_missing_values_in_the_sample_become_null_in_the_example():
    frame = pd.DataFrame({"x": [float("nan")], "when": pd.to_datetime(["2015-01-31 12:00"])})
    entry = generate_schema(run, inputs={"input_df": frame})["inputs"]["input_df"]
    assert entry["example"] == [{"x": None, "when": "2015-01-31T12:00:00"}]
    assert entry["columns"][1]["dtype"].startswith("datetime64[")


def test_it_records_numpy_shape_and_dtype():
    data = generate_schema(run, inputs={"input_df": np.arange(12, dtype=np.float32).reshape(3, 4)})
    entry = data["inputs"]["input_df"]
    assert entry["kind"] == "numpy" and entry["dtype"] == "float32" and entry["shape"] == [None, 4]
    assert entry["example"][0] == [0.0, 1.0, 2.0, 3.0]
    assert entry["swagger"]["items"]["maxItems"] == 4


def test_it_records_a_plain_json_object():
    data = generate_schema(run, inputs={"input_df": SampleDefinition(DataTypes.STANDARD, {"text": "hi", "n": [1, 2]})})
    entry = data["inputs"]["input_df"]
    assert entry["kind"] == "json" and entry["type"] == "object"
    assert entry["swagger"]["properties"]["n"] == {"type": "array", "items": {"type": "integer"}}
    assert entry["example"] == {"text": "hi", "n": [1, 2]}


def test_the_file_never_holds_a_pickle(tmp_path, sample_record):
    path = tmp_path / "service_schema.json"
    generate_schema(run, inputs={"input_df": pd.DataFrame([sample_record])}, filepath=path)
    data = json.loads(path.read_text())
    # The Azure file carried a base64 pickle under "internal"; ours holds only these plain keys.
    assert set(data["inputs"]["input_df"]) == {"kind", "columns", "example", "swagger"}
    assert "gASV" not in path.read_text()


def test_what_it_writes_loads_back(sample_record):
    data = generate_schema(run, inputs={"input_df": pd.DataFrame([sample_record])})
    schema = load_schema(json.dumps(data))
    assert schema.input_names == ["input_df"] and schema.inputs["input_df"].kind == "pandas"


def test_it_rejects_an_input_run_does_not_take():
    with pytest.raises(SchemaError, match='no parameter "frame"'):
        generate_schema(run, inputs={"frame": {"a": 1}})


def test_it_rejects_a_run_parameter_without_a_sample():
    def run2(input_df, other):
        return None

    with pytest.raises(SchemaError, match='parameter "other"'):
        generate_schema(run2, inputs={"input_df": {"a": 1}})


def test_it_rejects_a_sample_of_the_wrong_declared_type():
    with pytest.raises(SchemaError, match="declared PANDAS"):
        generate_schema(run, inputs={"input_df": SampleDefinition(DataTypes.PANDAS, np.zeros(3))})


def test_it_rejects_spark_samples():
    with pytest.raises(SchemaError, match="Spark"):
        generate_schema(run, inputs={"input_df": SampleDefinition(DataTypes.SPARK, {"a": 1})})


@pytest.mark.parametrize(
    "frame, words",
    [
        (pd.DataFrame({"c": pd.Categorical(["a"])}), "astype(str)"),
        (pd.DataFrame({"c": pd.array([1], dtype="Int64")}), "nullable"),
        (pd.DataFrame({"c": [1 + 2j]}), "cannot carry"),
        (pd.DataFrame({0: [1]}), "rename the columns"),
        (pd.DataFrame({"c": []}), "no rows"),
    ],
)
def test_it_explains_a_dataframe_it_cannot_describe(frame, words):
    with pytest.raises(SchemaError, match=words.replace("(", r"\(").replace(")", r"\)")):
        generate_schema(run, inputs={"input_df": frame})


def test_it_rejects_a_sample_that_is_neither_frame_array_nor_json():
    with pytest.raises(SchemaError, match="DataFrame, a NumPy array"):
        generate_schema(run, inputs={"input_df": "text"})
