"""Service schemas: the ``service_schema.json`` that tells a scoring service what ``run()`` takes.

``generate_schema`` writes the file from sample inputs (what the lab's ``churn_schema_gen.py``
did); ``load_schema`` reads and checks one (the portal validates uploads with it);
``build_inputs`` turns a request body into the arguments of ``run()`` (the scoring server's hot
path); ``openapi_document`` and ``example_body`` describe the service to people.

The file is plain JSON and never holds a pickle. Per input it records:

* ``kind`` — ``"pandas"`` (a DataFrame), ``"numpy"`` (an ndarray) or ``"json"`` (a dict/list);
* pandas: ``columns`` (``name`` and ``dtype`` each); numpy: ``shape`` (first dimension ``null``:
  any batch size) and ``dtype``; json: ``type`` (``"object"`` or ``"array"``);
* ``example`` — the first row(s) of the sample as JSON;
* ``swagger`` — a JSON Schema (OpenAPI 3) fragment for that input of the request body, with an
  ``example``, as the Azure ML schema files had.

pandas and numpy are imported only when a schema needs them, so the portal can load and check
schemas (and this module can be imported) without them.
"""

from __future__ import annotations

import datetime as _dt
import enum
import inspect
import json
import math
import os
from operator import itemgetter
from typing import Any, Callable, Mapping

SCHEMA_FORMAT = "mlportal.service_schema"
SCHEMA_VERSION = 1
KINDS = ("pandas", "numpy", "json")
EXAMPLE_ROWS = 3  # how many sample rows go into ``example``

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOATS = ("float16", "float32", "float64")
_DATETIMES = ("datetime64[s]", "datetime64[ms]", "datetime64[us]", "datetime64[ns]")
NUMPY_DTYPES = (*_INT_RANGES, *_FLOATS, "bool", "str")
PANDAS_DTYPES = (*NUMPY_DTYPES, "object", *_DATETIMES)


