"""Issue 16, the scoring container's side of data capture, over real HTTP against a real server
(2 worker processes sharing one spool): request ids, sampling, the bounded spool, pull + ack."""
import json
import re

import pytest

from .conftest import SERVICE_KEYS

KEY = {"Authorization": "Bearer " + SERVICE_KEYS.split(",")[0]}
INTERNAL = "internal-key-for-capture-tests"
PULL = "/_mlportal/capture"


def start(start_server, trained_churn, tmp_path, **env):
    return start_server(
        trained_churn["app"], workers=2, MLPORTAL_SERVICE_NAME="churnpred", MLPORTAL_SERVICE_KEYS=SERVICE_KEYS,
        MLPORTAL_INTERNAL_KEY=INTERNAL, MLPORTAL_MODEL_VERSION="3", MLPORTAL_CAPTURE_DIR=str(tmp_path), **env,
    )


def pull(server, **body):
    status, _, raw = server.request("POST", PULL, json.dumps(body), {"Authorization": "Bearer " + INTERNAL})
    assert status == 200, raw
    return json.loads(raw)


def score(server, sample_request, n, prefix="r"):
    for i in range(n):
        status, headers, _ = server.request("POST", "/score", json.dumps(sample_request), dict(KEY, **{"X-Request-Id": f"{prefix}{i}"}))
        assert status == 200 and headers["X-Request-Id"] == f"{prefix}{i}"


def drain(server):
    rows, ack = [], None
    while True:
        answer = pull(server, ack=ack, limit=5000)
        if not answer["rows"]:
            return rows, answer
        rows += answer["rows"]
        ack = answer["rows"][-1]["seq"]


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("capture")


def test_every_response_carries_a_request_id_the_callers_when_well_formed(churn_server, sample_request):
    status, headers, _ = churn_server.request("POST", "/score", json.dumps(sample_request), dict(KEY, **{"X-Request-Id": "abc-123"}))
    assert status == 200 and headers["X-Request-Id"] == "abc-123"
    for given in (None, "bad id with spaces", "x" * 200):
        extra = {} if given is None else {"X-Request-Id": given}
        _, headers, _ = churn_server.request("GET", "/health", None, extra)
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"]), headers
    status, headers, _ = churn_server.request("POST", "/score", "{", KEY)  # errors carry one too
    assert status == 400 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])


def test_capture_is_off_by_default_and_then_stores_nothing(start_server, trained_churn, tmp_path, sample_request):
    server = start(start_server, trained_churn, tmp_path)
    score(server, sample_request, 50)
    answer = pull(server)
    assert answer["rows"] == [] and answer["pending"] == 0 and answer["settings"]["mode"] == "off"


def test_an_outsider_gets_404_on_the_pull(churn_server, start_server, trained_churn, tmp_path):
    server = start(start_server, trained_churn, tmp_path)
    for headers in ({}, KEY, {"Authorization": "Bearer wrong"}, {"Authorization": INTERNAL}):
        assert server.request("POST", PULL, "{}", headers)[0] == 404
        assert server.request("GET", PULL, None, headers)[0] == 404
    # A server started without an internal key answers 404 to everyone.
    assert churn_server.request("POST", PULL, "{}", {"Authorization": "Bearer " + INTERNAL})[0] == 404


def test_bad_settings_are_400_naming_the_field(start_server, trained_churn, tmp_path):
    server = start(start_server, trained_churn, tmp_path)
    auth = {"Authorization": "Bearer " + INTERNAL}
    for settings, word in (({"mode": "both", "percent": 150}, "percent"), ({"mode": "all"}, "mode"),
                           ({"mode": "both", "percent": "10"}, "percent")):
        status, _, raw = server.request("POST", PULL, json.dumps({"settings": settings}), auth)
        assert status == 400 and word in json.loads(raw)["error"]["message"], raw
    assert pull(server)["settings"]["mode"] == "off"  # nothing half-applied


