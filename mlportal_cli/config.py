"""Where the CLI keeps its state: the login (server URL + API token) and the link of a folder to a
portal project.

The login lives in `~/.config/mlportal/config.json` (or `$MLPORTAL_CONFIG`), readable by its owner
only (0600), since it holds a token. `MLPORTAL_URL` / `MLPORTAL_TOKEN` override it, for CI.
A linked folder holds `.mlportal/project.json` (server, workspace, project): as with `az ml`, the
current folder is the project.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mlportal_cli.client import CliError

LINK_DIR = ".mlportal"
LINK_FILE = "project.json"


def config_path() -> Path:
    explicit = os.environ.get("MLPORTAL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "mlportal" / "config.json"


def load_config() -> dict:
    """The saved settings ({} when there are none); CliError when the file is not valid JSON."""
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise CliError(f"the config file {path} is not valid JSON: fix it, or delete it and run 'mlportal login'") from None
    if not isinstance(data, dict):
        raise CliError(f"the config file {path} does not hold a JSON object: delete it and run 'mlportal login'")
    return data


def _write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically with mode 0600 (the file is never readable by others,
    not even for a moment: the temporary file is created 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(data: dict) -> Path:
    path = config_path()
    try:
        _write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write the config file {path}: {exc.strerror}") from None
    return path


def credentials() -> tuple[str | None, str | None]:
    """(portal URL, API token): the environment's MLPORTAL_URL / MLPORTAL_TOKEN first, else the login."""
    saved = load_config()
    url = os.environ.get("MLPORTAL_URL") or saved.get("url")
    token = os.environ.get("MLPORTAL_TOKEN") or saved.get("token")
    return url, token


# --- the link of a folder to a project --------------------------------------------------------------

def find_link(start: Path) -> tuple[Path, dict] | None:
    """(project root, link data) of the nearest folder at or above `start` that holds
    `.mlportal/project.json`, so commands work from the project's subfolders too; None outside one."""
    start = start.resolve()
    for folder in (start, *start.parents):
        link = folder / LINK_DIR / LINK_FILE
        if link.is_file():
            try:
                data = json.loads(link.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise CliError(f"{link} is damaged: run 'mlportal project download <name>' here to link the folder "
                               "again") from None
            if not isinstance(data, dict) or not data.get("project"):
                raise CliError(f"{link} names no project: run 'mlportal project download <name>' here to link the folder again")
            return folder, data
    return None


def write_link(root: Path, *, server: str, workspace: str, project: str, project_id: str) -> Path:
    """Links `root` to a project: writes `.mlportal/project.json` (no secret in it; the token stays
    in the user's config)."""
    link = root / LINK_DIR / LINK_FILE
    link.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": server, "workspace": workspace, "project": project, "project_id": project_id}
    link.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return link
