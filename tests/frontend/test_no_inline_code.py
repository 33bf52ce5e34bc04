"""Templates hold markup only: no inline <script> (a json_script data block is data, not code), no
on…= event handler, no style="…" attribute, no javascript: URL — under the CSP each would simply not
run, so a page that relies on one is broken. Page behaviour goes in static/js/<page>.js."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = [REPO / "templates", *sorted(REPO.glob("*/templates"))]
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.I)
HANDLER = re.compile(r"""\son[a-z]+\s*=\s*["']""", re.I)
STYLE_ATTR = re.compile(r"""\sstyle\s*=\s*["']""", re.I)
STYLE_TAG = re.compile(r"<style\b", re.I)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']\s*javascript:""", re.I)


def templates() -> list[Path]:
    return [p for d in TEMPLATE_DIRS if d.is_dir() for p in sorted(d.rglob("*.html"))]


def problems_in(text: str) -> list[str]:
    found = []
    for match in SCRIPT_TAG.finditer(text):
        attrs = match.group(1)
        if "src=" not in attrs and 'type="application/json"' not in attrs:
            found.append(f"inline script: {match.group(0)}")
    found += [f"event handler: {m.group(0).strip()}" for m in HANDLER.finditer(text)]
    found += [f"style attribute: {m.group(0).strip()}" for m in STYLE_ATTR.finditer(text)]
    found += [f"style block: {m.group(0)}" for m in STYLE_TAG.finditer(text)]
    found += [f"javascript: URL: {m.group(0)}" for m in JS_URL.finditer(text)]
    return found


def test_the_checker_sees_each_kind_of_inline_code():
    for bad in ('<script>alert(1)</script>', '<form onsubmit="return confirm(1)">', '<div style="color:red">',
                "<style>p{}</style>", '<a href="javascript:void(0)">', "<button onclick='x()'>"):
        assert problems_in(bad), bad
    for good in ('<script src="/static/js/portal.js" defer></script>', '<div data-module="run-detail">',
                 '<p class="stylish">', '<a href="/runs/?on=1">'):
        assert not problems_in(good), good


def test_no_template_holds_inline_code():
    assert len(templates()) > 30
    found = {str(p.relative_to(REPO)): problems_in(p.read_text()) for p in templates()}
    assert {path: issues for path, issues in found.items() if issues} == {}


def test_every_page_module_a_template_names_is_registered_by_a_script_it_loads():
    registered = {}
    for script in sorted((REPO / "static" / "js").glob("*.js")):
        for name in re.findall(r'MLPortal\.register\("([a-z0-9-]+)"', script.read_text()):
            registered[name] = script.name
    assert {"run-detail", "image-detail", "service-detail", "metric-chart"} <= set(registered)
    for path in templates():
        text = path.read_text()
        for name in set(re.findall(r'data-module="([a-z0-9-]+)"', text)):
            assert name in registered, f"{path.name}: data-module={name} but no static/js file registers it"
            assert f"js/{registered[name]}" in text, f"{path.name} uses {name} but does not load js/{registered[name]}"


def test_tab_panels_are_not_hidden_in_the_markup():
    """Without JavaScript every panel must show (portal.js hides all but the chosen one)."""
    hidden_panels = {str(p.relative_to(REPO)): re.findall(r"<[a-z]+[^>]*data-panel=[^>]*\shidden[\s>]", p.read_text())
                     for p in templates()}
    assert {path: tags for path, tags in hidden_panels.items() if tags} == {}
