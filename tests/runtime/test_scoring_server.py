"""The churn service over real HTTP: the lab's record, batches, errors, keys, OIP v2, metrics."""
import http.client
import json
import pickle
import re
import socket

import pandas as pd
import pytest

from tests.helpers import wait_until

from .conftest import SERVICE_KEYS

KEY = {"Authorization": "Bearer " + SERVICE_KEYS.split(",")[0]}


@pytest.fixture(scope="module")
def records_100(trained_churn):
    frame = pd.read_csv(trained_churn["app"] / "data" / "CATelcoCustomerChurnTrainingSample.csv").head(100)
    return json.loads(frame.to_json(orient="records"))


def raw_exchange(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server sends back until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                    if len(body) >= length:
                        break
        except socket.timeout:
            pass
        return b"".join(chunks)


def test_it_is_ready_and_its_probes_need_no_key(churn_server):
    assert churn_server.request("GET", "/ready")[0] == 200
    assert churn_server.request("GET", "/health")[0] == 200
    assert churn_server.request("GET", "/v2/health/live")[0] == 200
    assert json.loads(churn_server.request("GET", "/v2/health/ready")[2]) == {"ready": True}


def test_the_labs_record_scores_0(churn_server, sample_request):
    status, headers, body = churn_server.request("POST", "/score", json.dumps(sample_request), KEY)
    assert status == 200 and body == b'"0"'
    assert headers["Content-Type"] == "application/json"


def test_the_secondary_key_and_the_named_path_work_too(churn_server, sample_request):
    secondary = {"Authorization": "Bearer " + SERVICE_KEYS.split(",")[1]}
    status, body = churn_server.post_json("/api/v1/service/churnpred/score", sample_request, secondary)
    assert (status, body) == (200, "0")


def test_another_service_name_in_the_path_is_404(churn_server, sample_request):
    assert churn_server.post_json("/api/v1/service/other/score", sample_request, KEY)[0] == 404


def test_a_batch_of_100_gets_the_models_100_predictions(churn_server, trained_churn, records_100):
    status, predictions = churn_server.post_json("/score", {"input_df": records_100}, KEY)
    assert status == 200 and len(predictions) == 100
    with open(trained_churn["app"] / "model.pkl", "rb") as handle:
        model = pickle.load(handle)
    assert predictions == [str(p) for p in model.predict(pd.DataFrame(records_100))]
    assert {"0", "1"} == set(predictions)


def test_it_rejects_a_missing_column(churn_server, sample_record):
    record = {k: v for k, v in sample_record.items() if k != "age"}
    status, body = churn_server.post_json("/score", {"input_df": [record]}, KEY)
    assert status == 400
    assert body == {"error": {"code": "invalid_input", "message": 'input_df[0]: missing column "age"'}}


def test_it_rejects_a_value_of_the_wrong_type(churn_server, sample_record):
    status, body = churn_server.post_json("/score", {"input_df": [dict(sample_record, age="abc")]}, KEY)
    assert status == 400
    assert body["error"]["message"] == 'input_df[0].age: expected an integer, got "abc"'


@pytest.mark.parametrize("payload", [b"not json", b"", b'{"input_df": [{"age": NaN}]}', b"\xff\xfe"])
def test_it_rejects_a_body_that_is_not_json(churn_server, payload):
    status, _, body = churn_server.request("POST", "/score", payload, KEY)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_it_rejects_a_missing_or_wrong_key(churn_server, sample_request, headers):
    status, response_headers, body = churn_server.request("POST", "/score", json.dumps(sample_request), headers)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"
    assert response_headers["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_an_oversized_body_with_413(churn_server, sample_record):
    big = json.dumps({"input_df": [sample_record] * 1000}).encode()
    assert len(big) > 256 * 1024
    status, _, body = churn_server.request("POST", "/score", big, KEY)
    assert status == 413
    assert "at most 262144" in json.loads(body)["error"]["message"]


def test_it_reads_a_chunked_body(churn_server, sample_request):
    body = json.dumps(sample_request).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:]))
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    head += b"Authorization: " + KEY["Authorization"].encode() + b"\r\n\r\n"
    reply = raw_exchange(churn_server.port, head + chunks + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'"0"')


