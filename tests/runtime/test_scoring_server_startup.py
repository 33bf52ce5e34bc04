"""What the server's master does before it forks: the default worker count from the CPU quota,
the modules named by the model's pickles (read, never unpickled), and the buffered access log."""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import sys

import pytest

from mlportal_runtime import server
from mlportal_runtime.pickles import scan_pickle
from mlportal_runtime.server import AccessLog, cgroup_cpu_quota, default_workers, preimport_model_modules


# -- worker count from the cgroup CPU quota ------------------------------------------------------

def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_own_group(tmp_path):
    write(tmp_path / "proc-cgroup", "0::/docker/abc\n")
    write(tmp_path / "cg" / "docker" / "abc" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) == pytest.approx(1.5)


def test_cgroup_v2_the_tightest_level_wins_and_missing_levels_are_skipped(tmp_path):
    # Inside a container the mount is the container's own group: /proc/self/cgroup names a path
    # that does not exist under it, so its root is what is read.
    write(tmp_path / "proc-cgroup", "0::/system.slice/docker-abc.scope\n")
    write(tmp_path / "cg" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) == pytest.approx(0.5)
    write(tmp_path / "cg" / "system.slice" / "cpu.max", "20000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) == pytest.approx(0.2)


def test_cgroup_v2_unlimited_or_unreadable_is_none(tmp_path):
    write(tmp_path / "proc-cgroup", "0::/\n")
    write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) is None
    write(tmp_path / "cg" / "cpu.max", "garbage\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) is None
    assert cgroup_cpu_quota(str(tmp_path / "nowhere"), str(tmp_path / "no-such-file")) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    write(tmp_path / "proc-cgroup", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    folder = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    write(folder / "cpu.cfs_quota_us", "200000\n")
    write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) == pytest.approx(2.0)
    write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) is None


@pytest.mark.parametrize("quota,cpus,expected", [
    (None, 4, 4),        # no quota: one worker per usable CPU
    ("100000 100000", 4, 1),   # --cpus 1 on a 4-core host
    ("150000 100000", 4, 2),   # 1.5 CPUs: rounded up
    ("800000 100000", 2, 2),   # a quota above the cores does not add workers
    ("1000 100000", 2, 1),     # never fewer than one
])
def test_default_workers_is_the_cpus_capped_by_the_quota(tmp_path, monkeypatch, quota, cpus, expected):
    monkeypatch.setattr(server, "_cpu_count", lambda: cpus)
    write(tmp_path / "proc-cgroup", "0::/\n")
    if quota:
        write(tmp_path / "cg" / "cpu.max", quota + "\n")
    assert default_workers(str(tmp_path / "cg"), str(tmp_path / "proc-cgroup")) == expected


# -- modules named by pickles, without unpickling -------------------------------------------------