def test_100_percent_captures_every_call_and_10_percent_about_a_tenth(start_server, trained_churn, tmp_path, sample_request):
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="both", MLPORTAL_CAPTURE_PERCENT="100")
    score(server, sample_request, 2000, "full-")
    rows, answer = drain(server)
    assert sorted(r["request_id"] for r in rows) == sorted(f"full-{i}" for i in range(2000))
    assert answer["dropped"] == 0
    row = rows[0]
    assert row["inputs"] == sample_request and row["prediction"] == "0" and row["model_version"] == "3"
    assert row["latency_ms"] > 0 and row["time"] > 0
    # Changed on the running replica through the pull itself, no restart; reaches both workers
    # within the 1 s settings cache.
    pull(server, settings={"mode": "inputs", "percent": 10})
    import time
    time.sleep(1.5)
    score(server, sample_request, 2000, "tenth-")
    rows, _ = drain(server)
    # Binomial(2000, 0.1): mean 200, sd 13.4; [133, 267] is +-5 sd, a false failure < 1e-6.
    assert 133 <= len(rows) <= 267, len(rows)
    assert all(r["request_id"].startswith("tenth-") and "prediction" not in r and "inputs" in r for r in rows)


def test_inputs_go_into_the_row_as_sent_and_any_encoding_json_takes_is_captured_too(start_server, trained_churn, tmp_path,
                                                                                      sample_request):
    """A UTF-8 body is spliced into the row as its text (not decoded and encoded again); a body the
    server also accepts with a BOM, in UTF-16 or with non-ASCII text is captured as the same value."""
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="both")
    record = dict(sample_request["input_df"][0], state="Québec")
    plain = json.dumps({"input_df": [record]}, ensure_ascii=False, indent=1)
    bodies = {"utf8": plain.encode(), "bom": b"\xef\xbb\xbf" + plain.encode(), "utf16": plain.encode("utf-16"),
              "escaped": json.dumps({"input_df": [record]}).encode()}
    for name, body in bodies.items():
        status, headers, raw = server.request("POST", "/score", body, dict(KEY, **{"X-Request-Id": name}))
        assert status == 200 and headers["X-Request-Id"] == name, (name, raw)
    rows = {row["request_id"]: row for row in drain(server)[0]}
    assert set(rows) == set(bodies)
    for name, row in rows.items():
        assert row["inputs"] == {"input_df": [record]}, name
        assert row["prediction"] == "0" and row["collected"]["inputs"][0]["state"] == "Québec", name


def test_a_full_spool_drops_the_oldest_and_counts_them(start_server, trained_churn, tmp_path, sample_request):
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="predictions",
                   MLPORTAL_CAPTURE_SPOOL_ROWS="50")
    score(server, sample_request, 80)
    answer = pull(server)
    assert [r["request_id"] for r in answer["rows"]] == [f"r{i}" for i in range(30, 80)]
    assert answer["dropped"] == 30 and answer["pending"] == 50


def test_the_portal_sets_the_spool_bound_of_a_running_replica_with_a_pull(start_server, trained_churn, tmp_path, sample_request):
    """The bound comes with the switch (MLPORTAL_CAPTURE_SPOOL_ROWS on the portal), so it reaches
    running replicas; a bad one is 400 and changes nothing."""
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="predictions")
    auth = {"Authorization": "Bearer " + INTERNAL}
    for bad in (0, -5, 2_000_000, "20", True):
        status, _, raw = server.request("POST", PULL, json.dumps({"settings": {"mode": "predictions", "spool_rows": bad}}), auth)
        assert status == 400 and "spool_rows" in json.loads(raw)["error"]["message"], (bad, raw)
    assert pull(server)["spool_rows"] == 10000
    assert pull(server, settings={"mode": "predictions", "percent": 100, "spool_rows": 20})["spool_rows"] == 20
    import time
    time.sleep(1.5)  # the workers re-read the settings within 1 s
    score(server, sample_request, 35)
    answer = pull(server)
    assert [r["request_id"] for r in answer["rows"]] == [f"r{i}" for i in range(15, 35)]
    assert answer["dropped"] == 15 and answer["pending"] == 20


def test_rows_stay_until_acknowledged_so_a_failed_store_loses_nothing(start_server, trained_churn, tmp_path, sample_request):
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="both")
    score(server, sample_request, 10)
    first = pull(server, limit=4)
    again = pull(server, limit=4)  # the store of the first pull failed: no ack, same rows again
    assert [r["request_id"] for r in first["rows"]] == [r["request_id"] for r in again["rows"]] == ["r0", "r1", "r2", "r3"]
    rest = pull(server, ack=again["rows"][-1]["seq"], limit=100)
    assert [r["request_id"] for r in rest["rows"]] == [f"r{i}" for i in range(4, 10)]
    assert pull(server, ack=rest["rows"][-1]["seq"])["rows"] == []


