"""What a run may write is bounded: its outputs are capped (a run over the cap fails with the cap
named and nothing of them kept), its /tmp is a sized tmpfs, the rest of its writable layer is
watched against a bound, and outputs stream from the engine to storage with no copy on the
worker's disk (the issue saw a 600 MB output take 1.4 GB at its peak)."""
import errno
import hashlib
import os
import time

import pytest

from compute.runner import RunSpec, list_containers, run_in_docker
from tests.compute.fixtures import BASE_IMAGE, SMALL_REQUIREMENTS, WHEEL_CACHE, make_snapshot

pytestmark = pytest.mark.docker
MIB = 1024 * 1024


def run(tmp_path, recorder, script: str, *, run_id: str, store=None, **spec_args):
    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": script})
    spec = RunSpec(run_id=f"test-cap-{run_id}-{os.getpid()}", snapshot=snapshot, script="train.py", args=[],
                   requirements=SMALL_REQUIREMENTS, base_image=BASE_IMAGE, **spec_args)
    stored: dict[str, bytes] = {}

    def keep(path, size, stream):
        data = stream.read()
        assert len(data) == size
        stored[path] = data

    result = run_in_docker(spec, wheel_cache=WHEEL_CACHE, on_output=recorder, should_cancel=lambda: False,
                           workdir=tmp_path / "work", store_output=store or keep)
    assert not [c for c in list_containers("run") if c["labels"].get("mlportal.id") == spec.run_id]
    return result, stored


def test_outputs_stream_to_storage_with_nothing_on_the_workers_disk(tmp_path, recorder, small_env):
    script = ("import os\nos.makedirs('outputs/sub', exist_ok=True)\n"
              "open('outputs/big.bin', 'wb').write(os.urandom(40 * 1024 * 1024))\n"
              "open('outputs/sub/small.txt', 'w').write('hi')\n")
    peak = {"files": 0}

    def store(path, size, stream):
        digest, n = hashlib.sha256(), 0
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            n += len(chunk)
        # While the copy runs, the worker's folder holds nothing but the snapshot.
        work_files = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
        peak["files"] = max(peak["files"], len(work_files))
        peak[path] = n

    result, _ = run(tmp_path, recorder, script, run_id="stream", store=store, outputs_max_bytes=100 * MIB)
    assert result.status == "completed", result.reason
    assert result.outputs is None and not result.outputs_failed
    assert peak["big.bin"] == 40 * MIB and peak["sub/small.txt"] == 2
    assert peak["files"] == 0
    assert any("stored 2 output files" in line for line in recorder.text)


def test_a_run_over_its_outputs_cap_fails_with_the_cap_named(tmp_path, recorder, small_env):
    script = ("import os\nos.makedirs('outputs', exist_ok=True)\n"
              "for i in range(3):\n    open(f'outputs/part{i}.bin', 'wb').write(b'x' * (4 * 1024 * 1024))\n")
    result, stored = run(tmp_path, recorder, script, run_id="overcap", outputs_max_bytes=10 * MIB)
    assert result.status == "failed" and result.outputs_failed
    assert result.reason.startswith("its outputs are over the cap of 10 MiB")
    assert len(stored) == 2  # the third would pass the cap: it is never copied


def test_tmp_is_a_sized_tmpfs_and_writing_past_it_fails_inside_the_run(tmp_path, recorder, small_env):
    script = ("import os\n"
              "print(open('/proc/mounts').read().count(' /tmp tmpfs '))\n"
              "try:\n    open('/tmp/fill', 'wb').write(b'x' * (96 * 1024 * 1024))\n    print('wrote it all')\n"
              "except OSError as exc:\n    print('errno', exc.errno)\n")
    result, _ = run(tmp_path, recorder, script, run_id="tmp", tmp_mb=32, memory_mb=512)
    assert result.status == "completed", result.reason
    assert recorder.text[0] == "1"
    assert f"errno {errno.ENOSPC}" in recorder.text and "wrote it all" not in recorder.text


