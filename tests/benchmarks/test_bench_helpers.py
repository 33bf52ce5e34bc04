"""The helpers the benchmarks share: wrk's script and output, ratio lines, requirement pins."""
from __future__ import annotations

import http.server
import json
import shutil
import threading

import pytest

import _common as common

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:5001/score
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.38ms    4.10ms  22.77ms   70.00%
  7785 requests in 5.00s, 1.05MB read
Requests/sec:   1557.00
Transfer/sec:    214.45KB
WRKRESULT requests=7785 duration_us=5000000 errors=0 non2xx=3 p50_us=8380 p90_us=16570 p99_us=22770 mean_us=8401.5 max_us=30100
"""


def test_parse_wrk_reads_the_figures_of_the_result_line():
    figures = common.parse_wrk(WRK_OUTPUT)

    assert figures["requests"] == 7785
    assert figures["rps"] == pytest.approx(1557.0)
    assert figures["non2xx"] == 3 and figures["errors"] == 0
    assert (figures["p50"], figures["p90"], figures["p99"]) == pytest.approx((8.38, 16.57, 22.77))
    assert figures["mean"] == pytest.approx(8.4015)


def test_parse_wrk_refuses_output_without_the_result_line():
    with pytest.raises(ValueError, match="WRKRESULT"):
        common.parse_wrk("Requests/sec: 10\n")


@pytest.mark.parametrize("text", ['{"a": 1}', "x]]y", "a]=]b]]", "\nleading newline"])
def test_lua_string_keeps_any_text_intact(text):
    literal = common.lua_string(text)

    opening = literal[: literal.index("[", 1) + 1]
    closing = opening.replace("[", "]")
    body = literal[len(opening):-len(closing)]
    assert body.removeprefix("\n") == text if text.startswith("\n") else body == text
    assert closing not in body


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []
    keys: list[str | None] = []

    def do_POST(self):  # noqa: N802 - the handler API's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _EchoHandler.bodies.append(body)
        _EchoHandler.keys.append(self.headers.get("Authorization"))
        answer = b'{"ok": true}'
        self.send_response(200 if self.headers["Content-Type"] == "application/json" else 415)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def wrk():
    """wrk is a real part: CI installs it, and its strict flag fails these tests without it."""
    if shutil.which("wrk") is None:
        from tests.real_parts import missing_part

        missing_part("wrk", "the benchmarks' load generator is not installed")


def test_wrk_script_posts_the_json_body_and_run_wrk_reads_its_figures(wrk):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = json.dumps({"data": [{"name": "it's ]] fine"}]}).encode()
    try:
        figures = common.run_wrk(url=f"http://127.0.0.1:{server.server_port}/score",
                                 script=common.wrk_script(body), connections=1, seconds=1, cpu=None)
    finally:
        server.shutdown()
        server.server_close()

    assert figures["requests"] > 0 and figures["non2xx"] == 0
    assert _EchoHandler.bodies and set(_EchoHandler.bodies) == {body}


def test_ratio_line_round_trips_through_the_parser():
    line = common.ratio_line("light c=16", throughput_ratio=3.4, p99_ratio=0.2104, overhead_ratio=0.12)

    assert line == "light c=16 throughput_ratio=3.40 p99_ratio=0.21 overhead_ratio=0.12"
    assert common.parse_ratio_line(line) == ("light c=16", {"throughput_ratio": 3.4, "p99_ratio": 0.21,
                                                            "overhead_ratio": 0.12})
    assert common.parse_ratio_line("cold_start ratio=1.32") == ("cold_start", {"ratio": 1.32})


@pytest.mark.parametrize("line", [
    "  light c=1: throughput_ratio=3.60 (goal >= 3.00): met; p99_ratio=0.04 (goal <= 0.33): met",
    "light  ours       1     1339     0.73     0.83     1.04        0.406",
    "rebuild, only score.py changed: 1.9 s (goal <= 5 s: met)",
    "",
])
def test_parse_ratio_line_ignores_tables_and_goal_lines(line):
    assert common.parse_ratio_line(line) is None


def test_ratio_never_divides_by_zero():
    assert common.ratio(2.0, 4.0) == 0.5
    assert common.ratio(1.0, 0.0) == float("inf")
    assert common.fmt_ratio(float("inf")) == "inf"


def test_pinned_requirements_name_this_venvs_versions():
    import sklearn

    pins = common.pinned_requirements()

    assert f"scikit-learn=={sklearn.__version__}" in pins
    assert [p.split("==")[0] for p in pins] == ["numpy", "pandas", "scikit-learn"]


def test_image_tag_follows_the_app_files(tmp_path):
    (tmp_path / "score.py").write_text("def run(x):\n    return x\n")
    first = common.image_tag("mlportal-bench-x", tmp_path)
    (tmp_path / "score.py").write_text("def run(x):\n    return [x]\n")

    assert first.startswith("mlportal-bench-x:")
    assert common.image_tag("mlportal-bench-x", tmp_path) != first


def test_wrk_script_sends_the_headers_it_is_given(wrk):
    """Seen in the gateway benchmark: a script with headers (the portal's service key) did not
    load in wrk (``wrk.headers[[[Authorization]]]`` is a Lua syntax error), so wrk sent plain
    GETs without the key and every answer was a non-2xx."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _EchoHandler.keys.clear()
    body = b'{"data": [1]}'
    try:
        figures = common.run_wrk(url=f"http://127.0.0.1:{server.server_port}/score",
                                 script=common.wrk_script(body, {"Authorization": "Bearer k]]ey"}),
                                 connections=1, seconds=1, cpu=None)
    finally:
        server.shutdown()
        server.server_close()

    assert figures["requests"] > 0 and figures["non2xx"] == 0
    assert _EchoHandler.keys and set(_EchoHandler.keys) == {"Bearer k]]ey"}
