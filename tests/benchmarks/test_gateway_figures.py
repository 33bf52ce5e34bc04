"""The gateway benchmark's arithmetic and report on made-up figures, and its nginx configuration."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import _common as common

# benchmarks/gateway.py, under another module name: "gateway" is the portal's gateway package.
_spec = importlib.util.spec_from_file_location("bench_gateway", Path(__file__).resolve().parents[2] / "benchmarks" / "gateway.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def load(rps: float, p50: float) -> dict:
    return {"rps": rps, "p50": p50, "p90": p50, "p99": p50 * 2}


FIGURES = {"container": {1: load(180, 5.0), 16: load(160, 90.0)},
           "portal": {1: load(170, 5.6), 16: load(150, 95.0)},
           "nginx": {1: load(175, 5.4), 16: load(155, 93.0)}}


def test_ratios_are_added_p50_at_one_connection_and_throughput_against_the_container():
    values = bench.ratios(FIGURES)
    assert values[1]["added_p50_ms"] == pytest.approx(0.6) and values[1]["nginx_added_p50_ms"] == pytest.approx(0.4)
    assert values[16]["throughput_ratio"] == pytest.approx(150 / 160)
    assert values[16]["nginx_throughput_ratio"] == pytest.approx(155 / 160)


def test_the_report_prints_ours_beside_nginx_and_says_which_goals_are_met():
    results = {"date": "2026-12-01", "server_cpu": 0, "load_cpu": 1, "repeats": 3, "seconds": 3, "loadavg": "1.0",
               "cases": {"churn": {"load": FIGURES, "ratios": bench.ratios(FIGURES)}}}
    lines = bench.report(results)
    parsed = [common.parse_ratio_line(line) for line in lines]
    assert ("gateway churn c=1", {"added_p50_ms": 0.6, "nginx_added_p50_ms": 0.4}) in parsed
    assert ("gateway churn c=16", {"throughput_ratio": 0.94, "nginx_throughput_ratio": 0.97}) in parsed
    assert lines[-1] == "# churn: added p50 0.60 ms (goal <= 1.0: met), throughput 0.94x (goal >= 0.85: met)"


@pytest.mark.skipif(not shutil.which("nginx") and not __import__("os").path.exists("/usr/sbin/nginx"), reason="no nginx")
def test_the_nginx_configuration_is_valid(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(bench.NGINX_CONF.format(work=tmp_path, host="127.0.0.1", port=9, listen=common.free_port()))
    done = subprocess.run([bench.NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
