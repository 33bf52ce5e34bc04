"""What data capture costs a scoring service (issue 16): throughput at 100 % capture against capture off.

    .venv/bin/python benchmarks/capture.py [--seconds 3] [--repeats 4] [--workers 2] [--connections 1,16]

The churn template (trained here with its own script; its score.py also collects inputs and
predictions with ModelDataCollector) is built into a service image once and started twice, side by
side, pinned to the same core: one container with capture off, one with ``both`` at 100 % and an
internal key. While the second is under load a puller drains its spool over the published port
every second, acknowledging what it took, as the portal's worker does (so the spool never fills
and the cost of being pulled is counted too). wrk (one thread, keep-alive, one churn record per
request) runs on the other core and goes round the two, ``--repeats`` runs of ``--seconds`` each
per connection count, the order swapped every repeat; each figure is its best run, and
``paired_ratio`` is the median of the repeats' own ratios (a run of each side back to back, so a
load that changes between repeats moves both). Ends with one ratio line per connection count:
``capture c=16 throughput_ratio=0.95 paired_ratio=0.97 p50_ratio=1.03`` (throughput with capture
over without; the goal is ≥ 0.9 for the best-of ratio).

Before the containers, the same churn app is served in this machine's venv by the scoring server's
own request handler (``App.handle``, no HTTP), requests alternating one by one between capture off
and at 100 %, each timed in the thread's CPU time (what other processes take does not count):
``capture in_process throughput_ratio=… added_us=…`` is the per-request CPU cost of capture (the
median of the pairs' differences), the figure that holds under load when the wrk figures do not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

GOAL = 0.9
INTERNAL_KEY = "bench-internal-key"


class Puller(threading.Thread):
    """Drains a replica's spool every second (pull + ack), counting the rows it took."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.rows = 0
        self.dropped = 0
        self.errors = 0
        self.stopping = threading.Event()

    def pull(self, ack):
        import http.client

        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("POST", "/_mlportal/capture", body=json.dumps({"ack": ack, "limit": 5000}),
                               headers={"Authorization": f"Bearer {INTERNAL_KEY}", "Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"the pull answered {response.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            connection.close()

    def drain(self) -> None:
        ack = None
        while True:
            answer = self.pull(ack)
            self.dropped = answer["dropped"]
            if not answer["rows"]:
                return
            self.rows += len(answer["rows"])
            ack = answer["rows"][-1]["seq"]

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.drain()
            except (OSError, RuntimeError, ValueError) as exc:  # a busy server: the next second tries again
                self.errors += 1
                common.log(f"pull failed ({exc}); trying again")


IN_PROCESS = """
import json, os, sys, tempfile, time, argparse
app_dir, body, seconds = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
os.chdir(app_dir)
sys.path.insert(0, app_dir)
from mlportal_runtime import capture, server
config = server.Config(argparse.Namespace(app_dir=app_dir, host="127.0.0.1", port=0, workers=1,
                                          score_file=server.SCORE_FILE, schema_file=server.SCHEMA_FILE))
app = server.App(config, server.load_app_schema(config), b"", server.Stats(1), 0)
app.load_module()
app.ready = True
folder = tempfile.mkdtemp(prefix="mlportal-bench-spool-")
spools = {}
for name, mode in (("off", "off"), ("capture", "both")):
    spools[name] = capture.Spool(path=os.path.join(folder, name + ".sqlite3"), max_rows=100000)
    spools[name].create({"mode": mode, "percent": 100.0})
headers = {"content-type": "application/json"}
def serve(name):
    app.spool = spools[name]
    request = server.Request("POST", "/score", "HTTP/1.1", headers, body)
    request.request_id = capture.request_id_from(None)
    start = time.thread_time()
    status = app.handle(request)[0]
    spent = time.thread_time() - start
    assert status == 200, status
    return spent
for _ in range(100):
    serve("off"), serve("capture")
times = {"off": [], "capture": []}
deadline = time.thread_time() + 2 * seconds
i = 0
while time.thread_time() < deadline or i < 200:
    for name in (("off", "capture") if i % 2 == 0 else ("capture", "off")):
        times[name].append(serve(name))
    i += 1
    if i % 500 == 0:
        spools["capture"].pull(10**12, None, 1)  # keep the spool small, as the portal's pulls do
print(json.dumps(times))
"""


def in_process(app: Path, body: bytes, *, seconds: float, cpu: int) -> dict:
    """Runs IN_PROCESS in a child pinned to ``cpu``: requests alternate between capture off and on,
    one by one, each timed in the thread's CPU time, so a load that comes and goes meets both sides
    alike. Returns the median CPU seconds per request of each side, ``added_us`` (the median of the
    pairs' differences) and the requests per side."""
    import subprocess

    child = subprocess.run([sys.executable, "-c", IN_PROCESS, str(app), body.decode(), str(seconds)],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(common.REPO)},
                           preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    if child.returncode != 0:
        raise RuntimeError(f"the in-process measurement failed:\n{child.stderr[-2000:]}")
    times = json.loads(child.stdout.strip().splitlines()[-1])
    off, on = common.median(times["off"]), common.median(times["capture"])
    added = common.median([b - a for a, b in zip(times["off"], times["capture"])])
    return {"off": off, "capture": on, "added_us": added * 1e6, "requests": len(times["off"])}


def report(figures: dict[str, dict[int, dict]], connections: list[int], *, captured: int, expected: int, dropped: int,
           cpu: dict | None = None) -> list[str]:
    """The lines the benchmark ends with: the in-process CPU cost (when measured), rows pulled,
    figures per connection count, one ratio line each (capture over off), and whether the goal was met."""
    lines = []
    if cpu is not None:
        lines.append(f"in process (App.handle, CPU time, {cpu['requests']} requests a side, alternating): median capture off "
                     f"{cpu['off'] * 1e6:.0f} us per request, capture both 100 % {cpu['capture'] * 1e6:.0f} us, "
                     f"capture adds {cpu['added_us']:.0f} us (median of the pairs)")
        lines.append(common.ratio_line("capture in_process",
                                       throughput_ratio=common.ratio(cpu["off"], cpu["off"] + cpu["added_us"] / 1e6),
                                       added_us=cpu["added_us"]))
    lines.append(f"rows captured and pulled: {captured} for {expected} requests wrk counted at 100 % (wrk does not count the "
                 f"requests still in flight when a run ends; they are captured too; dropped by the spool: {dropped})")
    for c in connections:
        off, on = figures["off"][c], figures["capture"][c]
        lines.append(f"c={c}: capture off {off['rps']:.0f} req/s (p50 {off['p50']:.2f} ms, p99 {off['p99']:.2f} ms); "
                     f"capture both 100 % {on['rps']:.0f} req/s (p50 {on['p50']:.2f} ms, p99 {on['p99']:.2f} ms)")
    ok = True
    for c in connections:
        value = common.ratio(figures["capture"][c]["rps"], figures["off"][c]["rps"])
        ok &= value >= GOAL
        paired = {"paired_ratio": figures["capture"][c]["paired_ratio"]} if "paired_ratio" in figures["capture"][c] else {}
        lines.append(common.ratio_line(f"capture c={c}", throughput_ratio=value, **paired,
                                       p50_ratio=common.ratio(figures["capture"][c]["p50"], figures["off"][c]["p50"])))
    lines.append(f"goal throughput_ratio >= {GOAL}: {'met' if ok else 'missed'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--in-process-seconds", type=float, default=2.0,
                        help="CPU seconds per side of the in-process measurement (0: skip it)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    server_cpu, load_cpu = common.server_and_load_cpus()
    common.log(f"load average before: {common.loadavg()}")
    with tempfile.TemporaryDirectory(prefix="mlportal-bench-capture-") as root:
        app, input_name, record = common.prepare_churn(Path(root))
        body = json.dumps({input_name: [record]}).encode()
        cpu = None
        if args.in_process_seconds > 0:
            common.log("timing App.handle in process, capture off and on in turn")
            cpu = in_process(app, body, seconds=args.in_process_seconds, cpu=server_cpu)
            common.log(f"in process: off {cpu['off'] * 1e6:.0f} us, capture {cpu['capture'] * 1e6:.0f} us per request")
        env_image = common.env_image()
        tag = common.image_tag("mlportal-bench-capture", app)
        common.log(f"building the service image {tag}")
        common.build_app_image(tag=tag, app_dir=app, env=env_image)
        base_env = {"MLPORTAL_WORKERS": str(args.workers), "MLPORTAL_SERVICE_NAME": "churn",
                    "MLPORTAL_INTERNAL_KEY": INTERNAL_KEY, "MLPORTAL_MODEL_VERSION": "model.pkl:1"}
        figures: dict[str, dict[int, dict]] = {"off": {}, "capture": {}}
        try:
            from compute.containers import wait_ready

            with common.bench_container(image=tag, name=f"mlportal-bench-capture-off-{os.getpid()}", cpu=server_cpu,
                                        env={**base_env, "MLPORTAL_CAPTURE_MODE": "off"}) as off, \
                 common.bench_container(image=tag, name=f"mlportal-bench-capture-on-{os.getpid()}", cpu=server_cpu,
                                        env={**base_env, "MLPORTAL_CAPTURE_MODE": "both", "MLPORTAL_CAPTURE_PERCENT": "100"}) as on:
                for started in (off, on):
                    wait_ready(host=started["host"], port=started["port"], timeout_s=120, container_id=started["id"])
                puller = Puller(on["host"], on["port"])
                urls = {"off": f"http://{off['host']}:{off['port']}/score", "capture": f"http://{on['host']}:{on['port']}/score"}
                script = common.wrk_script(body)
                for name, url in urls.items():  # warm up both
                    common.run_wrk(url=url, script=script, connections=4, seconds=1, cpu=load_cpu)
                puller.drain()
                puller.rows = 0
                puller.start()
                for c in connections:
                    runs: dict[str, list[dict]] = {"off": [], "capture": []}
                    for repeat in range(args.repeats):
                        for name in (("off", "capture") if repeat % 2 == 0 else ("capture", "off")):
                            result = common.run_wrk(url=urls[name], script=script, connections=c, seconds=args.seconds, cpu=load_cpu)
                            runs[name].append(result)
                            common.log(f"c={c} {name}: {result['rps']:.0f} req/s p50 {result['p50']:.2f} ms")
                    for name in runs:
                        best = max(runs[name], key=lambda r: r["rps"])
                        figures[name][c] = {"rps": best["rps"], "p50": min(r["p50"] for r in runs[name]),
                                            "p99": min(r["p99"] for r in runs[name]), "requests": sum(r["requests"] for r in runs[name])}
                    figures["capture"][c]["paired_ratio"] = common.median(
                        [common.ratio(on["rps"], off["rps"]) for off, on in zip(runs["off"], runs["capture"])])
                puller.stopping.set()
                puller.join(timeout=15)
                puller.drain()
                captured, dropped = puller.rows, puller.dropped
        finally:
            common.remove_image(tag)
    common.log(f"load average after: {common.loadavg()}")
    expected = sum(figures["capture"][c]["requests"] for c in connections)
    for line in report(figures, connections, captured=captured, expected=expected, dropped=dropped, cpu=cpu):
        print(line)
    if args.json:
        common.dump(args.json, {"figures": figures, "captured": captured, "expected": expected, "dropped": dropped,
                                "in_process": cpu})
    return 0


if __name__ == "__main__":
    sys.exit(main())
