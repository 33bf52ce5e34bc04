"""Open Inference Protocol (KServe v2) requests and responses over a service schema.

A pandas input takes one tensor per column, named after the column (or ``<input>.<column>``
when the service has several inputs), with shape ``[n]`` or ``[n, 1]``. A numpy input takes one
tensor named after the input, its data flat (row-major) or nested. A json input takes one BYTES
tensor holding the JSON text. What ``run()`` returns comes back as tensors: one per key of a
returned object, otherwise a single tensor named ``predictions``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mlportal_runtime.schema import JsonInput, NumpyInput, PandasInput, Schema, SchemaError, _describe

_NUMERIC = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
DATATYPES = _NUMERIC | {"BOOL", "BYTES"}
OUTPUT_NAME = "predictions"


def _tensor_metadata(name: str, datatype: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape}


def model_metadata(schema: Schema | None, name: str, version: str | None = None) -> dict:
    """Return the ``GET /v2/models/<name>`` document: the input tensors the schema implies."""
    inputs = []
    if schema is not None:
        several = len(schema.inputs) > 1
        for input_name, spec in schema.inputs.items():
            if isinstance(spec, PandasInput):
                for column, dtype in zip(spec.columns, spec._dtypes):
                    tensor = f"{input_name}.{column.name}" if several else column.name
                    inputs.append(_tensor_metadata(tensor, dtype.oip, [-1]))
            elif isinstance(spec, NumpyInput):
                inputs.append(_tensor_metadata(input_name, spec._dtype.oip, [-1 if s is None else s for s in spec.shape]))
            else:
                inputs.append(_tensor_metadata(input_name, "BYTES", [1]))
    document = {
        "name": name,
        "versions": [version] if version else [],
        "platform": "mlportal-python",
        "inputs": inputs,
        "outputs": [_tensor_metadata(OUTPUT_NAME, "BYTES", [-1])],
    }
    return document


def _flatten(data: Any, where: str) -> list:
    """Return tensor data flat; the protocol's JSON form allows nested lists too (row-major)."""
    if not isinstance(data, list):
        raise SchemaError(f"{where}.data: expected a list, got {_describe(data)}")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []

    def walk(value: list) -> None:
        for item in value:
            if isinstance(item, list):
                walk(item)
            else:
                flat.append(item)

    walk(data)
    return flat


