"""The project templates shipped with the portal: `runs/project_templates/<slug>/template.json` + files.

A template is a folder; its `template.json` holds `{"name", "slug", "description", "default_script"}`
and every other file in the folder (recursively) becomes a file of a project made from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "project_templates"
SKIPPED = {"template.json", "__pycache__", ".DS_Store"}


class TemplateError(ValueError):
    """A template folder that cannot be used (names the folder and what is wrong)."""


@dataclass(frozen=True)
class ProjectTemplate:
    slug: str
    name: str
    description: str
    default_script: str
    folder: Path
    files: tuple[str, ...] = field(default=())

    def file_path(self, relative: str) -> Path:
        return self.folder / relative

    def matches(self, query: str) -> bool:
        query = query.strip().lower()
        return not query or query in self.name.lower() or query in self.slug or query in self.description.lower()

    @property
    def total_size(self) -> int:
        return sum(self.file_path(f).stat().st_size for f in self.files)


def _read_template(folder: Path) -> ProjectTemplate:
    meta_path = folder / "template.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateError(f"template {folder.name}: cannot read template.json: {exc}") from None
    missing = [key for key in ("name", "slug", "description", "default_script") if not isinstance(meta.get(key), str)]
    if missing:
        raise TemplateError(f"template {folder.name}: template.json lacks {', '.join(missing)}")
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or path.is_symlink() or any(part in SKIPPED or part.endswith(".pyc") for part in rel.parts):
            continue
        files.append(rel.as_posix())
    if meta["default_script"] not in files:
        raise TemplateError(f"template {folder.name}: default_script {meta['default_script']!r} is not one of its files")
    return ProjectTemplate(
        slug=meta["slug"], name=meta["name"], description=meta["description"],
        default_script=meta["default_script"], folder=folder, files=tuple(files),
    )


@lru_cache(maxsize=1)
def _load(root: str) -> dict[str, ProjectTemplate]:
    templates: dict[str, ProjectTemplate] = {}
    base = Path(root)
    if not base.is_dir():
        return templates
    for meta in sorted(base.glob("*/template.json")):
        template = _read_template(meta.parent)
        if template.slug in templates:
            raise TemplateError(f"two templates use the slug {template.slug!r}")
        templates[template.slug] = template
    return templates


def all_templates() -> list[ProjectTemplate]:
    """Every template, by name. Raises TemplateError when a template folder is broken."""
    return sorted(_load(str(TEMPLATES_DIR)).values(), key=lambda t: t.name)


def get_template(slug: str) -> ProjectTemplate | None:
    return _load(str(TEMPLATES_DIR)).get(slug)


def reload() -> list[ProjectTemplate]:
    _load.cache_clear()
    return all_templates()
