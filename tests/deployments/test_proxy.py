"""What the portal reads from a replica's /metrics (the scoring server's own Prometheus text) and
how the proxy spreads requests."""
from deployments import proxy
from mlportal_runtime.server import Stats


def _exposition() -> str:
    stats = Stats(2)
    first, second = stats.row(0), stats.row(1)
    for seconds in (0.004, 0.004, 0.02):
        first.count("score", 200, seconds)
    second.count("score", 400, 0.002)
    second.count("infer", 200, 0.3)
    second.count("health", 200, None)
    return stats.prometheus(2).decode()


def test_it_reads_scoring_requests_codes_and_latency_from_the_servers_metrics():
    summary = proxy.summarise_metrics(_exposition())
    assert summary["requests"] == 5 and summary["by_code"] == {"200": 4, "400": 1}
    assert summary["latency_count"] == 5 and summary["workers"] == 2
    assert abs(summary["mean_latency_ms"] - (0.004 * 2 + 0.02 + 0.002 + 0.3) / 5 * 1000) < 0.01
    assert proxy.quantile_ms(summary["buckets"], 0.5) == 5.0  # the 0.005 s bucket holds the median
    assert proxy.quantile_ms(summary["buckets"], 0.95) == 500.0


def test_labels_with_escaped_quotes_and_junk_lines_are_handled():
    samples = proxy.parse_prometheus('# HELP x\nx{a="say \\"hi\\"",b="2"} 3\nnot a sample\ny 1.5 1700000000\nz NaNish\n')
    assert samples == [("x", {"a": 'say "hi"', "b": "2"}, 3.0), ("y", {}, 1.5)]


def test_no_data_gives_no_quantile():
    assert proxy.quantile_ms([], 0.5) is None
    assert proxy.quantile_ms([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_round_robin_starts_at_the_next_replica_each_time():
    replicas = ["r1", "r2", "r3"]
    firsts = [proxy.round_robin("svc-rr-test", replicas)[0] for _ in range(6)]
    assert firsts == ["r1", "r2", "r3", "r1", "r2", "r3"]
    assert proxy.round_robin("svc-empty", []) == []
