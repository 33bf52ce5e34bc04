"""Cold-start benchmark: ``docker run`` of a service image to its first successful score.

    .venv/bin/python benchmarks/cold_start.py [--runs 3] [--case churn]

The churn template's service image (trained and schema'd as in the serving benchmark) is
started with ``compute.containers.start_service_container`` as the portal starts a replica
(its default 1 CPU and 1 GiB), and a single-record POST /score is sent every 10 ms until one
answers 200. Beside it, the time Python takes to import pandas and scikit-learn in a fresh
container of the same image with the same CPU limit: the floor any Python scoring service
pays. One untimed start of each warms the page cache; then the two alternate, and the figures
are medians of ``--runs``.

Ends with ``cold_start ratio=<first score / import>`` (goal: at most 1.5).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

GOAL_RATIO = 1.5
IMPORT_PROBE = "import time;t=time.time();import pandas, sklearn;print(time.time()-t)"
POLL_SECONDS = 0.01


def import_seconds(image: str, *, cpus: float) -> float:
    """Returns what ``import pandas, sklearn`` takes in a fresh container of ``image``."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--label", f"mlportal.kind={common.BENCH_KIND}", "--cpus", f"{cpus:g}",
         "--network", "none", image, "python", "-c", IMPORT_PROBE],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"the import probe failed in {image}: {done.stderr.strip()[-300:]}")
    return float(done.stdout.strip().splitlines()[-1])


def first_score(host: str, port: int, body: bytes, *, timeout_s: float) -> float:
    """Returns the monotonic time of the first 200 answer to POST /score; RuntimeError past the timeout."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, answer = common.post_json(host, port, "/score", body, timeout=5)
        except (OSError, http.client.HTTPException) as exc:  # not listening yet, or the proxy's empty reply
            last = type(exc).__name__
        else:
            if status == 200:
                return time.monotonic()
            last = f"{status} {answer[:120]!r}"
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"no successful score within {timeout_s:g} s (last: {last})")


def cold_start(image: str, body: bytes, *, index: int, cpus: float) -> dict:
    """Starts one container and returns its timings in seconds: ``started`` (the engine's
    create + start returned) and ``first_score`` (from before the start call)."""
    name = f"mlportal-bench-cold-{index}-{int(time.time() * 1000) % 10**8}"
    began = time.monotonic()
    with common.bench_container(image=image, name=name, cpus=cpus) as started:
        started_at = time.monotonic()
        scored_at = first_score(started["host"], started["port"], body, timeout_s=120)
    return {"started": started_at - began, "first_score": scored_at - began}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed starts (the median is reported)")
    parser.add_argument("--case", default="churn", choices=sorted(common.PREPARE))
    parser.add_argument("--cpus", type=float, default=1.0, help="CPU limit of the service container and the probe")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    common.log("preparing the environment image (built once per requirement set)")
    env_image = common.env_image()
    work = Path(tempfile.mkdtemp(prefix="mlportal-bench-cold-"))
    tag = None
    try:
        common.log(f"{args.case}: preparing the model and app files")
        app, input_name, record = common.PREPARE[args.case](work)
        body = json.dumps({input_name: [record]}).encode()
        tag = common.image_tag(f"mlportal-bench-cold-{args.case}", app)
        common.log(f"{args.case}: building the service image {tag}")
        common.build_app_image(tag=tag, app_dir=app, env=env_image)

        import_seconds(tag, cpus=args.cpus)  # warm the page cache, untimed
        cold_start(tag, body, index=0, cpus=args.cpus)
        imports, starts = [], []
        for index in range(1, args.runs + 1):  # in turn, so both meet the same background load
            imports.append(import_seconds(tag, cpus=args.cpus))
            starts.append(cold_start(tag, body, index=index, cpus=args.cpus))
    finally:
        if tag:
            common.remove_image(tag)
        shutil.rmtree(work, ignore_errors=True)

    import_s = common.median(imports)
    started_s = common.median([s["started"] for s in starts])
    first_s = common.median([s["first_score"] for s in starts])
    value = common.ratio(first_s, import_s)
    results = {"date": time.strftime("%Y-%m-%d"), "case": args.case, "cpus": args.cpus, "loadavg": common.loadavg(),
               "import_s": imports, "starts": starts, "ratio": value}
    if args.json:
        common.dump(args.json, results)
    print(f"cold start {results['date']}: {args.case} service image, {args.cpus:g} CPU, median of {args.runs}; "
          f"load average at start {results['loadavg']}")
    print(f"  import pandas + sklearn in the image: {import_s * 1000:.0f} ms "
          f"({', '.join(f'{s * 1000:.0f}' for s in imports)})")
    print(f"  engine create + start returned:       {started_s * 1000:.0f} ms")
    firsts = ", ".join(f"{s['first_score'] * 1000:.0f}" for s in starts)
    print(f"  docker run to first successful score: {first_s * 1000:.0f} ms ({firsts})")
    print(f"  goal: ratio <= {GOAL_RATIO:g}: {'met' if value <= GOAL_RATIO else 'MISSED'}")
    print(common.ratio_line("cold_start", ratio=value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
