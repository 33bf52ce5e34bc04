"""run_all: which benchmarks it finds, how it runs one, what its summary says."""
from __future__ import annotations

import run_all


def test_it_runs_the_known_benchmarks_in_order_then_the_others_and_notes_the_missing(tmp_path):
    for name in ("cold_start", "serving", "_common", "run_all", "zeta", "alpha"):
        (tmp_path / f"{name}.py").write_text("")

    scripts, missing = run_all.discover(tmp_path)

    assert [s.stem for s in scripts] == ["serving", "cold_start", "alpha", "zeta"]
    assert missing == ["builds", "runs_scale"]


def test_the_real_folder_holds_serving_and_cold_start():
    scripts, _ = run_all.discover()

    assert [s.stem for s in scripts][:2] == ["serving", "cold_start"]


def test_run_one_echoes_and_returns_the_output_and_exit_code(tmp_path, capsys):
    script = tmp_path / "fake.py"
    script.write_text("print('figure 1')\nprint('fake c=1 throughput_ratio=2.00')\nraise SystemExit(3)\n")

    code, lines, seconds = run_all.run_one(script, timeout_s=60)

    assert code == 3
    assert lines == ["figure 1", "fake c=1 throughput_ratio=2.00"]
    assert "figure 1" in capsys.readouterr().out
    assert seconds < 60


def test_run_one_stops_a_benchmark_past_its_time(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")

    # 5 s, not 1: on a loaded CI machine the interpreter alone took over a second to print 'started'.
    code, lines, seconds = run_all.run_one(script, timeout_s=5)

    assert code == 124
    assert lines == ["started"]
    assert seconds < 30


def test_summary_lists_each_benchmark_the_missing_ones_and_the_ratio_lines():
    results = [
        ("serving", 0, ["table", "light c=1 throughput_ratio=3.60 p99_ratio=0.04 overhead_ratio=0.18"], 120.0),
        ("cold_start", 1, ["cold_start ratio=1.40"], 20.0),
    ]

    lines = run_all.summary(results, ["runs_scale"])

    assert "serving: ok in 120 s" in lines
    assert "cold_start: FAILED (exit 1) in 20 s" in lines
    assert "runs_scale: not there yet (benchmarks/runs_scale.py); skipped" in lines
    assert lines[-2:] == ["light c=1 throughput_ratio=3.60 p99_ratio=0.04 overhead_ratio=0.18",
                          "cold_start ratio=1.40"]
