"""benchmarks/charts.py and benchmarks/ingestion.py import, and their small helpers work (the figures
themselves come from running the scripts, never from a timed test)."""
from __future__ import annotations

import charts
import ingestion


def test_the_peak_memory_sampler_sees_an_allocation():
    with ingestion.PeakMemory() as memory:
        blob = bytearray(64 * 1024 * 1024)
        import time

        time.sleep(0.3)
    assert memory.peak - memory.base >= 32 * 1024 and len(blob)


def test_the_runtime_script_and_the_client_script_compile():
    compile(ingestion.SCRIPT, "log_points.py", "exec")
    compile(ingestion.CLIENT, "client.py", "exec")
    assert charts.RENDER_GOAL_MS == 1000 and charts.BYTES_GOAL == 200 * 1024