def test_model_data_collector_in_the_templates_score_py_adds_to_the_captured_row(start_server, trained_churn, tmp_path, sample_request):
    """The template's score.py collects inputs and predictions the Azure ML way; the rows carry them."""
    assert "from azureml.datacollector import ModelDataCollector" in (trained_churn["app"] / "score.py").read_text()
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="predictions")
    record = sample_request["input_df"][0]
    batch = {"input_df": [record, dict(record, age=70), dict(record, age=33)]}
    status, _, raw = server.request("POST", "/score", json.dumps(batch), dict(KEY, **{"X-Request-Id": "batch-1"}))
    assert status == 200
    (row,) = pull(server)["rows"]
    assert row["request_id"] == "batch-1" and "inputs" not in row and row["prediction"] == json.loads(raw)
    assert [r["age"] for r in row["collected"]["inputs"]] == [record["age"], 70, 33]
    assert row["collected"]["inputs"][0]["state"] == record["state"]
    assert [r["prediction"] for r in row["collected"]["prediction"]] == [int(p) for p in json.loads(raw)]
    # Off: the collectors collect nothing (and the request still answers).
    pull(server, ack=row["seq"], settings={"mode": "off", "percent": 100})
    import time
    time.sleep(1.5)
    status, _, _ = server.request("POST", "/score", json.dumps(batch), KEY)
    assert status == 200 and pull(server)["rows"] == []


OWN_COLLECT_SCORE = """
import json
import pickle

from mlportal_runtime import collect

model = None


def init():
    global model
    with open("model.pkl", "rb") as handle:
        model = pickle.load(handle)


def run(input_df):
    collect(input_df, identifier="features")
    predictions = model.predict(input_df)
    collect(predictions, identifier="scores", feature_names=["churn"])
    return json.dumps([str(p) for p in predictions])
"""


def test_the_portals_own_collect_adds_to_the_captured_row_as_the_azure_class_does(start_server, trained_churn, tmp_path,
                                                                                  sample_request):
    import shutil

    app = tmp_path / "app"
    shutil.copytree(trained_churn["app"], app)
    (app / "score.py").write_text(OWN_COLLECT_SCORE)
    server = start_server(app, workers=2, MLPORTAL_SERVICE_NAME="churnpred", MLPORTAL_SERVICE_KEYS=SERVICE_KEYS,
                          MLPORTAL_INTERNAL_KEY=INTERNAL, MLPORTAL_MODEL_VERSION="3", MLPORTAL_CAPTURE_DIR=str(tmp_path),
                          MLPORTAL_CAPTURE_MODE="inputs")
    record = sample_request["input_df"][0]
    status, _, raw = server.request("POST", "/score", json.dumps({"input_df": [record, dict(record, age=71)]}),
                                    dict(KEY, **{"X-Request-Id": "own-1"}))
    assert status == 200, raw
    (row,) = pull(server)["rows"]
    assert row["request_id"] == "own-1" and "prediction" not in row
    assert [r["age"] for r in row["collected"]["features"]] == [record["age"], 71]
    assert row["collected"]["scores"] == [{"churn": int(p)} for p in json.loads(raw)]


def test_the_collector_outside_a_request_does_nothing_and_names_unnamed_columns():
    import numpy as np
    import pandas as pd

    from azureml.datacollector import ModelDataCollector
    from mlportal_runtime import collector

    dc = ModelDataCollector("model.pkl", identifier="inputs", feature_names=["a", "b"], webservice_name="ignored")
    dc.collect(pd.DataFrame({"a": [1]}))  # no request: nothing, no error
    collector.begin(True)
    dc.collect(np.array([[1, 2.5], [3, 4.5]]))
    ModelDataCollector(identifier="prediction").collect(np.array([0, 1]))
    dc.collect(pd.DataFrame({"a": [np.int64(5)], "b": ["x"]}))
    collected = collector.end()
    assert collected == {"inputs": [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.5}, {"a": 5, "b": "x"}],
                         "prediction": [{"prediction": 0}, {"prediction": 1}]}
    collector.begin(False)
    dc.collect([1, 2])
    assert collector.end() is None


