"""The run logger prints one structured line per metric; the worker parses it back."""
import io
import json
import math
import time

import numpy as np
import pytest

from mlportal_runtime import METRIC_PREFIX, get_logger, parse_line, parse_metric_line
from mlportal_runtime.logger import RunLogger


def test_a_scalar_is_one_prefixed_json_line():
    stream = io.StringIO()
    RunLogger(stream).log("Accuracy", 0.93)
    (line,) = stream.getvalue().splitlines()
    assert line.startswith(METRIC_PREFIX)
    data = json.loads(line[len(METRIC_PREFIX):])
    assert data["name"] == "Accuracy" and data["value"] == 0.93 and data["step"] is None
    assert abs(data["time"] - time.time()) < 5


def test_a_series_point_carries_its_step():
    stream = io.StringIO()
    RunLogger(stream).log("loss", 0.5, step=3)
    assert parse_metric_line(stream.getvalue())["step"] == 3


def test_get_logger_writes_to_stdout_and_flushes(capfd):
    get_logger().log("DTree Accuracy", 0.91)
    out = capfd.readouterr().out
    assert parse_metric_line(out.splitlines()[-1])["value"] == 0.91


def test_numpy_scalars_and_strings_are_logged_as_plain_values():
    stream = io.StringIO()
    logger = RunLogger(stream)
    logger.log("n", np.int64(7))
    logger.log("acc", np.float32(0.5))
    logger.log("note", "best so far")
    values = [parse_metric_line(line)["value"] for line in stream.getvalue().splitlines()]
    assert values == [7, 0.5, "best so far"]
    assert type(values[0]) is int


def test_nan_and_infinities_are_logged_as_mlflow_logs_them_not_skipped(capsys):
    # MLflow's client logs a diverged loss; the portal stores it as MLflow does (tests/runs/test_ingest.py).
    stream = io.StringIO()
    logger = RunLogger(stream)
    logger.log("loss", float("nan"), step=7)
    logger.log("grad", np.float64("inf"))
    logger.log("floor", float("-inf"))
    logger.log_metrics({"a": float("nan"), "b": 1.0}, step=8)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and capsys.readouterr().err == ""
    values = [parse_metric_line(line)["value"] for line in lines[:3]]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]
    assert parse_metric_line(lines[0])["step"] == 7
    kind, points = parse_line(lines[3])
    assert kind == "metrics" and math.isnan(points[0]["value"]) and points[1]["value"] == 1.0


@pytest.mark.parametrize("name", ["", "x" * 201, None, 3])
def test_it_refuses_a_bad_name(name):
    with pytest.raises(ValueError):
        RunLogger(io.StringIO()).log(name, 1)


def test_it_refuses_a_value_that_is_not_a_number_or_string():
    with pytest.raises(TypeError):
        RunLogger(io.StringIO()).log("x", [1, 2])


def test_a_name_with_newlines_stays_on_one_line():
    stream = io.StringIO()
    RunLogger(stream).log("a\nb", 1)
    assert len(stream.getvalue().splitlines()) == 1
    assert parse_metric_line(stream.getvalue())["name"] == "a\nb"


def test_parse_accepts_bytes_and_a_trailing_newline():
    line = METRIC_PREFIX + json.dumps({"name": "a", "value": 1, "step": None, "time": 1.5}) + "\r\n"
    assert parse_metric_line(line.encode()) == {"name": "a", "value": 1, "step": None, "time": 1.5}


def test_parse_fills_a_missing_time_with_none():
    assert parse_metric_line(METRIC_PREFIX + '{"name": "a", "value": 2}')["time"] is None


@pytest.mark.parametrize(
    "line",
    [
        "plain output",
        "",
        METRIC_PREFIX,
        METRIC_PREFIX + "not json",
        METRIC_PREFIX + "[1, 2]",
        METRIC_PREFIX + '{"name": "a"}',
        METRIC_PREFIX + '{"name": "a", "value": 1, "step": NaN}',
        METRIC_PREFIX + '{"name": "a", "value": 1, "time": Infinity}',
        METRIC_PREFIX + '{"name": NaN, "value": 1}',
        METRIC_PREFIX + '{"name": "a", "value": true}',
        METRIC_PREFIX + '{"name": "a", "value": [1]}',
        METRIC_PREFIX + '{"name": "a", "value": {"b": 1}}',
        METRIC_PREFIX + '{"name": "a", "value": null}',
        METRIC_PREFIX + json.dumps({"name": "a", "value": "v" * 1001}),
        METRIC_PREFIX + json.dumps({"name": "x" * 201, "value": 1}),
        METRIC_PREFIX + '{"name": "", "value": 1}',
        METRIC_PREFIX + '{"name": 5, "value": 1}',
        METRIC_PREFIX + '{"name": "a", "value": 1, "step": 1.5}',
        METRIC_PREFIX + '{"name": "a", "value": 1, "step": "3"}',
        METRIC_PREFIX + '{"name": "a", "value": 1, "time": "now"}',
        METRIC_PREFIX + '{"name": "a", "value": 99999999999999999999999}',
        " " + METRIC_PREFIX + '{"name": "a", "value": 1}',
        METRIC_PREFIX + json.dumps({"name": "a", "value": 1, "pad": "p" * 100_000}),
        b"\xff\xfe" + METRIC_PREFIX.encode(),
    ],
)
def test_parse_returns_none_for_anything_not_a_well_formed_metric(line):
    assert parse_metric_line(line) is None


def test_what_the_logger_prints_always_parses():
    stream = io.StringIO()
    logger = RunLogger(stream)
    logger.log("x" * 200, -1.25e-7, step=0)
    logger.log("ünïcode ✓", "ok")
    parsed = [parse_metric_line(line) for line in stream.getvalue().splitlines()]
    assert parsed[0]["name"] == "x" * 200 and math.isclose(parsed[0]["value"], -1.25e-7)
    assert parsed[1]["name"] == "ünïcode ✓"
