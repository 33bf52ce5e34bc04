"""The block path of build_inputs builds the same frames as the column path, and the churn pipeline
gives the same answers on them, for ordinary records and edge cases alike."""
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from mlportal_runtime.schema import SchemaError, build_inputs, generate_schema, load_schema

from .conftest import TEMPLATE


def run(input_df):
    return None


def both_ways(schema, body):
    """Return (what the block path builds, what the column path builds) for ``body``; an error is returned as its message."""
    spec = next(iter(schema.inputs.values()))
    spec_plan = _plan(schema)
    results = []
    for plan in (spec_plan, None):
        spec._blocks = plan
        try:
            results.append(next(iter(build_inputs(schema, body).values())))
        except SchemaError as exc:
            results.append(exc.message)
        finally:
            spec._blocks = spec_plan
    return results


def _plan(schema):
    spec = next(iter(schema.inputs.values()))
    if not spec._prepared:
        spec._prepare()
    return spec._blocks


def assert_same_frame(fast, slow):
    if isinstance(slow, str):
        assert fast == slow
        return
    assert list(fast.columns) == list(slow.columns) and fast.columns.dtype == slow.columns.dtype
    assert list(fast.dtypes) == list(slow.dtypes)
    assert fast.index.equals(slow.index) and fast.equals(slow)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
    layout = [(str(b.dtype), tuple(b.mgr_locs.as_array), b.values.shape) for b in slow._mgr.blocks]
    assert [(str(b.dtype), tuple(b.mgr_locs.as_array), b.values.shape) for b in fast._mgr.blocks] == layout


@pytest.fixture(scope="module")
def churn_schema(sample_record):
    return load_schema(generate_schema(run, inputs={"input_df": pd.DataFrame([sample_record])}))


@pytest.fixture(scope="module")
def churn_records(sample_record):
    """Records of the training data (every category seen there) and edge cases around the lab's record."""
    data = pd.read_csv(TEMPLATE / "data" / "CATelcoCustomerChurnTrainingSample.csv")
    columns = list(sample_record)
    rows = json.loads(data[columns].sample(300, random_state=7).to_json(orient="records"))
    edge = [
        {"state": "Mars"}, {"education": ""}, {"occupation": "Zürich 🚀 \u00e9"}, {"gender": "\\N"},
        {"annualincome": 2**63 - 1}, {"annualincome": -(2**63)}, {"age": 0}, {"age": -1},
        {"calldroprate": 1e308}, {"calldroprate": -0.0}, {"calldroprate": 5e-324}, {"calldroprate": 1},
        {"percentagecalloutsidenetwork": 2**53 + 1}, {"age": 12.0}, {"calldroprate": None}, {"state": None},
    ]
    return rows + [dict(sample_record, **change) for change in edge]


def test_the_block_path_is_used_for_the_churn_schema(churn_schema, sample_record):
    assert _plan(churn_schema) is not None
    frame = build_inputs(churn_schema, {"input_df": [sample_record]})["input_df"]
    assert frame._mgr.nblocks == 12  # one int64 block, one float64 block, ten string columns


def test_each_record_builds_the_same_frame_both_ways(churn_schema, churn_records):
    for record in churn_records:
        assert_same_frame(*both_ways(churn_schema, {"input_df": [record]}))
        assert_same_frame(*both_ways(churn_schema, {"input_df": record}))


def test_batches_build_the_same_frame_both_ways(churn_schema, churn_records):
    for size in (2, 7, len(churn_records)):
        assert_same_frame(*both_ways(churn_schema, {"input_df": churn_records[:size]}))
    reordered = [dict(reversed(list(r.items()))) for r in churn_records[:5]]
    assert_same_frame(*both_ways(churn_schema, {"input_df": reordered}))


@pytest.mark.parametrize("change", [
    {"age": "abc"}, {"age": 12.5}, {"age": None}, {"age": True}, {"calldroprate": "0.06"},
    {"calldroprate": float("nan")}, {"calldroprate": float("inf")}, {"state": 3}, {"state": ["WA"]},
    {"callingnum": 2**64}, {"annualincome": 2**63}, {"calldroprate": 10**400}, {"surprise": 1},
    {"state": "\ud800"},
])
def test_bad_values_get_the_same_answer_both_ways(churn_schema, sample_record, change):
    fast, slow = both_ways(churn_schema, {"input_df": [dict(sample_record, **change)]})
    assert isinstance(slow, str) and fast == slow


