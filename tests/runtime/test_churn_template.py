"""The Customer Churn Prediction template runs as the lab describes: train, export, schema."""
import json
import pickle
import re
import sys

import pandas as pd

from mlportal_runtime import parse_metric_line
from mlportal_runtime.schema import build_inputs, load_schema

from .conftest import REPO, TEMPLATE


def accuracies(stdout: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(Naive Bayes Accuracy|DTree Accuracy) ([0-9.]+)$", stdout, re.M)}


def test_the_template_describes_itself():
    meta = json.loads((TEMPLATE / "template.json").read_text())
    assert meta["name"] == "Customer Churn Prediction" and meta["slug"] == "churn"
    assert (TEMPLATE / meta["default_script"]).is_file()


def test_the_training_data_has_the_lab_columns_and_size():
    path = TEMPLATE / "data" / "CATelcoCustomerChurnTrainingSample.csv"
    assert path.stat().st_size < 3_100_000
    frame = pd.read_csv(path)
    assert frame.shape == (20_000, 29)
    assert set(frame["noadditionallines"]) == {"\\N"}
    assert 0.15 < frame["churn"].mean() < 0.45


def test_the_generator_is_deterministic(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import generate_churn_data
    finally:
        sys.path.pop(0)
    assert generate_churn_data.generate(50, 2017) == generate_churn_data.generate(50, 2017)
    out = tmp_path / "sample.csv"
    generate_churn_data.main(["--rows", "20000", "--out", str(out)])
    assert out.read_bytes() == (TEMPLATE / "data" / "CATelcoCustomerChurnTrainingSample.csv").read_bytes()


def test_training_prints_both_accuracies_in_the_expected_band(trained_churn):
    found = accuracies(trained_churn["stdout"])
    assert set(found) == {"Naive Bayes Accuracy", "DTree Accuracy"}
    assert 0.85 <= found["DTree Accuracy"] <= 0.96
    assert 0.5 <= found["Naive Bayes Accuracy"] < found["DTree Accuracy"]


def test_training_logs_both_accuracies_as_metric_lines(trained_churn):
    metrics = [m for m in map(parse_metric_line, trained_churn["stdout"].splitlines()) if m]
    by_name = {m["name"]: m["value"] for m in metrics}
    assert by_name == accuracies(trained_churn["stdout"])


def test_training_writes_a_pipeline_that_takes_the_raw_record(trained_churn, sample_record):
    with open(trained_churn["app"] / "outputs" / "model.pkl", "rb") as handle:
        model = pickle.load(handle)
    assert type(model).__name__ == "Pipeline"
    assert model.predict(pd.DataFrame([sample_record])).tolist() == [0]


def test_the_schema_generator_writes_29_typed_columns_from_the_lab_record(trained_churn, sample_record):
    schema = load_schema((trained_churn["app"] / "service_schema.json").read_text())
    spec = schema.inputs["input_df"]
    assert len(spec.columns) == 29 and spec.example == [sample_record]


def test_score_returns_the_labs_answer_for_its_record_and_a_list_for_a_batch(trained_churn, sample_request, monkeypatch):
    monkeypatch.chdir(trained_churn["app"])
    monkeypatch.syspath_prepend(str(trained_churn["app"]))
    import importlib

    score = importlib.import_module("score")
    try:
        score.init()
        schema = load_schema((trained_churn["app"] / "service_schema.json").read_text())
        assert score.run(**build_inputs(schema, sample_request)) == '"0"'
        batch = {"input_df": sample_request["input_df"] * 3}
        assert json.loads(score.run(**build_inputs(schema, batch))) == ["0", "0", "0"]
        # Without a schema the server hands run() the raw JSON text.
        assert score.run(json.dumps(sample_request)) == '"0"'
    finally:
        sys.modules.pop("score", None)
