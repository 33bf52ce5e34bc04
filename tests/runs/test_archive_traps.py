"""Uploaded archives are checked whole before anything is written: one bad member rejects all."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.test import override_settings

from runs.models import ProjectFile

pytestmark = pytest.mark.django_db


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
            else:
                tar.addfile(m)
    buf.seek(0)
    buf.name = "upload.tar.gz"
    return buf


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _upload(api, project, fileobj):
    return api.post(f"/api/v1/projects/{project.id}/upload/", {"file": fileobj, "extract": "true"}, format="multipart")


def _files_of(project):
    return sorted(ProjectFile.objects.filter(project=project).values_list("path", flat=True))


TRAPS = {
    "parent path": [("ok.py", b"1"), ("../escape.py", b"2")],
    "absolute path": [("ok.py", b"1"), ("/etc/cron.d/x", b"2")],
    "symlink": [("ok.py", b"1"), _special("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [("ok.py", b"1"), _special("hard", tarfile.LNKTYPE, "ok.py")],
    "device": [("ok.py", b"1"), _special("dev", tarfile.CHRTYPE)],
    "fifo": [("ok.py", b"1"), _special("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_a_tar_with_a_trap_is_rejected_whole(owner_api, blank, trap):
    before = set(default_storage.listdir(f"projects/{blank.id}")[1])
    res = _upload(owner_api, blank, _tar(TRAPS[trap]))
    assert res.status_code == 400, res.content
    assert res.json()["error"]["code"] == "unsafe_archive"
    assert "Nothing was written" in res.json()["error"]["message"]
    assert _files_of(blank) == ["train.py"]
    assert set(default_storage.listdir(f"projects/{blank.id}")[1]) == before


def test_a_zip_with_a_symlink_is_rejected_whole(owner_api, blank):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.py", "1")
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    buf.seek(0)
    buf.name = "x.zip"
    res = _upload(owner_api, blank, buf)
    assert res.status_code == 400 and "symbolic link" in res.json()["error"]["message"]
    assert _files_of(blank) == ["train.py"]


def test_a_zip_with_a_parent_path_is_rejected_whole(owner_api, blank):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.py", "1")
        z.writestr("../../x.py", "2")
    buf.seek(0)
    buf.name = "x.zip"
    res = _upload(owner_api, blank, buf)
    assert res.status_code == 400 and ".." in res.json()["error"]["message"]
    assert _files_of(blank) == ["train.py"]


@override_settings(MLPORTAL_PROJECT_MAX_FILES=3)
def test_an_archive_over_the_file_count_cap_is_rejected_whole(owner_api, blank):
    res = _upload(owner_api, blank, _tar([(f"f{i}.txt", b"x") for i in range(5)]))
    assert res.status_code == 400 and "more than 3 files" in res.json()["error"]["message"]
    assert _files_of(blank) == ["train.py"]


@override_settings(MLPORTAL_MAX_UPLOAD_BYTES=4096)
def test_an_archive_whose_files_add_up_over_the_cap_is_a_413(owner_api, blank):
    # Compresses to far less than the cap; the check is on the extracted sizes.
    res = _upload(owner_api, blank, _tar([("a.txt", b"a" * 3000), ("b.txt", b"b" * 3000)]))
    assert res.status_code == 413
    assert _files_of(blank) == ["train.py"]


def test_a_file_that_is_not_an_archive_is_a_400_saying_to_upload_it_plainly(owner_api, blank):
    buf = io.BytesIO(b"just text")
    buf.name = "notes.txt"
    res = _upload(owner_api, blank, buf)
    assert res.status_code == 400 and "without extract=true" in res.json()["error"]["message"]


def test_a_clean_tar_gz_is_extracted(owner_api, blank):
    res = _upload(owner_api, blank, _tar([("src/a.py", b"A"), ("README.md", b"# hi")]))
    assert res.status_code == 201, res.content
    assert _files_of(blank) == ["README.md", "src/a.py", "train.py"]