def test_bad_records_get_the_same_answer_both_ways(churn_schema, sample_record):
    missing = {k: v for k, v in sample_record.items() if k != "age"}
    for body in ({"input_df": [missing]}, {"input_df": [sample_record, 1]}, {"input_df": ["x"]}, {"input_df": [[1, 2]]}):
        fast, slow = both_ways(churn_schema, body)
        assert isinstance(slow, str) and fast == slow


def answer(model, frame):
    """What the pipeline predicts for ``frame``, or the error it raises (which must be the same error both ways)."""
    try:
        return model.predict(frame).tolist()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def test_the_churn_pipeline_predicts_the_same_both_ways(trained_churn, churn_records):
    schema = load_schema((trained_churn["app"] / "service_schema.json").read_text())
    with open(trained_churn["app"] / "model.pkl", "rb") as handle:
        model = pickle.load(handle)
    fast, slow = zip(*(both_ways(schema, {"input_df": [record]}) for record in churn_records))
    assert [answer(model, f) for f in fast] == [answer(model, f) for f in slow]
    # The lab's own way (a DataFrame of the records) agrees wherever its inferred dtypes match ours.
    plain = [i for i, r in enumerate(churn_records) if None not in r.values() and not isinstance(r["age"], float)]
    assert [answer(model, fast[i]) for i in plain] == [answer(model, pd.DataFrame([churn_records[i]])) for i in plain]
    batch_fast, batch_slow = both_ways(schema, {"input_df": churn_records})
    assert answer(model, batch_fast) == answer(model, batch_slow)
    finite = [r for r in churn_records if r["calldroprate"] != 1e308]
    batch_fast, batch_slow = both_ways(schema, {"input_df": finite})
    assert answer(model, batch_fast) == answer(model, batch_slow) and len(answer(model, batch_fast)) == len(finite)


def test_a_finite_value_the_schema_takes_can_still_be_refused_by_the_model(trained_churn, sample_record):
    """Why the server leaves scikit-learn's finiteness checks on (``assume_finite`` stays False):
    the schema refuses NaN and Infinity in the request, but the tree casts to float32, where a
    finite float64 like 1e308 overflows; the model's own check then refuses it (a 500 naming it)
    rather than predicting from an infinity."""
    schema = load_schema((trained_churn["app"] / "service_schema.json").read_text())
    with open(trained_churn["app"] / "model.pkl", "rb") as handle:
        model = pickle.load(handle)
    frame = build_inputs(schema, {"input_df": [dict(sample_record, calldroprate=1e308)]})["input_df"]
    assert answer(model, frame).startswith("ValueError: Input X contains infinity or a value too large for dtype('float32')")


@pytest.mark.parametrize("sample, records, by_blocks", [
    (pd.DataFrame({"a": np.array([1], dtype=np.int8), "b": np.array([2], dtype=np.uint64), "c": [True], "d": np.array([1.5], dtype=np.float32)}),
     [{"a": -128, "b": 2**64 - 1, "c": False, "d": 3.25}, {"a": 127, "b": 0, "c": True, "d": -1}, {"a": 128, "b": 0, "c": True, "d": 0.0},
      {"a": 1, "b": -1, "c": True, "d": 0.0}, {"a": 1, "b": 1, "c": 1, "d": 0.0}, {"a": 1, "b": 1, "c": True, "d": 1e39}], True),
    (pd.DataFrame({"x": [1.0]}), [{"x": 1.5}, {"x": 2}, {"x": None}, {"x": "1"}], True),
    (pd.DataFrame({"s": ["a"]}), [{"s": "b"}, {"s": None}, {"s": 1}], True),
    (pd.DataFrame({"s": ["a"], "t": pd.to_datetime(["2015-01-01"])}), [{"s": "b", "t": "2016-02-03T04:05:06"}], False),  # datetime columns: column path only
])
def test_other_schemas_build_the_same_frames_both_ways(sample, records, by_blocks):
    schema = load_schema(generate_schema(run, inputs={"input_df": sample}))
    assert (_plan(schema) is not None) == by_blocks
    for record in records:
        assert_same_frame(*both_ways(schema, {"input_df": [record]}))
    good = [r for r in records if not isinstance(both_ways(schema, {"input_df": [r]})[1], str)]
    assert_same_frame(*both_ways(schema, {"input_df": good}))
