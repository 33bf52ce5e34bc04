"""The project folder on disk: which files make a run's snapshot (.mlportalignore and the folders
that are never uploaded) and unpacking a project archive without writing outside the folder."""
from __future__ import annotations

import io
import tarfile

import pytest

from mlportal_cli.client import CliError
from mlportal_cli.folder import IgnoreRules, extract, pack, project_files


def make(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_snapshot_leaves_out_the_link_git_bytecode_and_outputs_folders(tmp_path):
    make(tmp_path, {"train.py": "", "data/a.csv": "", ".mlportal/project.json": "{}", ".git/HEAD": "",
                    "__pycache__/x.pyc": "", "src/__pycache__/y.pyc": "", "outputs/model.pkl": "", "src/util.py": ""})
    assert [rel for rel, _ in project_files(tmp_path)] == ["data/a.csv", "src/util.py", "train.py"]


def test_mlportalignore_patterns_work_as_in_gitignore(tmp_path):
    make(tmp_path, {".mlportalignore": "# big files\n*.bak\n/notes.txt\nlogs/\ndata/**/*.tmp\n!keep.bak\n",
                    "a.bak": "", "keep.bak": "", "notes.txt": "", "sub/notes.txt": "", "logs/1.log": "",
                    "sub/logs/2.log": "", "data/x/y/z.tmp": "", "data/z.tmp": "", "train.py": ""})  # ** spans 0+ folders
    assert [rel for rel, _ in project_files(tmp_path)] == [
        ".mlportalignore", "keep.bak", "sub/notes.txt", "train.py"]


def test_a_dir_only_pattern_does_not_match_a_file_of_that_name():
    rules = IgnoreRules("build/\n")
    assert rules.ignored("build", is_dir=True) and not rules.ignored("build", is_dir=False)


def test_symbolic_links_are_left_out_with_a_warning(tmp_path):
    make(tmp_path, {"train.py": ""})
    (tmp_path / "link.py").symlink_to(tmp_path / "train.py")
    warnings = []
    assert [rel for rel, _ in project_files(tmp_path, warn=warnings.append)] == ["train.py"]
    assert warnings == ["skipped link.py: a symbolic link"]


def test_a_packed_folder_unpacks_to_the_same_files(tmp_path):
    make(tmp_path / "src", {"train.py": "print(1)\n", "data/a.csv": "x,y\n1,2\n"})
    archive = io.BytesIO()
    pack(project_files(tmp_path / "src"), archive)
    archive.seek(0)
    assert extract(archive, tmp_path / "dst") == ["data/a.csv", "train.py"]
    assert (tmp_path / "dst" / "data" / "a.csv").read_text() == "x,y\n1,2\n"


def _archive(name: str, *, symlink: bool = False) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("fine.py")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        info = tarfile.TarInfo(name)
        if symlink:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.size = 1
        tar.addfile(info, None if symlink else io.BytesIO(b"x"))
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("name, symlink", [("../evil.py", False), ("/tmp/evil.py", False),
                                           (".mlportal/project.json", False), ("link.py", True)])
def test_an_archive_entry_that_would_escape_the_folder_writes_nothing(tmp_path, name, symlink):
    with pytest.raises(CliError, match="unsafe entry"):
        extract(_archive(name, symlink=symlink), tmp_path / "dst")
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())