class Boom:
    """Writes a marker file when unpickled: the scan must never do that."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickled_modules_names_every_global_without_loading_the_file(tmp_path, protocol):
    import collections
    import decimal

    marker = tmp_path / "unpickled"
    data = {"when": decimal.Decimal("1.5"), "counts": collections.OrderedDict(a=1), "boom": Boom(str(marker))}
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    scan = scan_pickle(str(path))
    modules, count = scan.modules, scan.opcodes
    assert {"decimal", "collections", "io"} <= set(modules), modules  # open is io.open
    assert count == sum(1 for _ in pickletools.genops(path.read_bytes()))
    assert not marker.exists()


def test_pickled_modules_resolves_names_fetched_from_the_memo(tmp_path):
    # Protocol 4 memoizes the module string once; a second class of the same module then names it
    # with BINGET, which the scan must follow through the memo.
    import collections

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps([collections.OrderedDict, collections.Counter, __import__("decimal").Decimal], protocol=4))
    ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
    assert ops.count("SHORT_BINUNICODE") == 5 and "BINGET" in ops  # "collections" is written once, then fetched
    modules = scan_pickle(str(path)).modules
    assert modules == ["collections", "collections", "decimal"], modules


def test_pickled_modules_of_a_foreign_or_cut_file_returns_what_came_before(tmp_path):
    garbage = tmp_path / "notes.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    assert scan_pickle(str(garbage)).modules == []
    whole = pickle.dumps(__import__("decimal").Decimal("2"), protocol=2)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(whole[: len(whole) // 2 + 5])
    assert scan_pickle(str(cut)).modules == ["decimal"]
    # The caps stop the scan early.
    assert scan_pickle(str(cut), max_bytes=2).modules == []
    assert scan_pickle(str(cut), max_opcodes=1).modules == []


def test_scan_pickle_finds_the_scikit_learn_version_a_model_was_made_with(tmp_path):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    model = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=2)).fit([[0, 1], [1, 0], [2, 2]], [0, 1, 0])
    for protocol in (2, 5):
        scan = scan_pickle(__import__("io").BytesIO(pickle.dumps(model, protocol=protocol)))
        assert scan.versions == {"scikit-learn": sklearn.__version__}
        assert {m.split(".")[0] for m in scan.modules} >= {"sklearn", "numpy"}
    # A look-alike key elsewhere is not a version unless a string follows it.
    assert scan_pickle(__import__("io").BytesIO(pickle.dumps({"_sklearn_version": 3}))).versions == {}


def test_preimport_imports_library_modules_but_never_the_apps_own(tmp_path, monkeypatch):
    marker = tmp_path / "app-imported"
    (tmp_path / "myfeatures.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Scaler: pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import myfeatures  # noqa: F401 - to build a pickle that names the app's own module
        scaler = myfeatures.Scaler()
        payload = pickle.dumps({"scaler": scaler, "csv": __import__("csv").excel}, protocol=4)
    finally:
        sys.modules.pop("myfeatures", None)
    marker.unlink()
    (tmp_path / "model.pkl").write_bytes(payload)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "other.joblib").write_bytes(pickle.dumps(__import__("wave").Error, protocol=2))
    for name in ("csv", "wave"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        imported = preimport_model_modules(str(tmp_path))
        assert set(imported) == {"csv", "wave"}, imported
        assert "csv" in sys.modules and "wave" in sys.modules
        assert "myfeatures" not in sys.modules and not marker.exists()
    finally:
        sys.path.remove(str(tmp_path))


def test_the_master_preimports_the_churn_models_libraries_and_the_workers_still_score(trained_churn, start_server, sample_request):
    srv = start_server(trained_churn["app"], workers=2)
    status, body = srv.post_json("/score", sample_request)
    assert status == 200 and body == "0"
    logs = srv.logs()
    assert "module(s) named by the model files" in logs, logs


def test_preimport_can_be_turned_off(trained_churn, start_server, sample_request):
    srv = start_server(trained_churn["app"], workers=1, MLPORTAL_PREIMPORT="0")
    assert srv.post_json("/score", sample_request) == (200, "0")
    assert "named by the model files" not in srv.logs()


# -- the access log, buffered off the response path ----------------------------------------------

def test_access_log_holds_lines_until_due_or_full_and_flush_writes_them_in_order(tmp_path):
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    log = AccessLog(write_fd, max_bytes=30, max_delay=0.5)
    assert not log.full_or_due(0.0)
    log.add(b"GET /a 200\n", now=10.0)
    log.add(b"GET /b 200\n", now=10.1)
    assert not log.full_or_due(10.2)  # neither 30 bytes nor 0.5 s yet
    assert log.full_or_due(10.5)  # due: half a second after the first line
    log.add(b"POST /score 200\n", now=10.2)
    assert log.full_or_due(10.2)  # full
    with pytest.raises(BlockingIOError):
        os.read(read_fd, 100)  # nothing written before flush
    log.flush()
    assert os.read(read_fd, 100) == b"GET /a 200\nGET /b 200\nPOST /score 200\n"
    assert not log.buf and not log.full_or_due(99.0)
    os.close(read_fd)
    log.flush()  # nothing held: no write
    log.add(b"lost\n", now=11.0)
    os.close(write_fd)
    log.flush()  # the reader is gone: the line is dropped, no exception
    assert not log.buf


def test_a_busy_server_still_writes_its_access_log(one_worker_with_log):
    srv = one_worker_with_log
    for i in range(5):
        assert srv.post_json("/score", {"data": {"i": i}})[0] == 200
    from tests.helpers import wait_until

    wait_until(lambda: srv.logs().count('"POST /score"') == 5, timeout=5, message="five access-log lines")


@pytest.fixture(scope="module")
def one_worker_with_log(tmp_path_factory, start_server):
    folder = tmp_path_factory.mktemp("logged")
    (folder / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    (folder / "service_schema.json").write_text(json.dumps({"inputs": {"data": {"kind": "json", "type": "object"}}}))
    return start_server(folder, workers=1)


def test_preimport_leaves_a_module_to_the_app_when_the_app_has_a_file_of_that_name(tmp_path, monkeypatch):
    # The master's sys.path may not hold the app dir: importing the installed `wave` there would
    # shadow the app's own wave.py in every worker.
    (tmp_path / "wave.py").write_text("class Error(Exception):\n    pass\n")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(__import__("wave").Error, protocol=2))
    monkeypatch.delitem(sys.modules, "wave", raising=False)
    assert preimport_model_modules(str(tmp_path)) == []
    assert "wave" not in sys.modules


def test_scan_pickle_says_whether_it_read_the_whole_pickle(tmp_path):
    whole = pickle.dumps({"a": [1, 2]}, protocol=4)
    assert scan_pickle(__import__("io").BytesIO(whole)).complete is True
    assert scan_pickle(__import__("io").BytesIO(whole[:-3])).complete is False
    assert scan_pickle(__import__("io").BytesIO(whole), max_opcodes=2).complete is False
