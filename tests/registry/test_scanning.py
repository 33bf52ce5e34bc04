"""registry.scanning: verdicts on model files from their opcodes only (no database, no loading).

Canary pickles reach the system the ways real attacks do; each is judged dangerous with the global
named, and the marker file each would write proves nothing ran. Then the evasions (memo, POP,
computed STACK_GLOBAL, dotted names), the formats (joblib with arrays, compressed, object arrays;
zip and tar archives; numpy files), and the bounds.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile

import pytest

from registry import scanning
from registry.scanning import Limits, classify, parse_allow, scan_file

ALLOW = parse_allow(scanning.DEFAULT_ALLOW)


def scan(data: bytes, **kwargs) -> scanning.ScanResult:
    return scan_file(io.BytesIO(data), **kwargs)


# --- canaries ---------------------------------------------------------------------------------------

class OsSystem:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class BuiltinsExec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class SubprocessPopen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


class NestedLoads:
    def __init__(self, marker):
        self.inner = pickle.dumps(OsSystem(marker))

    def __reduce__(self):
        return (pickle.loads, (self.inner,))


def protocol_0_text(marker) -> bytes:
    """A hand-written protocol-0 pickle, as text: GLOBAL os.system, a STRING argument, REDUCE."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def in_zip(data: bytes) -> bytes:
    """A PyTorch-style .pt zip: the pickle is archive/data.pkl, beside raw storage and a version file."""
    handle = io.BytesIO()
    with zipfile.ZipFile(handle, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/data/0", os.urandom(256))
        archive.writestr("archive/version", "3\n")
    return handle.getvalue()


CANARIES = {
    "os.system": (lambda m: pickle.dumps(OsSystem(m)), {"posix.system", "os.system"}),
    "builtins.exec": (lambda m: pickle.dumps(BuiltinsExec(m)), {"builtins.exec"}),
    "subprocess.Popen": (lambda m: pickle.dumps(SubprocessPopen(m)), {"subprocess.Popen"}),
    "nested pickle.loads": (lambda m: pickle.dumps(NestedLoads(m)), {"_pickle.loads"}),
    "protocol 0 text": (protocol_0_text, {"os.system"}),
    "inside a zip": (lambda m: in_zip(pickle.dumps(OsSystem(m), protocol=2)), {"posix.system", "os.system"}),
}


@pytest.mark.parametrize("kind", list(CANARIES))
def test_each_canary_is_dangerous_with_its_global_named_and_never_runs(kind, tmp_path):
    make, expected = CANARIES[kind]
    marker = tmp_path / "ran"
    result = scan(make(marker))
    assert result.verdict == scanning.DANGEROUS, result
    named = set(result.named(scanning.DANGEROUS))
    assert named & expected, named
    assert any(name in result.reason for name in expected), result.reason
    assert result.framework == "unknown"
    assert not marker.exists()


def test_the_nested_pickle_names_what_it_would_run_too(tmp_path):
    result = scan(pickle.dumps(NestedLoads(tmp_path / "ran")))
    inner = [f for f in result.findings if f.where == "nested pickle 1"]
    assert [f.ref for f in inner] in (["posix.system"], ["os.system"]) and inner[0].verdict == scanning.DANGEROUS


def test_the_zip_member_holding_the_canary_is_named(tmp_path):
    result = scan(in_zip(pickle.dumps(OsSystem(tmp_path / "ran"))))
    assert result.format == "zip" and {f.where for f in result.findings} == {"archive/data.pkl"}


LOAD = """
import io, pickle, sys, zipfile
data = open(sys.argv[1], "rb").read()
if data[:2] == b"PK":  # as torch.load would: the pickle inside the archive
    data = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
try:
    pickle.loads(data)
except Exception:
    pass  # e.g. Popen's return value cannot be what the pickle expects; the command ran already
"""


@pytest.mark.parametrize("kind", list(CANARIES))
def test_each_canary_does_run_when_loaded_so_its_marker_would_tell(kind, tmp_path):
    # Proof that each marker is a real witness: loading the canary (in a throwaway process, as a
    # scoring container's init() would) writes it; the scans above leave it unwritten.
    import time

    marker = tmp_path / "ran"
    path = tmp_path / "canary.bin"
    path.write_bytes(CANARIES[kind][0](marker))
    subprocess.run([sys.executable, "-c", LOAD, str(path)], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 10  # Popen's touch may finish after the loading process
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), kind


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_is_read(protocol, tmp_path):
    result = scan(pickle.dumps(OsSystem(tmp_path / "ran"), protocol=protocol))
    assert result.verdict == scanning.DANGEROUS and result.named(scanning.DANGEROUS) in (["posix.system"], ["os.system"])


# --- evasions -----------------------------------------------------------------------------------

def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def test_stack_global_strings_fetched_from_the_memo_are_resolved():
    # 'os' is memoized (BINPUT), dropped, fetched again (BINGET): pickle.load resolves os.system.
    data = (b"\x80\x04" + _short("os") + b"q\x00" + b"0" + _short("junk") + b"0" + b"h\x00" + _short("system")
            + b"\x93" + _short("touch x") + b"\x85R.")
    result = scan(data)
    assert result.verdict == scanning.DANGEROUS and "os.system" in result.named(scanning.DANGEROUS)


def test_a_value_popped_between_the_two_strings_does_not_hide_the_module():
    data = b"\x80\x04" + _short("os") + _short("decoy") + b"0" + _short("system") + b"\x93" + _short("id") + b"\x85R."
    assert scan(data).named(scanning.DANGEROUS) == ["os.system"]


def test_a_stack_global_built_from_a_call_is_dangerous():
    # The module name is the result of a call, so it is unknown until load time.
    data = (b"\x80\x04" + _short("builtins") + _short("str") + b"\x93" + _short("os") + b"\x85R" + _short("system")
            + b"\x93" + _short("id") + b"\x85R.")
    result = scan(data)
    assert result.verdict == scanning.DANGEROUS and scanning.COMPUTED in result.named(scanning.DANGEROUS)


def test_protocol_0_inst_and_obj_are_read():
    inst = b"(S'touch x'\nisubprocess\ncall\n."
    assert scan(inst).named(scanning.DANGEROUS) == ["subprocess.call"]
    obj = b"(cos\nsystem\nS'id'\no."
    assert scan(obj).named(scanning.DANGEROUS) == ["os.system"]


def test_python_2_names_are_judged_under_their_python_3_names():
    assert classify("__builtin__", "eval", ALLOW)[0] == scanning.DANGEROUS
    assert classify("commands", "getoutput", ALLOW)[0] == scanning.DANGEROUS
    assert classify("copy_reg", "_reconstructor", ALLOW)[0] == scanning.SAFE


def test_a_dotted_name_reaching_through_an_allowed_module_is_not_safe():
    assert classify("sklearn.base", "os.system", ALLOW)[0] == scanning.DANGEROUS
    assert classify("numpy", "core.Thing", ALLOW)[0] == scanning.UNKNOWN


def test_dangerous_globals_inside_allowed_libraries_stay_dangerous():
    for module, name in (("numpy.testing._private.utils", "runstring"), ("pandas", "read_pickle"), ("joblib", "load"),
                         ("pandas.core.computation.eval", "eval"), ("torch.fx.graph_module", "reduce_graph_module"),
                         ("numpy", "load"), ("builtins", "getattr"), ("builtins", "open"), ("torch.hub", "load")):
        assert classify(module, name, ALLOW)[0] == scanning.DANGEROUS, (module, name)
    assert classify("builtins", "set", ALLOW)[0] == scanning.SAFE


# --- verdicts on real models and formats -----------------------------------------------------------

@pytest.fixture(scope="module")
def sklearn_model():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3, random_state=0))
    model.fit([[0, 1], [1, 0], [2, 2], [3, 1]], [0, 1, 0, 1])
    return model, sklearn.__version__


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_scikit_learn_pickle_is_safe_with_its_version(sklearn_model, protocol):
    model, version = sklearn_model
    result = scan(pickle.dumps(model, protocol=protocol))
    assert result.verdict == scanning.SAFE, result.reason
    assert (result.framework, result.framework_version) == ("scikit-learn", version)
    assert {f.verdict for f in result.findings} == {scanning.SAFE}
    assert any(f.module.startswith("sklearn.") for f in result.findings)


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3)])
def test_a_joblib_file_is_read_past_its_arrays_compressed_or_not(sklearn_model, tmp_path, compress):
    joblib = pytest.importorskip("joblib")
    model, version = sklearn_model
    path = tmp_path / "model.joblib"
    joblib.dump(model, path, compress=compress)
    with open(path, "rb") as handle:
        result = scan_file(handle)
    assert result.verdict == scanning.SAFE, result.reason
    assert (result.framework, result.framework_version) == ("scikit-learn", version)


