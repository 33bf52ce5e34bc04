"""Run every benchmark under benchmarks/ one after another (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--only serving,cold_start]

Runs serving.py, cold_start.py, builds.py and runs_scale.py in that order, then any other
``benchmarks/*.py`` (files starting with ``_`` are helpers). A listed benchmark that is not
there yet is skipped with a note. Each one's output is shown as it runs; at the end comes a
summary: how each ended and how long it took, then every ratio line they printed.

Exits 1 when a benchmark crashed (a missed goal is a figure, not a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

HERE = Path(__file__).resolve().parent
ORDER = ("serving", "cold_start", "builds", "runs_scale")
TIMEOUT_S = 15 * 60  # per benchmark: a hung one must not hold `make bench` forever


def discover(directory: Path = HERE) -> tuple[list[Path], list[str]]:
    """Returns (benchmark scripts in run order, names from ORDER that are missing)."""
    present = {p.stem: p for p in directory.glob("*.py") if not p.name.startswith("_") and p.stem != "run_all"}
    scripts = [present.pop(name) for name in ORDER if name in present]
    missing = [name for name in ORDER if not (directory / f"{name}.py").exists()]
    scripts += [present[name] for name in sorted(present)]
    return scripts, missing


def _stop(process: subprocess.Popen) -> None:
    """Stops a benchmark's process group: SIGINT first, so its finally blocks remove its
    containers and servers, SIGKILL when it has not ended 30 s later."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run_one(script: Path, *, timeout_s: float = TIMEOUT_S) -> tuple[int, list[str], float]:
    """Runs one benchmark, echoing its stdout; returns (exit code, stdout lines, seconds).
    A benchmark still running after ``timeout_s`` is stopped and gets code 124."""
    started = time.monotonic()
    # SIGINT back to its default in the child: the stop relies on it, and a run_all started in the
    # background of a script (SIGINT ignored there) would hand the ignore down to every benchmark.
    process = subprocess.Popen([sys.executable, str(script)], cwd=common.REPO, stdout=subprocess.PIPE,
                               text=True, bufsize=1, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(timeout_s, _stop, args=(process,))
    watchdog.daemon = True
    watchdog.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
        process.wait()
    finally:
        watchdog.cancel()
        _stop(process)  # only does something when we leave early (Ctrl+C here)
    seconds = time.monotonic() - started
    code = 124 if process.returncode != 0 and seconds >= timeout_s else process.returncode
    return code, lines, seconds


def summary(results: list[tuple[str, int, list[str], float]], missing: list[str]) -> list[str]:
    """Returns the closing lines: one per benchmark and note per missing one, then the ratio lines."""
    out = ["", "== summary =="]
    for name, code, _, seconds in results:
        how = "ok" if code == 0 else ("timed out" if code == 124 else f"FAILED (exit {code})")
        out.append(f"{name}: {how} in {seconds:.0f} s")
    out += [f"{name}: not there yet (benchmarks/{name}.py); skipped" for name in missing]
    for _, _, lines, _ in results:
        out += [line for line in lines if common.parse_ratio_line(line)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmark names to run (default: all)")
    args = parser.parse_args(argv)
    scripts, missing = discover()
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        scripts = [s for s in scripts if s.stem in wanted]
        missing = [m for m in missing if m in wanted]
    for name in missing:
        print(f"note: benchmarks/{name}.py is not there yet; skipped", flush=True)
    results = []
    started = time.monotonic()
    for script in scripts:
        print(f"\n== {script.stem} ==", flush=True)
        code, lines, seconds = run_one(script)
        results.append((script.stem, code, lines, seconds))
    print("\n".join(summary(results, missing)))
    print(f"all benchmarks: {time.monotonic() - started:.0f} s")
    return 1 if any(code != 0 for _, code, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
