"""build_inputs turns a request body into run()'s arguments, or names the field at fault."""
import json

import numpy as np
import pandas as pd
import pytest

from mlportal_runtime.schema import SchemaError, build_inputs, generate_schema, load_schema


def run(input_df):
    return None


@pytest.fixture(scope="module")
def churn_schema(sample_record):
    return load_schema(generate_schema(run, inputs={"input_df": pd.DataFrame([sample_record])}))


def error_of(schema, body) -> str:
    with pytest.raises(SchemaError) as caught:
        build_inputs(schema, body)
    return caught.value.message


def test_a_record_becomes_a_frame_like_the_sample(churn_schema, sample_record):
    frame = build_inputs(churn_schema, {"input_df": [sample_record]})["input_df"]
    expected = pd.DataFrame([sample_record])
    assert list(frame.columns) == list(expected.columns)
    assert list(frame.dtypes) == list(expected.dtypes)
    assert frame.equals(expected)


def test_a_single_record_object_is_a_one_row_frame(churn_schema, sample_record):
    frame = build_inputs(churn_schema, {"input_df": sample_record})["input_df"]
    assert len(frame) == 1 and frame["noadditionallines"][0] == "\\N"


def test_a_batch_keeps_the_recorded_column_order_whatever_the_key_order(churn_schema, sample_record):
    reordered = dict(reversed(list(sample_record.items())))
    frame = build_inputs(churn_schema, {"input_df": [reordered, dict(sample_record, age=40)]})["input_df"]
    assert list(frame.columns) == list(sample_record)
    assert frame["age"].tolist() == [12, 40] and frame["age"].dtype == np.int64


def test_integral_floats_fit_integer_columns_and_ints_fit_float_columns(churn_schema, sample_record):
    frame = build_inputs(churn_schema, {"input_df": [dict(sample_record, age=12.0, calldroprate=1)]})["input_df"]
    assert frame["age"].dtype == np.int64 and frame["calldroprate"].dtype == np.float64


def test_null_in_a_float_column_is_a_missing_value(churn_schema, sample_record):
    frame = build_inputs(churn_schema, {"input_df": [dict(sample_record, calldroprate=None)]})["input_df"]
    assert np.isnan(frame["calldroprate"][0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"age": "abc"}, 'input_df[0].age: expected an integer, got "abc"'),
        ({"age": 12.5}, "input_df[0].age: expected an integer, got 12.5"),
        ({"age": None}, "input_df[0].age: expected an integer, got null"),
        ({"age": True}, "input_df[0].age: expected an integer, got true"),
        ({"calldroprate": "0.06"}, 'input_df[0].calldroprate: expected a number, got "0.06"'),
        ({"calldroprate": float("nan")}, "input_df[0].calldroprate: expected a number, got NaN"),
        ({"calldroprate": float("inf")}, "input_df[0].calldroprate: expected a number, got Infinity"),
        ({"state": 3}, "input_df[0].state: expected a string, got 3"),
        ({"state": ["WA"]}, "input_df[0].state: expected a string, got a list"),
        ({"callingnum": 2**64}, "input_df[0].callingnum: expected an integer, got 18446744073709551616"),
        ({"surprise": 1}, 'input_df[0]: unknown column "surprise"'),
    ],
)
def test_it_names_the_field_and_what_was_expected(churn_schema, sample_record, change, message):
    assert error_of(churn_schema, {"input_df": [dict(sample_record, **change)]}).startswith(message)


def test_it_names_a_missing_column(churn_schema, sample_record):
    record = {k: v for k, v in sample_record.items() if k != "age"}
    assert error_of(churn_schema, {"input_df": [record]}) == 'input_df[0]: missing column "age"'


def test_it_names_the_bad_record_in_a_batch(churn_schema, sample_record):
    batch = [sample_record] * 5 + [dict(sample_record, age="old")] + [sample_record]
    assert error_of(churn_schema, {"input_df": batch}) == 'input_df[5].age: expected an integer, got "old"'