def _shape(tensor: dict, where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or any(type(s) is not int or s < 0 for s in shape):
        raise SchemaError(f"{where}.shape: expected a list of non-negative integers, e.g. [1]")
    return shape


def parse_infer_request(schema: Schema | None, body: Any) -> tuple[dict[str, Any], Any]:
    """Return ``(run() inputs, request id)`` for an OIP infer request body; SchemaError names the tensor."""
    if schema is None:
        raise SchemaError("this service has no service_schema.json, so it cannot map tensors to run() inputs; use /score")
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise SchemaError('the body must be {"inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}]}')
    tensors: dict[str, tuple[dict, str]] = {}
    for index, tensor in enumerate(body["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise SchemaError(f'{where}: expected a tensor object with a "name"')
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise SchemaError(f"{where}.datatype: unknown datatype {_describe(datatype)}; use one of {', '.join(sorted(DATATYPES))}")
        if tensor["name"] in tensors:
            raise SchemaError(f'{where}: tensor "{tensor["name"]}" appears twice')
        tensors[tensor["name"]] = (tensor, f"inputs[{tensor['name']}]")

    several = len(schema.inputs) > 1
    used: set[str] = set()
    inputs: dict[str, Any] = {}
    for input_name, spec in schema.inputs.items():
        if isinstance(spec, PandasInput):
            columns: dict[str, list] = {}
            places: dict[str, str] = {}
            for column, dtype in zip(spec.columns, spec._dtypes):
                key = f"{input_name}.{column.name}" if several else column.name
                if key not in tensors:
                    raise SchemaError(f'inputs: missing tensor "{key}" ({dtype.oip}, shape [n]) for column "{column.name}"')
                tensor, where = tensors[key]
                used.add(key)
                _check_datatype(tensor["datatype"], dtype.oip, where)
                shape = _shape(tensor, where)
                if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                    raise SchemaError(f"{where}.shape: a column tensor has shape [n] or [n, 1], got {shape}")
                data = _flatten(tensor.get("data"), where)
                if len(data) != shape[0]:
                    raise SchemaError(f"{where}.data: shape {shape} needs {shape[0]} values, got {len(data)}")
                columns[column.name] = data
                places[column.name] = where
            inputs[input_name] = spec.build_from_columns(
                columns, lambda column, row: places.get(column, "inputs") + (f".data[{row}]" if row >= 0 else "")
            )
        elif isinstance(spec, NumpyInput):
            if input_name not in tensors:
                raise SchemaError(f'inputs: missing tensor "{input_name}" ({spec._dtype.oip})')
            tensor, where = tensors[input_name]
            used.add(input_name)
            _check_datatype(tensor["datatype"], spec._dtype.oip, where)
            shape = _shape(tensor, where)
            data = _flatten(tensor.get("data"), where)
            if math.prod(shape) != len(data):
                raise SchemaError(f"{where}.data: shape {shape} needs {math.prod(shape)} values, got {len(data)}")
            inputs[input_name] = spec.build(_reshape(data, shape), where + ".data")
        else:
            assert isinstance(spec, JsonInput)
            if input_name not in tensors:
                raise SchemaError(f'inputs: missing tensor "{input_name}" (BYTES holding the JSON text)')
            tensor, where = tensors[input_name]
            used.add(input_name)
            data = _flatten(tensor.get("data"), where)
            if tensor["datatype"] != "BYTES" or len(data) != 1 or not isinstance(data[0], str):
                raise SchemaError(f"{where}: expected a BYTES tensor with one JSON string")
            try:
                value = json.loads(data[0])
            except ValueError as exc:
                raise SchemaError(f"{where}.data[0]: not valid JSON ({exc})") from None
            inputs[input_name] = spec.build(value, where + ".data[0]")
    unknown = [name for name in tensors if name not in used]
    if unknown:
        raise SchemaError(f'inputs: unknown tensor "{unknown[0]}"; see GET /v2/models/<name> for the inputs')
    return inputs, body.get("id")


def as_score_body(schema: Schema, body: dict) -> dict[str, Any]:
    """Return the ``/score`` body that carries the same inputs as an infer request ``body``
    (already accepted by :func:`parse_infer_request`): a pandas input as a list of records, a
    numpy input as nested lists, a json input as its value. Data capture stores this, so rows
    scored over either protocol have the same columns."""
    tensors = {tensor["name"]: tensor for tensor in body["inputs"]}
    several = len(schema.inputs) > 1
    out: dict[str, Any] = {}
    for input_name, spec in schema.inputs.items():
        if isinstance(spec, PandasInput):
            columns = {}
            for column in spec.columns:
                tensor = tensors[f"{input_name}.{column.name}" if several else column.name]
                columns[column.name] = _flatten(tensor.get("data"), column.name)
            n = len(next(iter(columns.values()))) if columns else 0
            out[input_name] = [{name: values[i] for name, values in columns.items()} for i in range(n)]
        elif isinstance(spec, NumpyInput):
            tensor = tensors[input_name]
            out[input_name] = _reshape(_flatten(tensor.get("data"), input_name), _shape(tensor, input_name))
        else:
            out[input_name] = json.loads(_flatten(tensors[input_name].get("data"), input_name)[0])
    return out


def _check_datatype(given: str, wanted: str, where: str) -> None:
    if given == wanted or (given in _NUMERIC and wanted in _NUMERIC):
        return
    raise SchemaError(f"{where}.datatype: expected {wanted}, got {given}")


def _reshape(data: list, shape: list[int]) -> Any:
    if len(shape) <= 1:
        return data
    step = math.prod(shape[1:])
    return [_reshape(data[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _tensor(name: str, value: Any) -> dict:
    """Return an output tensor for a JSON value: a scalar has shape [1], uniform nested lists keep theirs."""
    if not isinstance(value, list):
        value = [value]
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list = []

    def walk(item: Any, depth: int) -> bool:
        if depth == len(shape):
            if isinstance(item, (list, dict)):
                return False
            flat.append(item)
            return True
        if not isinstance(item, list) or len(item) != shape[depth]:
            return False
        return all(walk(sub, depth + 1) for sub in item)

    if not walk(value, 0):  # ragged or holding objects: one JSON text per top-level item
        return {"name": name, "datatype": "BYTES", "shape": [len(value)], "data": [json.dumps(item) for item in value]}
    types = set(map(type, flat))
    if types and types <= {bool}:
        datatype = "BOOL"
    elif types and types <= {int}:
        datatype = "INT64"
    elif types and types <= {int, float}:
        datatype = "FP64"
    else:
        datatype = "BYTES"
        flat = [item if isinstance(item, str) else json.dumps(item) for item in flat]
    return {"name": name, "datatype": datatype, "shape": shape, "data": flat}


def infer_response(result: Any, model_name: str, request_id: Any = None, version: str | None = None) -> dict:
    """Return the OIP response for ``result``, the JSON value of what run() returned."""
    if isinstance(result, dict) and result:
        outputs = [_tensor(str(key), value) for key, value in result.items()]
    else:
        outputs = [_tensor(OUTPUT_NAME, result)]
    response: dict = {"model_name": model_name, "outputs": outputs}
    if version:
        response["model_version"] = version
    if request_id is not None:
        response["id"] = request_id
    return response