def test_one_file_written_as_fast_as_it_can_never_grows_past_the_scratch_bound(tmp_path, recorder, small_env):
    # Before, the layer was only polled every 2 s: a fast writer put gigabytes on the host's disk
    # between two polls. The kernel now refuses the write that would pass the bound (RLIMIT_FSIZE;
    # the engine's own layer limit where it has one), so the host never holds more of it.
    script = ("import os\nf = open('scratch.bin', 'wb', buffering=0)\nblock = b'x' * (1024 * 1024)\n"
              "try:\n    for i in range(2048):\n        f.write(block)\n    print('wrote 2 GiB')\n"
              "except OSError as exc:\n    print('stopped at', f.tell(), 'errno', exc.errno, flush=True)\n    raise\n")
    started = time.monotonic()
    result, _ = run(tmp_path, recorder, script, run_id="scratch", scratch_max_bytes=64 * MIB)
    assert result.status == "failed"
    assert result.reason.startswith("wrote more than its scratch space of 64 MiB")
    assert "wrote 2 GiB" not in recorder.text
    stopped = [line for line in recorder.text if line.startswith("stopped at")]
    assert stopped == [f"stopped at {64 * MIB} errno {errno.EFBIG}"]
    assert time.monotonic() - started < 60


def test_many_files_past_the_scratch_bound_are_stopped_by_the_poll(tmp_path, recorder, small_env):
    # Each file stays under the bound, their sum does not: the layer's size, checked every second.
    script = ("import time\n"
              "for i in range(100):\n    open(f'part{i}.bin', 'wb').write(b'x' * (4 * 1024 * 1024))\n"
              "    time.sleep(0.1)\n"
              "print('wrote 400 MiB')\n")
    started = time.monotonic()
    result, _ = run(tmp_path, recorder, script, run_id="scratchpoll", scratch_max_bytes=64 * MIB)
    assert result.status == "failed"
    assert result.reason.startswith("wrote more than its scratch space of 64 MiB")
    assert "wrote 400 MiB" not in recorder.text
    assert time.monotonic() - started < 60


def test_a_full_disk_closes_the_stream_and_fails_at_once_with_disk_full(tmp_path, recorder, small_env):
    script = ("import os\nos.makedirs('outputs', exist_ok=True)\n"
              "for i in range(3):\n    open(f'outputs/f{i}.bin', 'wb').write(os.urandom(8 * 1024 * 1024))\n")

    def full(path, size, stream):
        stream.read(1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    started = time.monotonic()
    result, _ = run(tmp_path, recorder, script, run_id="full", store=full)
    assert result.status == "failed" and result.outputs_failed
    assert result.reason.startswith("disk full: the portal's storage has no room for its outputs")
    assert time.monotonic() - started < 60  # the container was removed at once (the issue: 300 s)


def _run_local(tmp_path, recorder, script: str, store, **spec_args):
    from compute.runner import run_local
    from tests.compute.test_runner_local import sandbox

    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": script})
    spec = RunSpec(run_id="local-cap", snapshot=snapshot, script="train.py", args=[], requirements=["six"],
                   base_image=BASE_IMAGE, **spec_args)
    return run_local(spec, sandbox=sandbox(), wheel_cache=WHEEL_CACHE, on_output=recorder,
                     should_cancel=lambda: False, workdir=tmp_path / "work", store_output=store)


def test_local_run_outputs_go_to_storage_file_by_file_and_obey_the_cap(tmp_path, recorder):
    script = ("import os\nos.makedirs('outputs', exist_ok=True)\n"
              "open('outputs/a.bin', 'wb').write(b'a' * (3 * 1024 * 1024))\n"
              "os.symlink('/etc/passwd', 'outputs/leak')\n")
    kept: dict[str, int] = {}
    result = _run_local(tmp_path, recorder, script, lambda path, size, stream: kept.update({path: len(stream.read())}),
                        outputs_max_bytes=10 * MIB)
    assert result.status == "completed", result.reason
    assert kept == {"a.bin": 3 * MIB}  # the symlink is never followed
    assert not (tmp_path / "work" / "outputs.tar").exists()  # no tar: no extra copy
    kept.clear()
    over = _run_local(tmp_path, recorder, script.replace("os.symlink('/etc/passwd', 'outputs/leak')\n", ""),
                      lambda path, size, stream: kept.update({path: size}), outputs_max_bytes=2 * MIB)
    assert over.status == "failed" and over.outputs_failed and over.reason.startswith("its outputs are over the cap of 2 MiB")
    assert kept == {}  # checked before anything is stored