def test_a_single_record_error_has_no_index(churn_schema, sample_record):
    assert error_of(churn_schema, {"input_df": dict(sample_record, age="x")}) == 'input_df.age: expected an integer, got "x"'


@pytest.mark.parametrize(
    "body, message",
    [
        ([1], "the request body must be a JSON object"),
        ({}, 'input_df: missing; the body needs "input_df"'),
        ({"input_df": []}, "input_df: expected at least one record"),
        ({"input_df": "x"}, "input_df: expected a record (an object) or a list of records"),
        ({"input_df": [1]}, "input_df[0]: expected a record (an object), got 1"),
        ({"input_df": [{}], "extra": 1}, "extra: unknown input; this service takes input_df"),
    ],
)
def test_it_explains_a_body_of_the_wrong_shape(churn_schema, body, message):
    assert error_of(churn_schema, body).startswith(message)


@pytest.fixture(scope="module")
def numpy_schema():
    return load_schema(generate_schema(run, inputs={"input_df": np.zeros((2, 3), dtype=np.float64)}))


def test_nested_lists_become_an_array_of_the_recorded_dtype(numpy_schema):
    array = build_inputs(numpy_schema, {"input_df": [[1, 2, 3], [4, 5, 6.5]]})["input_df"]
    assert array.dtype == np.float64 and array.shape == (2, 3)


def test_one_row_is_a_batch_of_one(numpy_schema):
    assert build_inputs(numpy_schema, {"input_df": [1, 2, 3]})["input_df"].shape == (1, 3)


@pytest.mark.parametrize(
    "value, message",
    [
        ([[1, 2]], "input_df[0]: expected 3 values (shape [n, 3]), got 2"),
        ([[1, 2, 3], [1, 2]], "input_df[1]: expected 3 values"),
        ([[1, 2, "x"]], 'input_df[0][2]: expected a number, got "x"'),
        ([[1, 2, None]], "input_df[0][2]: expected a number, got null"),
        ("x", "input_df: expected a list"),
    ],
)
def test_it_names_the_array_element_at_fault(numpy_schema, value, message):
    assert error_of(numpy_schema, {"input_df": value}).startswith(message)


def test_integer_arrays_refuse_fractions_and_overflow():
    schema = load_schema(json.dumps({"inputs": {"x": {"kind": "numpy", "dtype": "int8", "shape": [None]}}}))
    assert build_inputs(schema, {"x": [1, 2.0, -3]})["x"].dtype == np.int8
    assert "from -128 to 127, got 300" in error_of(schema, {"x": [1, 300]})
    assert "got 1.5" in error_of(schema, {"x": [1.5]})


def test_json_inputs_pass_through_after_a_type_check():
    schema = load_schema(json.dumps({"inputs": {"data": {"kind": "json", "type": "object"}}}))
    assert build_inputs(schema, {"data": {"a": [1]}}) == {"data": {"a": [1]}}
    assert error_of(schema, {"data": [1]}) == "data: expected an object, got a list"
    assert "NaN and Infinity" in error_of(schema, {"data": {"a": [float("nan")]}})


def test_str_and_datetime_columns_accept_null_and_iso_dates():
    schema = load_schema(json.dumps({"inputs": {"df": {"kind": "pandas", "columns": [
        {"name": "s", "dtype": "str"}, {"name": "t", "dtype": "datetime64[ns]"}, {"name": "b", "dtype": "bool"}]}}}))
    frame = build_inputs(schema, {"df": [{"s": None, "t": "2015-01-31T12:00:00Z", "b": True}]})["df"]
    assert frame["t"].dtype == "datetime64[ns]" and str(frame["t"][0]) == "2015-01-31 12:00:00"
    assert pd.isna(frame["s"][0]) and frame["b"].dtype == bool
    assert "expected a date-time string" in error_of(schema, {"df": [{"s": "a", "t": "yesterday", "b": True}]})
    assert "expected true or false, got 1" in error_of(schema, {"df": [{"s": "a", "t": "2015-01-01", "b": 1}]})
