"""What data capture costs a scoring service (issue 16): throughput at 100 % capture against capture off.

    .venv/bin/python benchmarks/capture.py [--seconds 3] [--repeats 4] [--workers 2] [--connections 1,16]

The churn template (trained here with its own script; its score.py also collects inputs and
predictions with ModelDataCollector) is built into a service image once and started twice, side by
side, pinned to the same core: one container with capture off, one with ``both`` at 100 % and an
internal key. While the second is under load a puller drains its spool over the published port
every second, acknowledging what it took, as the portal's worker does (so the spool never fills
and the cost of being pulled is counted too). wrk (one thread, keep-alive, one churn record per
request) runs on the other core and goes round the two, ``--repeats`` runs of ``--seconds`` each
per connection count; each figure is its best run. Ends with one ratio line per connection count:
``capture c=16 throughput_ratio=0.95 p50_ratio=1.03`` (throughput with capture over without; the goal
is ≥ 0.9).
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


def report(figures: dict[str, dict[int, dict]], connections: list[int], *, captured: int, expected: int, dropped: int) -> list[str]:
    """The lines the benchmark ends with: rows pulled, figures per connection count, one ratio line
    each (capture over off), and whether the goal was met."""
    lines = [f"rows captured and pulled: {captured} for {expected} requests wrk counted at 100 % (wrk does not count the "
             f"requests still in flight when a run ends; they are captured too; dropped by the spool: {dropped})"]
    for c in connections:
        off, on = figures["off"][c], figures["capture"][c]
        lines.append(f"c={c}: capture off {off['rps']:.0f} req/s (p50 {off['p50']:.2f} ms, p99 {off['p99']:.2f} ms); "
                     f"capture both 100 % {on['rps']:.0f} req/s (p50 {on['p50']:.2f} ms, p99 {on['p99']:.2f} ms)")
    ok = True
    for c in connections:
        value = common.ratio(figures["capture"][c]["rps"], figures["off"][c]["rps"])
        ok &= value >= GOAL
        lines.append(common.ratio_line(f"capture c={c}", throughput_ratio=value,
                                       p50_ratio=common.ratio(figures["capture"][c]["p50"], figures["off"][c]["p50"])))
    lines.append(f"goal throughput_ratio >= {GOAL}: {'met' if ok else 'missed'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    server_cpu, load_cpu = common.server_and_load_cpus()
    common.log(f"load average before: {common.loadavg()}")
    with tempfile.TemporaryDirectory(prefix="mlportal-bench-capture-") as root:
        app, input_name, record = common.prepare_churn(Path(root))
        body = json.dumps({input_name: [record]}).encode()
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
                puller.stopping.set()
                puller.join(timeout=15)
                puller.drain()
                captured, dropped = puller.rows, puller.dropped
        finally:
            common.remove_image(tag)
    common.log(f"load average after: {common.loadavg()}")
    expected = sum(figures["capture"][c]["requests"] for c in connections)
    for line in report(figures, connections, captured=captured, expected=expected, dropped=dropped):
        print(line)
    if args.json:
        common.dump(args.json, {"figures": figures, "captured": captured, "expected": expected, "dropped": dropped})
    return 0


if __name__ == "__main__":
    sys.exit(main())