def test_a_canary_hidden_in_a_joblib_object_array_is_found(tmp_path):
    joblib = pytest.importorskip("joblib")
    import numpy as np

    path = tmp_path / "model.joblib"
    joblib.dump({"weights": np.arange(1000.0), "extra": np.array([OsSystem(tmp_path / "ran"), 1], dtype=object)}, path)
    with open(path, "rb") as handle:
        result = scan_file(handle)
    assert result.verdict == scanning.DANGEROUS and result.named(scanning.DANGEROUS) == ["posix.system"]
    assert not (tmp_path / "ran").exists()


def test_a_joblib_model_with_large_arrays_scans_within_bounded_memory(tmp_path):
    joblib = pytest.importorskip("joblib")
    import numpy as np

    path = tmp_path / "big.joblib"
    joblib.dump({"coef": np.ones(25_000_000), "more": np.ones((2000, 5000), dtype=np.float32)}, path)  # 240 MB
    assert path.stat().st_size > 200 * 1024 * 1024
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            result = scan_file(handle)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.verdict == scanning.SAFE, result.reason
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while scanning a {path.stat().st_size}-byte file"


def test_a_numpy_file_of_numbers_is_safe_and_one_of_objects_is_read_as_a_pickle(tmp_path):
    import numpy as np

    numbers = io.BytesIO()
    np.save(numbers, np.arange(100))
    assert scan(numbers.getvalue()).verdict == scanning.SAFE
    objects = io.BytesIO()
    np.save(objects, np.array([OsSystem(tmp_path / "ran")], dtype=object), allow_pickle=True)
    assert scan(objects.getvalue()).named(scanning.DANGEROUS) == ["posix.system"]


