"""The serving benchmark's arithmetic and report, on made-up figures; and the texts it runs elsewhere."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cold_start
import serving


def load(rps: float, p50: float, p99: float) -> dict:
    return {"rps": rps, "p50": p50, "p90": p50, "p99": p99}


def result(ours: dict, theirs: dict, floor_ms: float = 0.5, **others: dict) -> dict:
    figures = {"floor": {"run_ms": floor_ms, "request_path_ms": 0.03},
               "ours": {"answer": "[1]", "load": ours}, "mlflow": {"answer": '{"predictions": [1]}', "load": theirs}}
    for peer, load in others.items():
        figures[peer] = {"answer": "[1]", "load": load}
    return figures


def test_overhead_is_median_latency_above_the_floor_at_one_connection_and_core_time_at_more():
    assert serving.overhead_ms(load(500, 0.8, 1.0), 1, 0.5) == pytest.approx(0.3)
    assert serving.overhead_ms(load(1000, 20.0, 30.0), 16, 0.5) == pytest.approx(0.5)


def test_ratios_put_ours_over_mlflows():
    figures = result({1: load(1200, 0.8, 1.0)}, {1: load(300, 3.5, 5.0)})

    values = serving.ratios(figures, 1)

    assert values["throughput_ratio"] == pytest.approx(4.0)
    assert values["p99_ratio"] == pytest.approx(0.2)
    assert values["overhead_ratio"] == pytest.approx(0.3 / 3.0)


def test_ratios_against_the_best_peer_take_each_figure_from_whichever_peer_is_best():
    figures = result({1: load(1200, 0.8, 1.0)}, {1: load(300, 3.5, 5.0)},
                     mlserver={1: load(400, 3.0, 8.0)}, bentoml={1: load(350, 2.0, 4.0)})

    values = serving.ratios(figures, 1, "best")

    assert values["throughput_ratio"] == pytest.approx(3.0)  # MLServer's 400 req/s
    assert values["p99_ratio"] == pytest.approx(0.25)  # BentoML's 4 ms
    assert values["overhead_ratio"] == pytest.approx(0.3 / 1.5)  # BentoML's 2.0 - 0.5 ms
    assert serving.ratios(figures, 1, "mlserver")["throughput_ratio"] == pytest.approx(3.0)


def test_goal_verdicts_say_which_goal_is_missed():
    verdicts = serving.goal_verdicts("light", {"throughput_ratio": 2.5, "p99_ratio": 0.2, "overhead_ratio": 0.1})

    assert verdicts[0] == "throughput_ratio=2.50 (goal >= 3.00): MISSED"
    assert verdicts[1].endswith(": met") and verdicts[2].endswith(": met")
    assert [v.split("=")[0] for v in serving.goal_verdicts("churn", {"throughput_ratio": 2, "p99_ratio": 1,
                                                                       "overhead_ratio": 0.1})] == [
        "throughput_ratio", "overhead_ratio"]
    best = serving.goal_verdicts("light", {"throughput_ratio": 2.5, "p99_ratio": 0.6, "overhead_ratio": 0.1}, "best")
    assert best == ["throughput_ratio=2.50 (goal >= 2.00): met", "p99_ratio=0.60 (goal <= 0.50): MISSED"]
    assert serving.goal_verdicts("churn", {"throughput_ratio": 1.4, "p99_ratio": 1, "overhead_ratio": 1}, "best") == [
        "throughput_ratio=1.40 (goal >= 1.50): MISSED"]


def test_report_ends_with_one_ratio_line_per_case_and_connection_count():
    loads = {1: load(1200, 0.8, 1.0), 16: load(1500, 10.0, 20.0)}
    theirs = {1: load(300, 3.5, 5.0), 16: load(400, 40.0, 120.0)}
    mlserver = {1: load(600, 1.6, 2.0), 16: load(500, 30.0, 60.0)}
    results = {"date": "2026-11-28", "server_cpu": 0, "load_cpu": 1, "seconds": 5, "repeats": 2,
               "mlflow_as_shipped": False, "loadavg": "0.10",
               "cases": {"light": result(loads, theirs, mlserver=mlserver),
                         "churn": result(loads, theirs, floor_ms=0.3, mlserver=mlserver)}}

    lines = serving.report(results, workers=2)

    assert lines[-12:] == [
        "light mlflow c=1 throughput_ratio=4.00 p99_ratio=0.20 overhead_ratio=0.10",
        "light mlflow c=16 throughput_ratio=3.75 p99_ratio=0.17 overhead_ratio=0.08",
        "light mlserver c=1 throughput_ratio=2.00 p99_ratio=0.50 overhead_ratio=0.27",
        "light mlserver c=16 throughput_ratio=3.00 p99_ratio=0.33 overhead_ratio=0.11",
        "light best c=1 throughput_ratio=2.00 p99_ratio=0.50 overhead_ratio=0.27",
        "light best c=16 throughput_ratio=3.00 p99_ratio=0.33 overhead_ratio=0.11",
        "churn mlflow c=1 throughput_ratio=4.00 p99_ratio=0.20 overhead_ratio=0.16",
        "churn mlflow c=16 throughput_ratio=3.75 p99_ratio=0.17 overhead_ratio=0.17",
        "churn mlserver c=1 throughput_ratio=2.00 p99_ratio=0.50 overhead_ratio=0.38",
        "churn mlserver c=16 throughput_ratio=3.00 p99_ratio=0.33 overhead_ratio=0.22",
        "churn best c=1 throughput_ratio=2.00 p99_ratio=0.50 overhead_ratio=0.38",
        "churn best c=16 throughput_ratio=3.00 p99_ratio=0.33 overhead_ratio=0.22",
    ]
    assert any("light c=16 vs MLflow:" in line and "met" in line for line in lines)
    assert any("light c=1 vs best peer:" in line for line in lines)
    assert any(line.startswith("light  mlserver        16") for line in lines)


def test_report_shows_our_server_through_the_published_port_beside_its_own_address():
    own = {1: load(1200, 0.8, 1.0), 16: load(1500, 10.0, 20.0)}
    published = {1: load(1000, 1.0, 2.0), 16: load(1400, 11.0, 30.0)}
    theirs = {1: load(300, 3.5, 5.0), 16: load(400, 40.0, 120.0)}
    figures = result(own, theirs)
    figures["ours_published"] = {"answer": "[1]", "load": published}
    results = {"date": "2026-12-02", "server_cpu": 0, "load_cpu": 1, "seconds": 5, "repeats": 2,
               "mlflow_as_shipped": False, "loadavg": "0.10", "cases": {"light": figures}}

    lines = serving.report(results, workers=2)

    assert any(line.startswith("light  ours_published   1     1000") for line in lines)
    assert "light ours_published best c=1 throughput_ratio=3.33 p99_ratio=0.40 overhead_ratio=0.17" in lines
    assert any(line.startswith("  light c=1 vs MLflow (through the published port): throughput_ratio=3.33")
               and "p99_ratio=0.40 (goal <= 0.33): MISSED" in line for line in lines)
    assert any(line.startswith("  light c=1 vs MLflow: throughput_ratio=4.00") and "p99_ratio=0.20 (goal <= 0.33): met"
               in line for line in lines)


@pytest.mark.parametrize(("ours", "theirs", "same"), [
    ("[1]", '{"predictions": [1]}', True),
    ('"0"', '{"predictions": "\\"0\\""}', True),
    ('"0"', '{"predictions": "\\"1\\""}', False),
    ("[1]", '{"model_name": "light", "outputs": [{"name": "predict", "datatype": "INT64", "data": [1]}]}', True),
    ('"0"', '{"outputs": [{"name": "predict", "datatype": "BYTES", "data": ["0"]}]}', True),
    ('"0"', '"0"', True),
    ("[1]", "[2]", False),
])
def test_same_answer_reads_each_peers_predictions(ours, theirs, same):
    assert serving.same_answer(ours, theirs) is same


def test_the_peer_side_texts_are_valid_python():
    compile(serving.MLFLOW_WRAPPER, "wrapper.py", "exec")
    compile(serving.MLFLOW_SAVE, "save.py", "exec")
    compile(serving.BENTO_SERVICE, "service.py", "exec")


def test_the_mlserver_request_has_one_typed_tensor_per_column_for_the_pandas_codec():
    body = json.loads(serving.mlserver_request({"age": 30, "charge": 12.5, "gender": "F"}))

    assert body["parameters"] == {"content_type": "pd"}
    assert body["inputs"] == [
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [30]},
        {"name": "charge", "shape": [1], "datatype": "FP64", "data": [12.5]},
        {"name": "gender", "shape": [1], "datatype": "BYTES", "data": ["F"], "parameters": {"content_type": "str"}},
    ]


def test_every_peer_is_pinned_and_lives_in_its_own_venv():
    assert set(serving.PEERS) == {"mlflow", "mlserver", "bentoml"}
    for peer, packages in serving.PEER_PACKAGES.items():
        assert "==" in packages[0]
        assert serving.peer_python(peer).parent.parent.name == peer
        assert ".venv" not in serving.peer_python(peer).parts


def test_nodelay_patch_sets_tcp_nodelay_on_a_socket_with_proto_zero():
    probe = (
        "import socket, asyncio.base_events as b\n"
        f"exec({serving.NODELAY_PATCH!r})\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
        "b._set_nodelay(s)\n"
        "print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != "0"


def test_cold_start_probe_times_the_two_imports():
    assert "import pandas, sklearn" in cold_start.IMPORT_PROBE
    compile(cold_start.IMPORT_PROBE, "probe", "exec")


def test_our_overhead_is_taken_above_the_floor_of_our_own_interpreter():
    figures = result({1: load(1200, 0.8, 1.0)}, {1: load(300, 3.5, 5.0)}, floor_ms=0.5)
    figures["ours"]["floor_ms"] = 0.3  # the container's Python runs run() faster than this venv's

    values = serving.ratios(figures, 1)

    assert values["overhead_ratio"] == pytest.approx(0.5 / 3.0)  # (0.8 - 0.3) / (3.5 - 0.5)


def test_the_floor_script_runs_on_an_interpreter_without_this_file(tmp_path):
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return len(data)\n")
    (tmp_path / "service_schema.json").write_text(json.dumps(
        {"input": {"data": {"internal": "", "swagger": {"type": "array", "items": {"type": "integer"}},
                            "type": 0, "example": [1]}}}))
    done = subprocess.run([sys.executable, "-c", serving.floor_script(), str(tmp_path)], input=b'{"data": [1, 2]}',
                          capture_output=True, timeout=120, cwd="/", env={"PYTHONPATH": str(serving.common.REPO)})

    assert done.returncode == 0, done.stderr.decode()
    figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert figures["run_ms"] > 0 and figures["run_p99_ms"] >= figures["run_p50_ms"] > 0
