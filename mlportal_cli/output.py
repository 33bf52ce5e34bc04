"""Printing results as `az` does: a readable table by default, `-o json` or `-o tsv`, and
`--query` (JMESPath) applied to the JSON before it is printed.

A command returns its data (the API's JSON) and, for lists, the columns its table shows. With
`--query`, the table's columns are those of the query's result instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import jmespath
import jmespath.exceptions

from mlportal_cli.client import CliError

FORMATS = ("table", "json", "tsv")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$")

Getter = Callable[[dict], Any]


@dataclass
class Column:
    header: str
    get: str | Getter  # a key (dotted for nested) or a function of the row

    def value(self, row: dict) -> Any:
        if callable(self.get):
            return self.get(row)
        value: Any = row
        for part in self.get.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


@dataclass
class Result:
    """What a command prints: `data` (JSON-able), the table's `columns` for a list, and `total`
    when a list was cut at --top (a note then says how many there are)."""

    data: Any
    columns: list[Column] | None = None
    total: int | None = None


def columns(*pairs: tuple[str, str | Getter]) -> list[Column]:
    return [Column(header, get) for header, get in pairs]


def cell(value: Any) -> str:
    """One value as table text: dates shortened to 'YYYY-MM-DD HH:MM:SS' (UTC), None empty,
    floats to 6 significant digits, nested values as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        match = _ISO.match(value)
        if match:
            return f"{match.group(1)} {match.group(2)}"
        return value.replace("\n", " ").replace("\t", " ")
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def apply_query(data: Any, query: str | None) -> Any:
    if not query:
        return data
    try:
        return jmespath.search(query, data)
    except jmespath.exceptions.JMESPathError as exc:
        raise CliError(f"--query {query!r} is not valid JMESPath: {' '.join(str(exc).split())}") from None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _auto_columns(rows: list[dict], *, nested: bool) -> list[Column]:
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in keys and (nested or _is_scalar(value)):
                keys.append(key)
    return [Column(key, key) for key in keys]


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """A detail object as (property, value) pairs: nested objects as `a.b`, lists of objects one
    line per item (`containers[0]`) with their scalar values as `key=value`."""
    pairs: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if value:
                pairs.extend(_flatten(value, f"{name}."))
            else:
                pairs.append((name, ""))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                summary = "  ".join(f"{k}={cell(v)}" for k, v in item.items() if _is_scalar(v) and v not in (None, ""))
                pairs.append((f"{name}[{i}]", summary))
        elif isinstance(value, list):
            pairs.append((name, ", ".join(cell(v) for v in value)))
        else:
            pairs.append((name, value))
    return pairs


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def format_result(result: Result, *, fmt: str, query: str | None) -> str:
    """The text to print for `result` (no trailing newline; empty for an empty table)."""
    data = apply_query(result.data, query)
    cols = None if query else result.columns
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        cols = cols or _auto_columns(data, nested=bool(query))
        rows = [[cell(c.value(r)) for c in cols] for r in data]
        if fmt == "tsv":
            return "\n".join("\t".join(row) for row in rows)
        return _table([c.header for c in cols], rows)
    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):  # e.g. --query "[].[name, role]"
        rows = [[cell(v) for v in r] for r in data]
        if fmt == "tsv":
            return "\n".join("\t".join(row) for row in rows)
        width = max(len(r) for r in rows)
        rows = [row + [""] * (width - len(row)) for row in rows]
        return _table([f"Column{i + 1}" for i in range(width)], rows)
    if isinstance(data, list):
        return "\n".join(cell(v) for v in data)
    if isinstance(data, dict):
        if cols:
            pairs = [(c.header, c.value(data)) for c in cols]
        else:
            pairs = _flatten(data)
        if fmt == "tsv":
            return "\t".join(cell(v) for _, v in pairs)
        width = max((len(k) for k, _ in pairs), default=0)
        return "\n".join(f"{k.ljust(width)}  {cell(v)}".rstrip() for k, v in pairs)
    return cell(data)


def emit(result: Result, *, fmt: str, query: str | None, out: TextIO, err: TextIO) -> None:
    text = format_result(result, fmt=fmt, query=query)
    if text:
        out.write(text + "\n")
    if result.total is not None and isinstance(result.data, list) and result.total > len(result.data):
        err.write(f"note: showing {len(result.data)} of {result.total}; use --top N to see more\n")
