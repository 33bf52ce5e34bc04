"""Data collection from inside ``score.py``: Azure ML's ``ModelDataCollector``, on the portal's spool.

Azure ML Model Management let a scoring script collect what it chose (``inputs_dc.collect(df)``,
``prediction_dc.collect(pred)``) when the service had model data collection on. Here the same calls
add records to the row the scoring server captures for the current request, so they are stored with
its request id, time and model version, one column per feature (``<identifier>_<feature>``).

A call collects only while a request that the service's capture switch sampled is being answered;
otherwise (capture off, request not sampled, called from ``init()`` or a training script) it does
nothing and costs next to nothing. Standard library only; pandas and numpy objects are recognised
by duck typing.
"""
from __future__ import annotations

from typing import Any

MAX_RECORDS = 10_000  # per identifier per request; more is cut (a row is not a data lake)


class _Current:
    """What the server is capturing for the request being answered (one request at a time per worker)."""

    collected: dict[str, list[dict[str, Any]]] | None = None


current = _Current()


def begin(sampled: bool) -> None:
    """Called by the server before run(): start collecting for this request, or not at all."""
    current.collected = {} if sampled else None


def end() -> dict[str, list[dict[str, Any]]] | None:
    """Called by the server after run(): what score.py collected (None when nothing)."""
    collected, current.collected = current.collected, None
    return collected or None


_PLAIN_TYPES = (int, float, str, bool, type(None))


def _plain(value: Any) -> Any:
    """numpy scalars and the like to plain Python values (JSON-able)."""
    if type(value) in _PLAIN_TYPES:
        return value
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict, str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    return value


def _frame_columns(frame: Any) -> list[list[Any]] | None:
    """A DataFrame's columns as lists, read block by block from pandas' BlockManager: one tolist()
    per block (an int block, a float block, one per Arrow string column) instead of one object
    array interleaving the whole frame, which takes twice as long on a one-record churn frame
    (~70 against ~160 us: benchmarks/capture.py). The values are the ones to_numpy(dtype=object)
    gives. None when the frame is not laid out so (a pandas without blocks): the caller then
    takes the public way."""
    try:
        columns: list[Any] = [None] * frame.shape[1]
        for block in frame._mgr.blocks:
            values = block.values
            locations = block.mgr_locs.as_array.tolist()
            if getattr(values, "ndim", 1) == 1:
                columns[locations[0]] = values.tolist()
            else:
                for location, column in zip(locations, values.tolist()):
                    columns[location] = column
    except (AttributeError, TypeError, IndexError, ValueError):
        return None
    if any(column is None or len(column) != len(frame) for column in columns):
        return None
    return columns


def to_records(data: Any, feature_names: list[str] | None, identifier: str) -> list[dict[str, Any]]:
    """Turn what score.py passes (DataFrame, ndarray, list of records or of rows, dict, scalar)
    into records {feature: value}. Unnamed columns are named ``feature_names`` or ``<identifier>``,
    ``<identifier>_1``…"""
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas DataFrame
        # Column lists zipped into records: to_dict("records") cost a churn request about 2 ms of
        # its ~7 (benchmarks/capture.py); numbers come out as Python's.
        names = [str(c) for c in data.columns]
        columns = _frame_columns(data)
        rows = zip(*columns) if columns is not None else data.to_numpy(dtype=object).tolist()
        return [{n: _plain(v) for n, v in zip(names, r)} for r in rows]
    if hasattr(data, "to_dict") and hasattr(data, "index"):  # pandas Series: one value per record
        data = data.tolist()
    elif hasattr(data, "tolist"):  # numpy array
        data = data.tolist()
    names = list(feature_names or [])

    def name(i: int) -> str:
        if i < len(names):
            return str(names[i])
        return identifier if i == 0 else f"{identifier}_{i}"

    if isinstance(data, dict):
        return [{str(k): _plain(v) for k, v in data.items()}]
    if isinstance(data, (list, tuple)):
        records = []
        for item in data:
            if isinstance(item, dict):
                records.append({str(k): _plain(v) for k, v in item.items()})
            elif isinstance(item, (list, tuple)):
                records.append({name(i): _plain(v) for i, v in enumerate(item)})
            else:
                records.append({name(0): _plain(item)})
        return records
    return [{name(0): _plain(data)}]


class ModelDataCollector:
    """``ModelDataCollector(model_name, identifier="inputs", feature_names=[...])``; ``.collect(data)``.

    The keyword arguments Azure ML took (``model_management_account_id``, ``webservice_name``,
    ``model_id``, ``model_version``, ``debug``…) are accepted and ignored: the portal knows the
    service and the model version already.
    """

    def __init__(self, model_name: str = "model", identifier: str = "default", feature_names: list[str] | None = None,
                 **_azure_options: Any) -> None:
        self.model_name = str(model_name)
        self.identifier = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(identifier)) or "default"
        self.feature_names = list(feature_names) if feature_names is not None else None

    def collect(self, input_data: Any, user_correlation_id: str = "") -> None:
        """Add ``input_data`` to the current request's captured row; never raises into run()."""
        collected = current.collected
        if collected is None:
            return
        try:
            records = to_records(input_data, self.feature_names, self.identifier)
        except Exception:  # noqa: BLE001 - collection is best effort next to scoring
            records = [{self.identifier: repr(input_data)[:1000]}]
        if user_correlation_id:
            for record in records:
                record.setdefault("correlation_id", str(user_correlation_id))
        bucket = collected.setdefault(self.identifier, [])
        bucket.extend(records[: max(0, MAX_RECORDS - len(bucket))])


def collect(data: Any, identifier: str = "inputs", feature_names: list[str] | None = None) -> None:
    """The portal's own spelling: ``mlportal_runtime.collect(df, identifier="features")``."""
    ModelDataCollector(identifier=identifier, feature_names=feature_names).collect(data)