def test_a_tar_gz_bundle_is_read_member_by_member(tmp_path, sklearn_model):
    handle = io.BytesIO()
    with tarfile.open(fileobj=handle, mode="w:gz") as archive:
        for name, data in (("bundle/model.pkl", pickle.dumps(sklearn_model[0])), ("bundle/README", b"hello"),
                           ("bundle/extra.pkl", pickle.dumps(SubprocessPopen(tmp_path / "ran")))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    result = scan(handle.getvalue())
    assert result.format == "gzip+tar" and result.verdict == scanning.DANGEROUS
    assert [(f.ref, f.where) for f in result.findings if f.verdict == scanning.DANGEROUS] == [("subprocess.Popen", "bundle/extra.pkl")]
    assert result.framework == "scikit-learn"


def test_a_torch_style_zip_of_tensors_is_safe_and_labelled_pytorch():
    # What torch.save writes for a state dict, built by hand (torch is not installed here).
    data = (b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x06\x00\x00\x00weightq\x02ctorch._utils\n_rebuild_tensor_v2\n"
            b"q\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07"
            b"K\x04tq\x08QK\x00K\x04\x85K\x01\x85\x89h\x00)Rq\ttq\nRq\x0bs.")
    result = scan(in_zip(data))
    assert result.verdict == scanning.SAFE, result.reason
    assert result.framework == "pytorch"


def test_unknown_globals_are_named_and_an_administrator_can_allow_them():
    class_ref = b"\x80\x04" + _short("mylab.models") + _short("Ranker") + b"\x93)\x81."
    result = scan(class_ref)
    assert result.verdict == scanning.UNKNOWN and result.named(scanning.UNKNOWN) == ["mylab.models.Ranker"]
    assert "mylab.models.Ranker" in result.reason
    assert scan(class_ref, allow=[*scanning.DEFAULT_ALLOW, "mylab"]).verdict == scanning.SAFE
    assert scan(class_ref, allow=[*scanning.DEFAULT_ALLOW, "mylab.models:Ranker"]).verdict == scanning.SAFE
    # The deny list always wins over an extended allow list.
    assert scan(protocol_0_text("x"), allow=[*scanning.DEFAULT_ALLOW, "os"]).verdict == scanning.DANGEROUS
    with pytest.raises(ValueError, match="is not a package"):
        parse_allow(["my lab"])


# --- what cannot be scanned ------------------------------------------------------------------------

def test_a_random_or_text_file_is_not_scanned_and_says_it_is_no_pickle():
    for data in (b"\xcd" + bytes(range(256)) * 8, b"this is not a pickle", b'{"weights": [1, 2]}'):
        result = scan(data)
        assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.NOT_PICKLE, result
        assert "is not a pickle" in result.reason and not result.needs_confirmation


def test_a_truncated_pickle_is_not_scanned_and_needs_a_confirmation(sklearn_model):
    whole = pickle.dumps(sklearn_model[0])
    result = scan(whole[: len(whole) // 2])
    assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.TRUNCATED
    assert "truncated" in result.reason and "inside the pickle" in result.reason and result.needs_confirmation


def test_a_pickle_cut_before_it_named_any_global_needs_no_confirmation():
    # pickle.load breaks at the cut having called nothing: said, but not a reason to ask.
    result = scan(pickle.dumps(list(range(2000)))[:3000])
    assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.TRUNCATED
    assert not result.needs_confirmation


def test_a_truncated_pickle_still_shows_the_danger_found_before_the_cut(tmp_path):
    data = pickle.dumps([OsSystem(tmp_path / "ran"), list(range(1000))])
    assert scan(data[:-50]).verdict == scanning.DANGEROUS


def test_a_pickle_over_the_size_bound_is_not_scanned_and_says_so(sklearn_model):
    result = scan(pickle.dumps(sklearn_model[0]), limits=Limits(max_bytes=1000))
    assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.OVER_BOUND
    assert "bound of 1000 bytes" in result.reason
    assert scan(pickle.dumps(list(range(5000))), limits=Limits(max_opcodes=1000)).reason_code == scanning.OVER_BOUND


def test_an_archive_with_thousands_of_members_is_not_scanned_and_says_so():
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for i in range(3000):
            archive.writestr(f"m/{i}.pkl", pickle.dumps(i))
    result = scan(zipped.getvalue())
    assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.TOO_MANY_MEMBERS
    assert "3000 files" in result.reason and "bound of 1000" in result.reason
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as archive:
        for i in range(1200):
            info = tarfile.TarInfo(f"m/{i}.txt")
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    assert scan(tarred.getvalue()).reason_code == scanning.TOO_MANY_MEMBERS


def test_a_decompression_bomb_stops_at_the_total_bound():
    import gzip

    bomb = gzip.compress(b"\x80\x04" + b"N0" * 5_000_000)
    result = scan(bomb, limits=Limits(max_total_bytes=1024 * 1024))
    assert result.verdict == scanning.NOT_SCANNED and result.reason_code == scanning.OVER_BOUND