def test_a_frame_is_collected_block_by_block_with_the_values_of_its_object_array():
    """The collector reads a DataFrame's blocks (its fast way); every dtype gives what the public
    to_numpy(dtype=object) gives, in the frame's column order, for a slice too."""
    import numpy as np
    import pandas as pd

    from mlportal_runtime import collector

    frame = pd.DataFrame({"i": [1, 2, 3], "f": [1.5, np.nan, 3.0], "s": ["a", None, "c"], "b": [True, False, True],
                          "cat": pd.Categorical(["x", "y", "x"]), "t": pd.to_datetime(["2026-01-01", None, "2026-01-03"]),
                          "n": pd.array([1, None, 3], dtype="Int64"), "o": [{"k": 1}, [1], "z"], "i2": [4, 5, 6]})
    frame = frame[["f", "i", "s", "i2", "b", "cat", "t", "n", "o"]]  # blocks out of column order
    for data in (frame, frame.iloc[1:], frame.iloc[:, ::-1]):
        assert collector._frame_columns(data) is not None
        names = [str(c) for c in data.columns]
        public = [{n: collector._plain(v) for n, v in zip(names, row)} for row in data.to_numpy(dtype=object).tolist()]
        assert json.dumps(collector.to_records(data, None, "x"), default=str) == json.dumps(public, default=str)
    assert collector.to_records(pd.DataFrame({"a": []}), None, "x") == []


def oip_body(records: list[dict], metadata: dict, request_id: str | None = None) -> dict:
    types = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    body = {"inputs": [{"name": name, "shape": [len(records)], "datatype": types[name], "data": [r[name] for r in records]}
                       for name in records[0]]}
    if request_id is not None:
        body["id"] = request_id
    return body


def test_oip_infer_requests_are_captured_like_score_requests(start_server, trained_churn, tmp_path, sample_request):
    """/v2/models/<name>/infer is sampled and spooled as /score is: same inputs shape (so the same
    in_<field> columns), same prediction, ModelDataCollector's records, the request id answered."""
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="both")
    record = sample_request["input_df"][0]
    records = [record, dict(record, age=70), dict(record, age=33)]
    metadata = json.loads(server.request("GET", "/v2/models/churnpred")[2])
    status, _, raw = server.request("POST", "/score", json.dumps({"input_df": records}), dict(KEY, **{"X-Request-Id": "by-score"}))
    assert status == 200
    # The OIP body's id names the request when no X-Request-Id header does; a valid header wins.
    status, headers, by_id = server.request("POST", "/v2/models/churnpred/infer", json.dumps(oip_body(records, metadata, "oip-1")), KEY)
    assert status == 200 and headers["X-Request-Id"] == "oip-1" and json.loads(by_id)["id"] == "oip-1"
    status, headers, _ = server.request("POST", "/v2/models/churnpred/infer", json.dumps(oip_body(records, metadata, "body-id")),
                                        dict(KEY, **{"X-Request-Id": "oip-2"}))
    assert status == 200 and headers["X-Request-Id"] == "oip-2"
    status, headers, _ = server.request("POST", "/v2/models/churnpred/infer", json.dumps(oip_body(records, metadata, "not an id")), KEY)
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    generated = headers["X-Request-Id"]
    # A refused infer request (bad tensor) is not captured.
    bad = oip_body(records, metadata, "refused")
    bad["inputs"] = bad["inputs"][1:]
    assert server.request("POST", "/v2/models/churnpred/infer", json.dumps(bad), KEY)[0] == 400

    rows = {row["request_id"]: row for row in pull(server)["rows"]}
    assert set(rows) == {"by-score", "oip-1", "oip-2", generated}
    for rid in ("oip-1", "oip-2", generated):
        row = rows[rid]
        assert row["inputs"] == rows["by-score"]["inputs"] == {"input_df": records}
        assert row["prediction"] == rows["by-score"]["prediction"] == json.loads(raw)
        assert row["collected"] == rows["by-score"]["collected"] and row["model_version"] == "3" and row["latency_ms"] > 0


def test_oip_capture_follows_the_switch_and_the_sampling(start_server, trained_churn, tmp_path, sample_request):
    server = start(start_server, trained_churn, tmp_path, MLPORTAL_CAPTURE_MODE="predictions")
    record = sample_request["input_df"][0]
    metadata = json.loads(server.request("GET", "/v2/models/churnpred")[2])
    for i in range(20):
        assert server.request("POST", "/v2/models/churnpred/infer", json.dumps(oip_body([record], metadata, f"p{i}")), KEY)[0] == 200
    rows, _ = drain(server)
    assert sorted(r["request_id"] for r in rows) == sorted(f"p{i}" for i in range(20))
    assert all("inputs" not in r and r["prediction"] == "0" for r in rows)
    pull(server, settings={"mode": "off", "percent": 100})
    import time
    time.sleep(1.5)
    for i in range(20):
        assert server.request("POST", "/v2/models/churnpred/infer", json.dumps(oip_body([record], metadata, f"q{i}")), KEY)[0] == 200
    assert pull(server)["rows"] == []
