"""The capture benchmark's report on made-up figures: the ratio lines make_bench collects."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import _common as common

_spec = importlib.util.spec_from_file_location("bench_capture", Path(__file__).resolve().parents[2] / "benchmarks" / "capture.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def load(rps: float, p50: float, requests: int) -> dict:
    return {"rps": rps, "p50": p50, "p99": p50 * 2, "requests": requests}


def test_the_report_says_the_ratio_per_connection_count_and_the_goal():
    figures = {"off": {1: load(400, 2.0, 4000), 16: load(1000, 15.0, 9000)},
               "capture": {1: load(380, 2.1, 3800), 16: load(850, 18.0, 8500)}}
    lines = bench.report(figures, [1, 16], captured=12300, expected=12300, dropped=0)
    ratios = dict(filter(None, (common.parse_ratio_line(line) for line in lines)))
    assert ratios["capture c=1"]["throughput_ratio"] == 0.95 and ratios["capture c=16"]["throughput_ratio"] == 0.85
    assert lines[0].startswith("rows captured and pulled: 12300 for 12300 requests") and lines[-1].endswith("missed")
    figures["capture"][16] = load(950, 16.0, 9500)
    assert bench.report(figures, [1, 16], captured=1, expected=1, dropped=0)[-1].endswith("met")


def test_the_report_leads_with_the_in_process_cost_and_gives_the_paired_ratio():
    figures = {"off": {16: load(100, 150.0, 900)}, "capture": {16: dict(load(92, 160.0, 850), paired_ratio=0.95)}}
    cpu = {"off": 0.006, "capture": 0.0063, "added_us": 300.0, "requests": 400}
    lines = bench.report(figures, [16], captured=850, expected=850, dropped=0, cpu=cpu)
    ratios = dict(filter(None, (common.parse_ratio_line(line) for line in lines)))
    assert ratios["capture in_process"] == {"throughput_ratio": 0.95, "added_us": 300.0}
    assert ratios["capture c=16"] == {"throughput_ratio": 0.92, "paired_ratio": 0.95, "p50_ratio": 1.07}  # p50 160 / 150
    assert lines[0].startswith("in process (App.handle, CPU time, 400 requests a side") and lines[-1].endswith("met")