class SchemaError(ValueError):
    """A schema file or a request body that does not fit; the message says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataTypes(enum.IntEnum):
    """The kinds of sample the lab's ``SampleDefinition`` names (Azure ML's values)."""

    STANDARD = 0
    SPARK = 1
    PANDAS = 2
    NUMPY = 3


class SampleDefinition:
    """A sample input tagged with its kind, as in ``SampleDefinition(DataTypes.PANDAS, df)``."""

    def __init__(self, df_type: DataTypes | int | str, sample_data: Any) -> None:
        self.type = df_type
        self.sample = sample_data

    def __repr__(self) -> str:
        return f"SampleDefinition({self.type!r}, <{type(self.sample).__name__}>)"


# --------------------------------------------------------------------------------------------
# Values: pure-Python checks shared by schema validation (no pandas) and request diagnostics.
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """Return a short JSON-ish rendering of a value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    try:
        text = json.dumps(value, allow_nan=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_iso_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        _dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


class _Dtype:
    """What one recorded dtype accepts, how to say so, and how to describe it in OpenAPI/OIP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nullable = False
        if name in _INT_RANGES:
            self.family = "int"
            self.low, self.high = _INT_RANGES[name]
            self.expected = "an integer" if self.low < 0 else "a non-negative integer"
            if name not in ("int64", "uint64"):
                self.expected += f" from {self.low} to {self.high}"
            fmt = "int64" if name in ("int64", "uint32", "uint64") else "int32"
            self.swagger = {"type": "integer", "format": fmt}
            if name not in ("int64", "int32"):
                self.swagger.update(minimum=self.low, maximum=self.high)
            self.oip = name.upper()
        elif name in _FLOATS:
            self.family = "float"
            self.nullable = True  # null becomes NaN: a missing value, which pipelines can impute
            self.expected = "a number"
            self.swagger = {"type": "number", "format": "float" if name != "float64" else "double", "nullable": True}
            self.oip = {"float16": "FP16", "float32": "FP32", "float64": "FP64"}[name]
        elif name == "bool":
            self.family = "bool"
            self.expected = "true or false"
            self.swagger = {"type": "boolean"}
            self.oip = "BOOL"
        elif name == "str":
            self.family = "str"
            self.nullable = True
            self.expected = "a string"
            self.swagger = {"type": "string", "nullable": True}
            self.oip = "BYTES"
        elif name == "object":
            self.family = "object"
            self.nullable = True
            self.expected = "any JSON value"
            self.swagger = {"nullable": True}
            self.oip = "BYTES"
        elif name in _DATETIMES:
            self.family = "datetime"
            self.nullable = True
            self.expected = "a date-time string like 2015-01-31T12:00:00"
            self.swagger = {"type": "string", "format": "date-time", "nullable": True}
            self.oip = "BYTES"
        else:  # pragma: no cover - callers check the name first
            raise KeyError(name)

    def accepts(self, value: Any) -> bool:
        """Return whether a JSON value fits this dtype (None only where the dtype is nullable)."""
        if value is None:
            return self.nullable
        family = self.family
        kind = type(value)
        if family == "float":
            if kind is int:
                return True
            return kind is float and math.isfinite(value) and (
                self.name == "float64" or abs(value) <= (3.4e38 if self.name == "float32" else 65504.0)
            )
        if family == "int":
            if kind is float:
                if not (math.isfinite(value) and value.is_integer()):
                    return False
                value = int(value)
            elif kind is not int:
                return False
            return self.low <= value <= self.high
        if family == "bool":
            return kind is bool
        if family == "str":
            return kind is str
        if family == "datetime":
            return _is_iso_datetime(value)
        if kind is float:
            return math.isfinite(value)
        return True

    def placeholder(self) -> Any:
        return {"int": 0, "float": 0.0, "bool": False, "str": "string", "object": None,
                "datetime": "2015-01-01T00:00:00"}[self.family]


_DTYPES: dict[str, _Dtype] = {}


def _dtype(name: str) -> _Dtype:
    spec = _DTYPES.get(name)
    if spec is None:
        spec = _DTYPES[name] = _Dtype(name)
    return spec


class _Bad(Exception):
    """A column that failed its fast conversion; the slow path then finds the culprit."""


# --------------------------------------------------------------------------------------------
# Input specs
# --------------------------------------------------------------------------------------------


class InputSpec:
    """One input of ``run()``: its kind, shape of data, example and swagger fragment."""

    kind = ""

    def __init__(self, name: str, example: Any) -> None:
        self.name = name
        self.example = example

    @property
    def swagger(self) -> dict:
        fragment = self._swagger_schema()
        fragment["example"] = self.example_value()
        return fragment

    def example_value(self) -> Any:
        return self.example if self.example is not None else self._placeholder_example()

    def to_dict(self) -> dict:
        raise NotImplementedError

    def build(self, value: Any) -> Any:
        raise NotImplementedError

    def check_json(self, value: Any, where: str) -> None:
        """Raise SchemaError when a JSON value (e.g. the recorded example) does not fit. Pure Python."""
        raise NotImplementedError

    def _swagger_schema(self) -> dict:
        raise NotImplementedError

    def _placeholder_example(self) -> Any:
        raise NotImplementedError


class Column:
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"Column({self.name!r}, {self.dtype!r})"


class PandasInput(InputSpec):
    """A DataFrame input: a request sends one record (object) or a list of records."""

    kind = "pandas"

    def __init__(self, name: str, columns: list[Column], example: Any) -> None:
        super().__init__(name, example)
        self.columns = tuple(columns)
        self.names = tuple(c.name for c in columns)
        self._dtypes = tuple(_dtype(c.dtype) for c in columns)
        self._name_set = frozenset(self.names)
        self._getter = itemgetter(*self.names)
        # A tuple of the values in column order, for one column too (itemgetter of one name is not).
        self._row_getter = self._getter if len(self.names) > 1 else (lambda record, name=self.names[0]: (record[name],))
        self._blocks: tuple | None = None  # _prepare's plan for building a request's frame block by block
        self._prepared = False

    def to_dict(self) -> dict:
        return {
            "kind": "pandas",
            "columns": [{"name": c.name, "dtype": c.dtype} for c in self.columns],
            "example": self.example_value(),
            "swagger": self.swagger,
        }

    def _swagger_schema(self) -> dict:
        return {
            "type": "array",
            "description": "A list of records (a single record object is accepted too).",
            "items": {
                "type": "object",
                "properties": {c.name: dict(d.swagger) for c, d in zip(self.columns, self._dtypes)},
                "required": list(self.names),
                "additionalProperties": False,
            },
            "minItems": 1,
        }

    def _placeholder_example(self) -> Any:
        return [{c.name: d.placeholder() for c, d in zip(self.columns, self._dtypes)}]

    # -- validation without pandas ----------------------------------------------------------

    def check_json(self, value: Any, where: str) -> None:
        records, single = self._records(value, where)
        self._check_records(records, single, where)
        for column, dtype in zip(self.columns, self._dtypes):
            for index, record in enumerate(records):
                item = record[column.name]
                if not dtype.accepts(item):
                    raise SchemaError(f"{self._at(where, single, index)}.{column.name}: expected {dtype.expected}, got {_describe(item)}")

    def _records(self, value: Any, where: str) -> tuple[list, bool]:
        if isinstance(value, dict):
            return [value], True
        if isinstance(value, list):
            if not value:
                raise SchemaError(f"{where}: expected at least one record, got an empty list")
            return value, False
        raise SchemaError(f"{where}: expected a record (an object) or a list of records, got {_describe(value)}")

    @staticmethod
    def _at(where: str, single: bool, index: int) -> str:
        return where if single else f"{where}[{index}]"

    def _check_records(self, records: list, single: bool, where: str) -> None:
        """Raise SchemaError naming the first record that is not an object, lacks or adds a column."""
        for index, record in enumerate(records):
            at = self._at(where, single, index)
            if not isinstance(record, dict):
                raise SchemaError(f"{at}: expected a record (an object), got {_describe(record)}")
            for name in self.names:
                if name not in record:
                    raise SchemaError(f'{at}: missing column "{name}"')
            if len(record) != len(self.names):
                extra = sorted(str(k) for k in record if k not in self._name_set)
                raise SchemaError(f'{at}: unknown column "{extra[0]}"; the schema has {len(self.names)} columns: ' + ", ".join(self.names))

    # -- the hot path ----------------------------------------------------------------------

    def _prepare(self) -> None:
        import numpy as np
        import pandas as pd

        self._np = np
        self._pd = pd
        # pandas 3 gives string columns its "str" dtype, pandas 2 object: build what a DataFrame
        # made from the same sample would have held.
        self._str_dtype = pd.Series(["a"]).dtype
        # ExtensionArray._from_sequence is the documented constructor of extension arrays;
        # pd.array() around it costs five times as much in dispatch.
        self._str_array = None if self._str_dtype == object else self._str_dtype.construct_array_type()._from_sequence
        self._np_dtypes = tuple(np.dtype(d.name) if d.family in ("int", "float", "bool", "datetime") else None for d in self._dtypes)
        self._pd_columns = pd.Index(self.names, dtype=object)
        self._fast_frame = False
        self._prepared = True
        # DataFrame._from_arrays skips the per-request dtype inference of the public constructor
        # (about 5x faster for a single record). It is private, so use it only when it builds
        # exactly what the public constructor builds for the example.
        if hasattr(pd.DataFrame, "_from_arrays"):
            try:
                records, _ = self._records(self.example_value(), self.name)
                arrays = self._arrays_from_records(records, False)
                fast = pd.DataFrame._from_arrays(arrays, columns=self._pd_columns, index=pd.RangeIndex(len(records)), verify_integrity=False)
                slow = pd.DataFrame(dict(zip(self.names, arrays)), copy=False)
                self._fast_frame = list(fast.dtypes) == list(slow.dtypes) and fast.equals(slow)
            except Exception:  # noqa: BLE001 - any failure just means: use the public constructor
                self._fast_frame = False
        self._blocks = self._block_plan() if self._fast_frame else None

    def _block_plan(self) -> tuple | None:
        """Return how to build a frame's blocks straight from the records, or None to build it column by column.

        The DataFrame the column path builds keeps the numeric columns of one dtype together in one
        2-D block and each string column in a block of its own; that layout is fixed by the schema.
        Read once from the example's frame, it lets a request make one array per block instead of
        one per column, and hand them to ``pandas.api.internals.create_dataframe_from_blocks``
        (pandas 3), skipping the column path's consolidation. Only int, float, bool and str
        columns; only when the result is the same frame, block for block, as the column path's.
        """
        pd, np = self._pd, self._np
        make = getattr(getattr(getattr(pd, "api", None), "internals", None), "create_dataframe_from_blocks", None)
        if make is None:
            return None
        try:
            records, _ = self._records(self.example_value(), self.name)
            reference = self._frame(self._arrays_from_records(records, False), len(records))
            plan = []
            for block in reference._mgr.blocks:
                locs = tuple(int(i) for i in block.mgr_locs.as_array)
                families = {self._dtypes[i].family for i in locs}
                if len(families) != 1:
                    return None
                family = families.pop()
                if family in ("int", "float", "bool") and isinstance(block.dtype, np.dtype) and block.dtype == self._np_dtypes[locs[0]]:
                    spec = self._dtypes[locs[0]]
                    narrow = family == "int" and spec.name != "int64"
                    plan.append((family, block.dtype, locs, np.array(locs, dtype=np.intp), narrow, spec))
                elif family == "str" and self._str_array is not None and len(locs) == 1 and block.dtype == self._str_dtype:
                    plan.append(("str", type(block.values), locs, np.array(locs, dtype=np.intp), False, None))
                else:
                    return None
            import pyarrow

            plan_t = (make, pyarrow, pyarrow.large_string(), tuple(plan))
            built = self._frame_from_blocks(plan_t, list(map(self._row_getter, records)))
        except Exception:  # noqa: BLE001 - any failure just means: build column by column
            return None
        if built is None or not self._same_frame(built, reference):
            return None
        return plan_t

    @staticmethod
    def _same_frame(a: Any, b: Any) -> bool:
        """Whether two frames hold the same columns, dtypes, values and block layout."""
        layout = [(str(blk.dtype), tuple(blk.mgr_locs.as_array), blk.values.shape, type(blk.values)) for blk in a._mgr.blocks]
        return (list(a.columns) == list(b.columns) and a.columns.dtype == b.columns.dtype and list(a.dtypes) == list(b.dtypes)
                and a.index.equals(b.index) and a.equals(b)
                and layout == [(str(blk.dtype), tuple(blk.mgr_locs.as_array), blk.values.shape, type(blk.values)) for blk in b._mgr.blocks])

    def _frame_from_blocks(self, plan: tuple, rows: list) -> Any:
        """Return the frame of ``rows`` (tuples in column order) built block by block; None when a value
        is not one the fast path takes as is (the column path then converts it or names it)."""
        make, pa, large_string, blocks_plan = plan
        np = self._np
        n = len(rows)
        blocks = []
        try:
            for family, dtype, locs, placement, narrow, spec in blocks_plan:
                # Column-major, so one column's values sit together: row j of the block is column locs[j].
                values = [row[i] for i in locs for row in rows]
                types = set(map(type, values))
                if family == "str":
                    if types != {str}:
                        return None  # null (and anything else) takes the column path
                    blocks.append((dtype(pa.array(values, type=large_string), dtype=self._str_dtype), placement))
                    continue
                if family == "int":
                    if types != {int} or (narrow and (min(values) < spec.low or max(values) > spec.high)):
                        return None
                    array = np.array(values, dtype=dtype)  # OverflowError beyond 64 bits
                elif family == "float":
                    if not types <= {float, int}:
                        return None
                    array = np.array(values, dtype=dtype)
                    if float in types and not np.isfinite(array).all():
                        return None
                else:
                    if types != {bool}:
                        return None
                    array = np.array(values, dtype=dtype)
                blocks.append((array.reshape(len(locs), n), placement))
        except (ValueError, TypeError, OverflowError):  # pyarrow's ArrowInvalid is a ValueError
            return None
        return make(blocks, index=self._pd.RangeIndex(n), columns=self._pd_columns)

    def build(self, value: Any, where: str | None = None) -> Any:
        """Return a DataFrame with the recorded columns and dtypes; SchemaError names the field."""
        if not self._prepared:
            self._prepare()
        where = where or self.name
        records, single = self._records(value, where)
        if self._blocks is not None:
            try:
                rows = list(map(self._row_getter, records))
                if not any(map(len(self.names).__ne__, map(len, records))):
                    frame = self._frame_from_blocks(self._blocks, rows)
                    if frame is not None:
                        return frame
            except (KeyError, TypeError, IndexError):
                pass  # the column path names the record and column at fault
        return self._frame(self._arrays_from_records(records, single, where), len(records))

    def build_from_columns(self, columns: Mapping[str, list], locate: Callable[[str, int], str]) -> Any:
        """Return a DataFrame from column lists (the OIP path); ``locate(column, row)`` names a field."""
        if not self._prepared:
            self._prepare()
        length = None
        for name in self.names:
            if name not in columns:
                raise SchemaError(f'{locate(name, -1)}: missing column "{name}"')
            if length is None:
                length = len(columns[name])
            elif len(columns[name]) != length:
                raise SchemaError(f"{locate(name, -1)}: has {len(columns[name])} values but {self.names[0]} has {length}; every column needs one value per row")
        unknown = [k for k in columns if k not in self._name_set]
        if unknown:
            raise SchemaError(f'{locate(unknown[0], -1)}: unknown column "{unknown[0]}"')
        if not length:
            raise SchemaError(f"{locate(self.names[0], -1)}: expected at least one value")
        arrays = [self._convert(i, columns[name], lambda row, n=name: locate(n, row)) for i, name in enumerate(self.names)]
        return self._frame(arrays, length)

    def _arrays_from_records(self, records: list, single: bool, where: str = "") -> list:
        count = len(self.names)
        try:
            rows = list(map(self._getter, records))
            if any(map(count.__ne__, map(len, records))):
                raise _Bad
        except (_Bad, KeyError, TypeError, IndexError):
            self._check_records(records, single, where)
            raise
        if count == 1:
            values_by_column = [rows]
        else:
            values_by_column = list(zip(*rows))
        return [
            self._convert(i, values, lambda row, n=self.names[i]: f"{self._at(where, single, row)}.{n}")
            for i, values in enumerate(values_by_column)
        ]

    def _convert(self, i: int, values: Any, locate: Callable[[int], str]) -> Any:
        dtype = self._dtypes[i]
        try:
            return self._fast_convert(dtype, self._np_dtypes[i], values)
        except (_Bad, ValueError, TypeError, OverflowError):
            pass
        for row, item in enumerate(values):
            if not dtype.accepts(item):
                raise SchemaError(f"{locate(row)}: expected {dtype.expected}, got {_describe(item)}")
        raise SchemaError(f"{locate(0)}: values do not fit dtype {dtype.name}")

    def _fast_convert(self, dtype: _Dtype, np_dtype: Any, values: Any) -> Any:
        np = self._np
        family = dtype.family
        types = set(map(type, values))
        if family == "float":
            if types <= {float, int}:
                array = np.array(values, dtype=np_dtype)
                if float in types and not np.isfinite(array).all():
                    raise _Bad
                return array
            if types <= {float, int, type(None)} and all(v is None or dtype.accepts(v) for v in values):
                return np.array(values, dtype=np_dtype)  # None becomes NaN
            raise _Bad
        if family == "int":
            if types <= {int}:
                if dtype.name != "int64" and (min(values) < dtype.low or max(values) > dtype.high):
                    raise _Bad  # older numpy wraps narrow or unsigned ints around silently
                return np.array(values, dtype=np_dtype)  # OverflowError beyond 64 bits
            if types <= {int, float} and all(dtype.accepts(v) for v in values):
                return np.array(values, dtype=np_dtype)
            raise _Bad
        if family == "str":
            if types <= {str} or (types <= {str, type(None)}):
                if self._str_dtype == object:
                    array = np.empty(len(values), dtype=object)
                    array[:] = values
                    return array
                return self._str_array(values, dtype=self._str_dtype)
            raise _Bad
        if family == "bool":
            if types <= {bool}:
                return np.array(values, dtype=bool)
            raise _Bad
        if family == "datetime":
            if not types <= {str, type(None)}:
                raise _Bad
            parsed = self._pd.to_datetime(list(values), format="ISO8601", utc=True)
            return parsed.tz_localize(None).to_numpy().astype(np_dtype)
        # object: any JSON value, kept as is
        if any(type(v) is float and not math.isfinite(v) for v in values):
            raise _Bad
        array = np.empty(len(values), dtype=object)
        for index, item in enumerate(values):
            array[index] = item
        return array

    def _frame(self, arrays: list, length: int) -> Any:
        pd = self._pd
        if self._fast_frame:
            return pd.DataFrame._from_arrays(arrays, columns=self._pd_columns, index=pd.RangeIndex(length), verify_integrity=False)
        return pd.DataFrame(dict(zip(self.names, arrays)), copy=False)


class NumpyInput(InputSpec):
    """An ndarray input: nested lists of the recorded shape; the first dimension is the batch."""

    kind = "numpy"

    def __init__(self, name: str, dtype: str, shape: list[int | None], example: Any) -> None:
        super().__init__(name, example)
        self.dtype = dtype
        self.shape = tuple(shape)
        self._dtype = _dtype(dtype)

    def to_dict(self) -> dict:
        return {"kind": "numpy", "dtype": self.dtype, "shape": list(self.shape), "example": self.example_value(), "swagger": self.swagger}

    def _swagger_schema(self) -> dict:
        fragment: dict = dict(self._dtype.swagger)
        for size in reversed(self.shape):
            fragment = {"type": "array", "items": fragment}
            if size is not None:
                fragment.update(minItems=size, maxItems=size)
        fragment["description"] = f"An array of shape [{', '.join('n' if s is None else str(s) for s in self.shape)}] and dtype {self.dtype}."
        return fragment

    def _placeholder_example(self) -> Any:
        value: Any = self._dtype.placeholder()
        for size in reversed(self.shape):
            value = [value] * (size if size is not None else 1)
        return value

    def _shape_text(self) -> str:
        return "[" + ", ".join("n" if s is None else str(s) for s in self.shape) + "]"

    def check_json(self, value: Any, where: str) -> None:
        if len(self.shape) >= 2 and _depth(value) == len(self.shape) - 1:
            value = [value]
        self._walk(value, 0, where)

    def _walk(self, value: Any, axis: int, where: str) -> None:
        """Raise SchemaError at the first element or row that does not fit the shape or dtype."""
        if axis == len(self.shape):
            if not self._dtype.accepts(value) or value is None:
                raise SchemaError(f"{where}: expected {self._dtype.expected}, got {_describe(value)}")
            return
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list (shape {self._shape_text()}), got {_describe(value)}")
        size = self.shape[axis]
        if size is not None and len(value) != size:
            raise SchemaError(f"{where}: expected {size} values (shape {self._shape_text()}), got {len(value)}")
        if size is None and not value:
            raise SchemaError(f"{where}: expected at least one value, got an empty list")
        for index, item in enumerate(value):
            self._walk(item, axis + 1, f"{where}[{index}]")

    def build(self, value: Any, where: str | None = None) -> Any:
        """Return an ndarray of the recorded dtype; a single row is taken as a batch of one."""
        import numpy as np

        where = where or self.name
        target = np.dtype(self.dtype)
        try:
            array = np.array(value)
        except (ValueError, TypeError):
            array = None
        if array is not None and len(self.shape) >= 2 and array.ndim == len(self.shape) - 1:
            array = array[np.newaxis]
        family = self._dtype.family
        wanted_kinds = {"int": "iu", "float": "iuf", "bool": "b", "str": "U"}[family]
        if family == "int" and array is not None and array.dtype.kind == "f":
            if array.size and np.isfinite(array).all() and (array == np.floor(array)).all():
                wanted_kinds = "f"
        ok = (
            array is not None
            and array.ndim == len(self.shape)
            and array.size > 0
            and all(s is None or s == n for s, n in zip(self.shape, array.shape))
            and array.dtype.kind in wanted_kinds
        )
        if ok and family == "int":
            low, high = self._dtype.low, self._dtype.high
            ok = bool(array.min() >= low and array.max() <= high)
        if ok and family == "float" and array.dtype.kind == "f":
            ok = bool(np.isfinite(array).all())
        if ok:
            result = array.astype(target, copy=False)
            if family == "float" and not np.isfinite(result).all():
                ok = False  # e.g. 1e300 into float32
            else:
                return result
        self.check_json(value, where)
        raise SchemaError(f"{where}: expected an array of shape {self._shape_text()} with dtype {self.dtype}")


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list) and value:
        depth += 1
        value = value[0]
    return depth


class JsonInput(InputSpec):
    """A plain JSON input (dict or list), handed to ``run()`` as parsed."""

    kind = "json"

    def __init__(self, name: str, json_type: str, example: Any) -> None:
        super().__init__(name, example)
        self.json_type = json_type

    def to_dict(self) -> dict:
        return {"kind": "json", "type": self.json_type, "example": self.example_value(), "swagger": self.swagger}

    def _swagger_schema(self) -> dict:
        if self.example is not None:
            return _json_swagger(self.example)
        return {"type": self.json_type}

    def _placeholder_example(self) -> Any:
        return {} if self.json_type == "object" else []

    def check_json(self, value: Any, where: str) -> None:
        wanted = dict if self.json_type == "object" else list
        if not isinstance(value, wanted):
            noun = "an object" if wanted is dict else "a list"
            raise SchemaError(f"{where}: expected {noun}, got {_describe(value)}")
        _check_finite(value, where)

    def build(self, value: Any, where: str | None = None) -> Any:
        self.check_json(value, where or self.name)
        return value


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"{where}: NaN and Infinity are not valid JSON numbers")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def _json_swagger(value: Any, depth: int = 0) -> dict:
    """Return a JSON Schema fragment describing a sample JSON value."""
    if depth > 8:
        return {}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, dict):
        return {"type": "object", "properties": {str(k): _json_swagger(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, list):
        return {"type": "array", "items": _json_swagger(value[0], depth + 1) if value else {}}
    return {}


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


class Schema:
    """A loaded ``service_schema.json``: ``inputs`` in ``run()`` argument order, optional ``outputs``."""

    def __init__(self, inputs: dict[str, InputSpec], outputs: dict[str, InputSpec] | None = None, run_function: str = "run") -> None:
        self.inputs = inputs
        self.outputs = outputs or {}
        self.run_function = run_function

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def needs_pandas(self) -> bool:
        return any(spec.kind == "pandas" for spec in self.inputs.values())

    @property
    def needs_numpy(self) -> bool:
        return any(spec.kind in ("pandas", "numpy") for spec in self.inputs.values())

    def to_dict(self) -> dict:
        data: dict = {
            "format": SCHEMA_FORMAT,
            "version": SCHEMA_VERSION,
            "run_function": self.run_function,
            "inputs": {name: spec.to_dict() for name, spec in self.inputs.items()},
        }
        if self.outputs:
            data["outputs"] = {name: spec.to_dict() for name, spec in self.outputs.items()}
        return data

    def request_swagger(self) -> dict:
        """Return the JSON Schema of a whole request body, with an example."""
        return {
            "type": "object",
            "properties": {name: spec.swagger for name, spec in self.inputs.items()},
            "required": list(self.inputs),
            "additionalProperties": False,
            "example": example_body(self),
        }

    def __repr__(self) -> str:
        return f"<Schema inputs={', '.join(f'{n}:{s.kind}' for n, s in self.inputs.items())}>"


# --------------------------------------------------------------------------------------------
# generate_schema
# --------------------------------------------------------------------------------------------


def _json_scalar(value: Any) -> Any:
    """Return a JSON-safe Python value for a numpy/pandas scalar (NaN and NaT become None)."""
    if value is None:
        return None
    if hasattr(value, "isoformat") and not isinstance(value, str):
        try:
            if value != value:  # NaT
                return None
        except (TypeError, ValueError):
            pass
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (int, float, str, bool)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value


def _sample_kind(sample: Any) -> str:
    module = type(sample).__module__ or ""
    if module.startswith("pandas") and type(sample).__name__ == "DataFrame":
        return "pandas"
    if module.startswith("numpy") and type(sample).__name__ == "ndarray":
        return "numpy"
    if isinstance(sample, (dict, list)):
        return "json"
    raise SchemaError(
        f"a sample must be a pandas DataFrame, a NumPy array, or a JSON object or list, not {type(sample).__name__}"
    )


def _pandas_dtype_name(series: Any, column: str) -> str:
    import numpy as np
    import pandas as pd

    dtype = series.dtype
    hint = f'column "{column}" has dtype {dtype}'
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iu" or dtype.name in _FLOATS:
            return dtype.name
        if dtype.kind == "b":
            return "bool"
        if dtype.kind == "M":
            return dtype.name if dtype.name in _DATETIMES else "datetime64[ns]"
        if dtype.kind == "O":
            values = series.dropna()
            if all(isinstance(v, str) for v in values):
                return "str"
            return "object"
    if isinstance(dtype, pd.StringDtype):
        return "str"
    if isinstance(dtype, pd.CategoricalDtype):
        raise SchemaError(f"{hint}; convert it with .astype(str) (or to numbers) before generating the schema")
    if isinstance(dtype, pd.DatetimeTZDtype):
        raise SchemaError(f"{hint}; convert it to UTC and drop the time zone (.dt.tz_convert('UTC').dt.tz_localize(None))")
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "iufb":
        raise SchemaError(f"{hint}, a nullable type; use int64/float64/bool (fill or drop missing values first)")
    raise SchemaError(f"{hint}, which a JSON request cannot carry; use numbers, strings, booleans or datetimes")


def _spec_from_sample(name: str, sample: Any) -> InputSpec:
    declared = None
    if isinstance(sample, SampleDefinition):
        declared = sample.type
        sample = sample.sample
        try:
            declared = DataTypes[declared.upper()] if isinstance(declared, str) else DataTypes(declared)
        except (KeyError, ValueError):
            raise SchemaError(f'input "{name}": unknown data type {declared!r}; use DataTypes.PANDAS, DataTypes.NUMPY or DataTypes.STANDARD') from None
        if declared == DataTypes.SPARK:
            raise SchemaError(f'input "{name}": Spark DataFrames are not supported; pass a pandas DataFrame sample (DataTypes.PANDAS)')
    kind = _sample_kind(sample)
    wanted = {DataTypes.PANDAS: "pandas", DataTypes.NUMPY: "numpy", DataTypes.STANDARD: "json"}.get(declared) if declared is not None else kind
    if wanted != kind:
        raise SchemaError(f'input "{name}": declared {declared.name} but the sample is a {type(sample).__name__}')

    if kind == "pandas":
        columns = []
        if len(set(sample.columns)) != len(sample.columns):
            raise SchemaError(f'input "{name}": the DataFrame has duplicate column names')
        for column in sample.columns:
            if not isinstance(column, str):
                raise SchemaError(f'input "{name}": column {column!r} is not a string; rename the columns to strings')
            columns.append(Column(column, _pandas_dtype_name(sample[column], column)))
        if not columns:
            raise SchemaError(f'input "{name}": the sample DataFrame has no columns')
        if len(sample) == 0:
            raise SchemaError(f'input "{name}": the sample DataFrame has no rows; pass at least one example row')
        head = sample.head(EXAMPLE_ROWS)
        example = [
            {column.name: _json_scalar(value) for column, value in zip(columns, row)}
            for row in head.itertuples(index=False, name=None)
        ]
        return PandasInput(name, columns, example)

    if kind == "numpy":
        dtype = sample.dtype
        if dtype.kind == "U":
            dtype_name = "str"
        elif dtype.name in NUMPY_DTYPES:
            dtype_name = dtype.name
        elif dtype.kind == "b":
            dtype_name = "bool"
        else:
            raise SchemaError(f'input "{name}": arrays of dtype {dtype} cannot come from JSON; use a numeric, bool or str dtype')
        if sample.ndim == 0 or sample.size == 0:
            raise SchemaError(f'input "{name}": the sample array must have at least one dimension and one value')
        shape = [None, *sample.shape[1:]]
        head = sample[:EXAMPLE_ROWS]
        example = _nested_json(head.tolist())
        return NumpyInput(name, dtype_name, shape, example)

    _check_finite(sample, name)
    try:
        example = json.loads(json.dumps(sample, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise SchemaError(f'input "{name}": the sample is not plain JSON ({exc})') from None
    return JsonInput(name, "object" if isinstance(sample, dict) else "array", example)


def _json_default(value: Any) -> Any:
    converted = _json_scalar(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return converted


def _nested_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_nested_json(v) for v in value]
    return _json_scalar(value)


def generate_schema(run_func: Callable, inputs: Mapping[str, Any] | None = None, outputs: Mapping[str, Any] | None = None, filepath: str | os.PathLike | None = None) -> dict:
    """Return the schema for ``run_func`` given sample ``inputs`` (and optional ``outputs``); write it to ``filepath``.

    A sample is a pandas DataFrame, a NumPy array, a JSON object/list, or a lab-era
    ``SampleDefinition(DataTypes.X, sample)``. Each input name must be a parameter of
    ``run_func`` and every parameter without a default must have a sample, because the scoring
    server calls ``run(**inputs)``. Raises SchemaError saying what to change otherwise.
    """
    if not callable(run_func):
        raise SchemaError("run_func must be the scoring function, e.g. generate_schema(run, inputs={...})")
    if not inputs:
        raise SchemaError('inputs is empty: pass samples by run() parameter name, e.g. inputs={"input_df": df}')
    parameters = inspect.signature(run_func).parameters
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    positional = {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name in inputs:
        if not isinstance(name, str) or not name.isidentifier():
            raise SchemaError(f"input name {name!r} must be a Python identifier (it is passed as run({name}=...))")
        if name not in positional and not takes_kwargs:
            raise SchemaError(f'{run_func.__name__}() has no parameter "{name}"; its parameters are: {", ".join(parameters) or "none"}')
    missing = [n for n, p in parameters.items() if n in positional and p.default is p.empty and n not in inputs]
    if missing:
        raise SchemaError(f'{run_func.__name__}() needs a sample for parameter "{missing[0]}"')

    schema = Schema(
        {name: _spec_from_sample(name, sample) for name, sample in inputs.items()},
        {name: _spec_from_sample(name, sample) for name, sample in (outputs or {}).items()},
        run_function=getattr(run_func, "__name__", "run"),
    )
    data = schema.to_dict()
    load_schema(data)  # what we write must load back; fail here rather than at deploy time
    if filepath is not None:
        with open(filepath, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, allow_nan=False)
            handle.write("\n")
    return data


# --------------------------------------------------------------------------------------------
# load_schema
# --------------------------------------------------------------------------------------------


def load_schema(obj_or_text: Any) -> Schema:
    """Return the Schema in a parsed dict, JSON text (str/bytes) or a file path (os.PathLike).

    Raises SchemaError with a message naming the place to fix: not JSON, no inputs, an unknown
    kind, unsupported dtypes, a bad shape, an example that does not fit its own columns. A
    lab-era Azure ML schema (``{"input": {name: {"swagger": ..., "internal": ...}}}``) is read
    from its swagger part; its pickled ``internal`` part is never loaded.
    """
    data = obj_or_text
    if isinstance(data, os.PathLike):
        try:
            with open(data, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise SchemaError(f"cannot read the schema file: {exc.strerror}") from None
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SchemaError("the schema file is not UTF-8 text; it should be the JSON file written by generate_schema") from None
    if isinstance(data, str):
        try:
            data = json.loads(data, parse_constant=_reject_constant)
        except ValueError as exc:
            raise SchemaError(f"the schema file is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError("the schema must be a JSON object with an \"inputs\" section")
    if "inputs" not in data and isinstance(data.get("input"), dict):
        return _load_azure_schema(data)
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SchemaError(f"schema version {version!r} is not supported; this runtime reads version {SCHEMA_VERSION}")
    inputs = _load_specs(data.get("inputs"), "inputs")
    outputs = _load_specs(data["outputs"], "outputs") if data.get("outputs") else {}
    run_function = data.get("run_function", "run")
    if not isinstance(run_function, str):
        raise SchemaError("run_function: expected the name of the scoring function")
    return Schema(inputs, outputs, run_function)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _load_specs(section: Any, where: str) -> dict[str, InputSpec]:
    if not isinstance(section, dict) or not section:
        raise SchemaError(f'the schema has no {where}: it needs "{where}": {{"<run() parameter>": {{"kind": ..., ...}}}}; generate it with generate_schema(run, inputs={{...}})')
    specs = {}
    for name, entry in section.items():
        if not name.isidentifier():
            raise SchemaError(f'{where}: input name "{name}" must be a Python identifier (it is passed as run({name}=...))')
        specs[name] = _load_spec(name, entry, f"{where}.{name}")
    return specs


def _load_spec(name: str, entry: Any, where: str) -> InputSpec:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: expected an object with a \"kind\"")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise SchemaError(f"{where}.kind: unknown kind {_describe(kind)}; expected one of {', '.join(KINDS)}")
    if "swagger" in entry and not isinstance(entry["swagger"], dict):
        raise SchemaError(f"{where}.swagger: expected an object (a JSON Schema fragment)")
    example = entry.get("example")
    spec: InputSpec
    if kind == "pandas":
        columns_data = entry.get("columns")
        if not isinstance(columns_data, list) or not columns_data:
            raise SchemaError(f'{where}.columns: expected a non-empty list of {{"name": ..., "dtype": ...}}')
        columns, seen = [], set()
        for index, column in enumerate(columns_data):
            at = f"{where}.columns[{index}]"
            if not isinstance(column, dict) or not isinstance(column.get("name"), str) or not column["name"]:
                raise SchemaError(f'{at}: expected {{"name": "<column>", "dtype": "<dtype>"}}')
            if column["name"] in seen:
                raise SchemaError(f'{at}: column "{column["name"]}" appears twice')
            seen.add(column["name"])
            dtype = column.get("dtype")
            if dtype not in PANDAS_DTYPES:
                raise SchemaError(f'{at}.dtype: unsupported dtype {_describe(dtype)} for column "{column["name"]}"; use one of {", ".join(PANDAS_DTYPES)}')
            columns.append(Column(column["name"], dtype))
        spec = PandasInput(name, columns, example)
    elif kind == "numpy":
        dtype = entry.get("dtype")
        if dtype not in NUMPY_DTYPES:
            raise SchemaError(f"{where}.dtype: unsupported dtype {_describe(dtype)}; use one of {', '.join(NUMPY_DTYPES)}")
        shape = entry.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or any(not (s is None or (type(s) is int and s > 0)) for s in shape)
            or any(s is None for s in shape[1:])
        ):
            raise SchemaError(f"{where}.shape: expected a list of positive sizes with null first for any batch size, e.g. [null, 4]")
        spec = NumpyInput(name, dtype, shape, example)
    else:
        json_type = entry.get("type", "object")
        if json_type not in ("object", "array"):
            raise SchemaError(f'{where}.type: expected "object" or "array", got {_describe(json_type)}')
        spec = JsonInput(name, json_type, example)
    if example is not None:
        try:
            spec.check_json(example, f"{where}.example")
        except SchemaError as exc:
            raise SchemaError(f"the example does not fit the schema: {exc.message}") from None
    return spec


_SWAGGER_DTYPES = {("integer", "int32"): "int64", ("integer", "int64"): "int64", ("integer", None): "int64",
                   ("number", None): "float64", ("number", "double"): "float64", ("number", "float"): "float64",
                   ("boolean", None): "bool", ("string", None): "str", ("string", "date-time"): "datetime64[ns]"}


def _load_azure_schema(data: dict) -> Schema:
    """Return a Schema read from the swagger part of a lab-era Azure ML schema file."""
    specs: dict[str, InputSpec] = {}
    for name, entry in data["input"].items():
        where = f"input.{name}"
        swagger = entry.get("swagger") if isinstance(entry, dict) else None
        if not isinstance(swagger, dict):
            raise SchemaError(f"{where}: this Azure ML schema has no swagger section to read; regenerate it with churn_schema_gen.py")
        if not name.isidentifier():
            raise SchemaError(f'{where}: input name "{name}" must be a Python identifier')
        example = swagger.get("example")
        items = swagger.get("items") if swagger.get("type") == "array" else None
        if isinstance(items, dict) and items.get("type") == "object" and isinstance(items.get("properties"), dict):
            columns = []
            for column, prop in items["properties"].items():
                key = (prop.get("type"), prop.get("format")) if isinstance(prop, dict) else (None, None)
                dtype = _SWAGGER_DTYPES.get(key) or _SWAGGER_DTYPES.get((key[0], None)) or "object"
                columns.append(Column(column, dtype))
            if not columns:
                raise SchemaError(f"{where}.swagger: the records have no properties")
            spec: InputSpec = PandasInput(name, columns, None)
            # Azure wrote integral floats like 0.0 as ints; keep the example only if it fits.
            try:
                spec.check_json(example, where)
                spec.example = example
            except SchemaError:
                pass
        elif isinstance(example, list) and _depth(example) >= 1 and isinstance(items, dict) and items.get("type") in ("array", "number", "integer"):
            arr_shape = []
            probe: Any = example
            while isinstance(probe, list) and probe:
                arr_shape.append(len(probe))
                probe = probe[0]
            spec = NumpyInput(name, "float64", [None, *arr_shape[1:]], None)
            try:
                spec.check_json(example, where)
                spec.example = example
            except SchemaError:
                pass
        else:
            json_type = "array" if swagger.get("type") == "array" else "object"
            spec = JsonInput(name, json_type, example if isinstance(example, (dict, list)) else None)
        specs[name] = spec
    if not specs:
        raise SchemaError("the schema has no inputs")
    return Schema(specs)


# --------------------------------------------------------------------------------------------
# Requests and documents
# --------------------------------------------------------------------------------------------


def build_inputs(schema: Schema, body: Any) -> dict[str, Any]:
    """Return ``{input name: DataFrame | ndarray | dict/list}`` built from a parsed request body.

    Raises SchemaError naming the field at fault and what was expected, e.g.
    ``input_df[0].age: expected a number, got "abc"`` or ``input_df[0]: missing column "age"``;
    unknown inputs and columns, NaN and Infinity are rejected too.
    """
    if not isinstance(body, dict):
        raise SchemaError(f"the request body must be a JSON object like {{\"{next(iter(schema.inputs))}\": ...}}, got {_describe(body)}")
    inputs = schema.inputs
    if len(body) != len(inputs) or any(name not in body for name in inputs):
        for name in inputs:
            if name not in body:
                raise SchemaError(f'{name}: missing; the body needs "{name}" ({_kind_text(inputs[name])})')
        unknown = next(k for k in body if k not in inputs)
        raise SchemaError(f'{unknown}: unknown input; this service takes {", ".join(inputs)}')
    return {name: spec.build(body[name]) for name, spec in inputs.items()}


def _kind_text(spec: InputSpec) -> str:
    if spec.kind == "pandas":
        return "a record or a list of records"
    if spec.kind == "numpy":
        return f"an array of shape {spec._shape_text()}"  # type: ignore[attr-defined]
    return "an object" if spec.json_type == "object" else "a list"  # type: ignore[attr-defined]


def example_body(schema: Schema) -> dict:
    """Return a request body built from the schema's examples (placeholders where none was recorded)."""
    return {name: spec.example_value() for name, spec in schema.inputs.items()}


def openapi_document(schema: Schema, service_name: str, *, server_url: str | None = None, auth: bool = True) -> dict:
    """Return an OpenAPI 3 document for a scoring service: request body per input field, example, errors."""
    error_ref = {"$ref": "#/components/schemas/Error"}

    def responses() -> dict:
        def error(description: str) -> dict:
            return {"description": description, "content": {"application/json": {"schema": error_ref}}}

        out = {
            "200": {"description": "What run() returned, as JSON.", "content": {"application/json": {"schema": {}}}},
            "400": error("The body is not JSON or does not fit the schema; the message names the field."),
            "413": error("The body is larger than the service accepts."),
            "500": error("run() raised an exception."),
            "503": error("The model is still loading."),
            "504": error("run() took longer than the request timeout."),
        }
        if auth:
            out["401"] = error("Missing or wrong service key.")
        return dict(sorted(out.items()))

    def score_operation(operation_id: str) -> dict:
        operation = {
            "operationId": operation_id,
            "summary": f"Score with {service_name}",
            "description": "Send one record or a batch; run() gets the inputs built to the service schema.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}, "example": example_body(schema)}},
            },
            "responses": responses(),
        }
        if auth:
            operation["security"] = [{"serviceKey": []}]
        return operation

    def probe(summary: str) -> dict:
        return {"get": {"summary": summary, "responses": {"200": {"description": "Yes."}, "503": {"description": "No."}}}}

    document: dict = {
        "openapi": "3.0.3",
        "info": {
            "title": f"{service_name} scoring service",
            "version": "1",
            "description": f"Realtime scoring endpoint of the {service_name} service (inputs: {', '.join(schema.inputs)}).",
        },
        "paths": {
            "/score": {"post": score_operation("score")},
            f"/api/v1/service/{service_name}/score": {"post": score_operation("scoreByName")},
            "/health": probe("Is the server alive?"),
            "/ready": probe("Has init() finished?"),
        },
        "components": {
            "schemas": {
                "ScoreRequest": schema.request_swagger(),
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {"serviceKey": {"type": "http", "scheme": "bearer", "description": "A service key: Authorization: Bearer <key>"}}
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
