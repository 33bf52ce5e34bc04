"""Open Inference Protocol v2 mapping: tensors in, run() inputs out; run() results back as tensors."""
import json

import numpy as np
import pytest

from mlportal_runtime.oip import infer_response, model_metadata, parse_infer_request
from mlportal_runtime.schema import SchemaError, load_schema

NUMPY = load_schema(json.dumps({"inputs": {"x": {"kind": "numpy", "dtype": "float32", "shape": [None, 2]}}}))
JSON = load_schema(json.dumps({"inputs": {"doc": {"kind": "json", "type": "object"}}}))


def test_a_numpy_input_is_one_tensor_reshaped_from_flat_data():
    inputs, request_id = parse_infer_request(NUMPY, {"id": "a", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert request_id == "a"
    assert inputs["x"].dtype == np.float32 and inputs["x"].tolist() == [[1, 2], [3, 4]]


def test_nested_tensor_data_is_accepted_too():
    inputs, _ = parse_infer_request(NUMPY, {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[1, 2]]}]})
    assert inputs["x"].shape == (1, 2)


def test_a_json_input_is_a_bytes_tensor_holding_json_text():
    inputs, _ = parse_infer_request(JSON, {"inputs": [{"name": "doc", "shape": [1], "datatype": "BYTES", "data": ['{"a": 1}']}]})
    assert inputs == {"doc": {"a": 1}}


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, 'the body must be {"inputs"'),
        ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}, "shape [2, 2] needs 4 values, got 3"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "TEXT", "data": [1, 2]}]}, "unknown datatype"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, "expected FP32, got BYTES"),
        ({"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]}, 'missing tensor "x"'),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                     {"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]}, 'unknown tensor "z"'),
    ],
)
def test_it_explains_a_bad_infer_request(body, message):
    with pytest.raises(SchemaError) as caught:
        parse_infer_request(NUMPY, body)
    assert message in caught.value.message


def test_metadata_describes_the_input_tensors():
    metadata = model_metadata(NUMPY, "m", "3")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}] and metadata["versions"] == ["3"]


@pytest.mark.parametrize(
    "result, tensor",
    [
        ("0", {"name": "predictions", "datatype": "BYTES", "shape": [1], "data": ["0"]}),
        (["0", "1"], {"name": "predictions", "datatype": "BYTES", "shape": [2], "data": ["0", "1"]}),
        ([[1, 2], [3, 4]], {"name": "predictions", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}),
        ([0.5, 1], {"name": "predictions", "datatype": "FP64", "shape": [2], "data": [0.5, 1]}),
        ([True], {"name": "predictions", "datatype": "BOOL", "shape": [1], "data": [True]}),
        ([[1], [2, 3]], {"name": "predictions", "datatype": "BYTES", "shape": [2], "data": ["[1]", "[2, 3]"]}),
    ],
)
def test_results_become_output_tensors(result, tensor):
    assert infer_response(result, "m")["outputs"] == [tensor]


def test_a_returned_object_gives_one_tensor_per_key():
    response = infer_response({"label": ["1"], "score": [0.9]}, "m", "id-1", "2")
    assert [t["name"] for t in response["outputs"]] == ["label", "score"]
    assert response["id"] == "id-1" and response["model_version"] == "2"