def test_it_answers_expect_100_continue(churn_server, sample_request):
    body = json.dumps(sample_request).encode()
    with socket.create_connection(("127.0.0.1", churn_server.port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\nAuthorization: %s\r\n\r\n"
                     % (len(body), KEY["Authorization"].encode()))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(4096).endswith(b'"0"')


def test_one_connection_serves_many_requests(churn_server, sample_request):
    connection = http.client.HTTPConnection("127.0.0.1", churn_server.port, timeout=10)
    try:
        for _ in range(5):
            connection.request("POST", "/score", json.dumps(sample_request), KEY)
            response = connection.getresponse()
            assert response.read() == b'"0"'
            assert response.getheader("Connection") != "close"
    finally:
        connection.close()


def test_unknown_paths_are_404_and_get_on_score_is_405(churn_server):
    status, _, body = churn_server.request("GET", "/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, headers, _ = churn_server.request("GET", "/score")
    assert status == 405 and headers["Allow"] == "POST"


def test_swagger_lists_the_29_input_fields_with_the_example(churn_server, sample_request):
    status, _, body = churn_server.request("GET", "/swagger.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"].startswith("3.")
    fields = document["components"]["schemas"]["ScoreRequest"]["properties"]["input_df"]["items"]["properties"]
    assert len(fields) == 29 and fields["age"]["type"] == "integer"
    example = document["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == sample_request


def test_oip_metadata_lists_one_tensor_per_column(churn_server):
    status, _, body = churn_server.request("GET", "/v2/models/churnpred")
    metadata = json.loads(body)
    assert status == 200 and metadata["name"] == "churnpred" and len(metadata["inputs"]) == 29
    assert {"name": "age", "datatype": "INT64", "shape": [-1]} in metadata["inputs"]
    assert {"name": "state", "datatype": "BYTES", "shape": [-1]} in metadata["inputs"]


def oip_request(records: list[dict], metadata: dict) -> dict:
    types = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    return {"id": "r1", "inputs": [
        {"name": name, "shape": [len(records)], "datatype": types[name], "data": [r[name] for r in records]}
        for name in records[0]
    ]}


def test_oip_infer_gives_the_same_prediction_as_score(churn_server, sample_record, records_100):
    metadata = json.loads(churn_server.request("GET", "/v2/models/churnpred")[2])
    status, body = churn_server.post_json("/v2/models/churnpred/infer", oip_request([sample_record], metadata), KEY)
    assert status == 200 and body["model_name"] == "churnpred" and body["id"] == "r1"
    assert body["outputs"] == [{"name": "predictions", "datatype": "BYTES", "shape": [1], "data": ["0"]}]

    status, body = churn_server.post_json("/v2/models/churnpred/infer", oip_request(records_100[:20], metadata), KEY)
    _, by_score = churn_server.post_json("/score", {"input_df": records_100[:20]}, KEY)
    assert status == 200 and body["outputs"][0]["data"] == by_score and body["outputs"][0]["shape"] == [20]


def test_oip_errors_name_the_tensor(churn_server, sample_record):
    metadata = json.loads(churn_server.request("GET", "/v2/models/churnpred")[2])
    request = oip_request([dict(sample_record, age="old")], metadata)
    next(t for t in request["inputs"] if t["name"] == "age")["datatype"] = "BYTES"
    status, body = churn_server.post_json("/v2/models/churnpred/infer", request, KEY)
    assert status == 400 and "inputs[age].datatype: expected INT64, got BYTES" in body["error"]
    request["inputs"] = [t for t in request["inputs"] if t["name"] != "age"]
    status, body = churn_server.post_json("/v2/models/churnpred/infer", request, KEY)
    assert status == 400 and 'missing tensor "age"' in body["error"]
    assert churn_server.post_json("/v2/models/churnpred/infer", request, {})[0] == 401
    assert churn_server.post_json("/v2/models/other/infer", request, KEY)[0] == 404


def metric(text: str, name: str, **labels) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + ("{" + label_text + "}" if labels else "")) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_requests_across_workers(churn_server, sample_request):
    before = churn_server.request("GET", "/metrics")[2].decode()
    for _ in range(6):  # fresh connections: they spread over both workers
        churn_server.request("POST", "/score", json.dumps(sample_request), KEY)
    churn_server.request("POST", "/score", b"nope", KEY)
    status, headers, body = churn_server.request("GET", "/metrics")
    after = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert metric(after, "mlportal_requests_total", handler="score", code="200") - metric(before, "mlportal_requests_total", handler="score", code="200") == 6
    assert metric(after, "mlportal_requests_total", handler="score", code="400") - metric(before, "mlportal_requests_total", handler="score", code="400") == 1
    assert metric(after, "mlportal_request_duration_seconds_count") - metric(before, "mlportal_request_duration_seconds_count") == 7
    assert metric(after, 'mlportal_request_duration_seconds_bucket', le="+Inf") == metric(after, "mlportal_request_duration_seconds_count")
    assert metric(after, "mlportal_workers_ready") == 2


def test_each_request_gets_one_access_log_line(churn_server):
    churn_server.request("GET", "/health?probe=log-line")
    # The worker writes its access log once it has been idle 2 ms (at the latest 0.1 s later when busy).
    wait_until(lambda: re.search(r'^w\d 127\.0\.0\.1 "GET /health\?probe=log-line" 200 \d+ [0-9.]+ms$',
                                 churn_server.logs(), re.M), timeout=5, message="the access-log line")
    assert len(re.findall(r'"GET /health\?probe=log-line"', churn_server.logs())) == 1
