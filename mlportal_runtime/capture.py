"""Model data capture inside the scoring container (issue 16), standard library only.

Sampled requests become rows in a bounded spool shared by the server's worker processes: one SQLite
file (WAL, one connection per process, opened after the fork). Rows have consecutive sequence
numbers and only ever leave from the oldest end (acknowledged by the portal, or dropped when the
spool is full, which is counted), so the spool is always one contiguous range of sequence numbers.

The portal's worker pulls over the replica's published port with the internal key
(``POST /_mlportal/capture``): each pull carries the capture settings (so a change reaches running
replicas without a redeploy) and acknowledges the rows it has stored; rows are deleted only when
acknowledged, so a pull that is never acknowledged is answered again by the next one (at-least-once;
the portal de-duplicates by request id).
"""
from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import tempfile
import time
import uuid
from typing import Any

MODES = ("off", "inputs", "predictions", "both")
DEFAULT_SPOOL_ROWS = 10000
MAX_PULL_ROWS = 5000
MAX_SPOOL_ROWS = 1_000_000
SETTINGS_TTL = 1.0  # seconds a worker trusts its cached copy of the settings
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id when it is well formed (1-128 of A-Z a-z 0-9 . _ : -), else a new one."""
    if header and REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def check_settings(value: Any) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Validate {"mode", "percent", "spool_rows"?}; returns (settings, field errors).

    ``spool_rows``, when given, replaces the bound the container started with
    (MLPORTAL_CAPTURE_SPOOL_ROWS), so the portal's bound reaches running replicas with the next pull."""
    errors: dict[str, str] = {}
    if not isinstance(value, dict):
        return None, {"settings": 'send an object {"mode": "off|inputs|predictions|both", "percent": 0-100}'}
    mode = value.get("mode", "off")
    percent = value.get("percent", 100)
    spool_rows = value.get("spool_rows")
    if mode not in MODES:
        errors["mode"] = f"mode must be one of {', '.join(MODES)}"
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        errors["percent"] = "percent must be a number from 0 to 100"
    if spool_rows is not None and (isinstance(spool_rows, bool) or not isinstance(spool_rows, int)
                                   or not 1 <= spool_rows <= MAX_SPOOL_ROWS):
        errors["spool_rows"] = f"spool_rows must be a whole number from 1 to {MAX_SPOOL_ROWS}"
    if errors:
        return None, errors
    settings: dict[str, Any] = {"mode": mode, "percent": float(percent)}
    if spool_rows is not None:
        settings["spool_rows"] = spool_rows
    return settings, {}


def env_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings the container starts with (MLPORTAL_CAPTURE_MODE / _PERCENT); off when unset or bad."""
    env = os.environ if env is None else env
    raw = {"mode": env.get("MLPORTAL_CAPTURE_MODE", "off").strip() or "off"}
    try:
        raw["percent"] = float(env.get("MLPORTAL_CAPTURE_PERCENT", "100"))
    except ValueError:
        raw["percent"] = 100.0
    settings, errors = check_settings(raw)
    return settings if settings and not errors else {"mode": "off", "percent": 0.0}


def json_text(body: bytes | bytearray | memoryview) -> str | None:
    """The request body as the JSON text it already is, when it can go into a row unchanged: UTF-8
    without a BOM or NUL bytes (json.loads also takes UTF-16/32 and a BOM, which spliced into a
    row would break it). None: encode the parsed value instead."""
    try:
        text = (body if isinstance(body, (bytes, bytearray)) else bytes(body)).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text[:1] == "\ufeff" or "\x00" in text:
        return None
    return text


def row_text(fields: dict[str, Any], raw: dict[str, str]) -> str:
    """A spool row's JSON text: ``fields`` encoded, then each of ``raw`` (JSON text already: the
    request body, the answer) spliced in as it is, so neither is decoded and encoded again."""
    text = json.dumps(fields, default=str)
    if not raw:
        return text
    return text[:-1] + "".join(f',"{key}":{value}' for key, value in raw.items()) + "}"


class Spool:
    """The bounded spool; every method is safe to call from several processes at once."""

    def __init__(self, path: str | None = None, max_rows: int | None = None) -> None:
        folder = os.environ.get("MLPORTAL_CAPTURE_DIR") or tempfile.gettempdir()
        # The master names the file once (with its pid, so servers sharing a /tmp never meet) and
        # hands the name to the workers it forks through MLPORTAL_CAPTURE_FILE.
        self.path = path or os.environ.get("MLPORTAL_CAPTURE_FILE") or os.path.join(folder, f"mlportal-capture-{os.getpid()}.sqlite3")
        if max_rows is None:
            try:
                max_rows = int(os.environ.get("MLPORTAL_CAPTURE_SPOOL_ROWS", DEFAULT_SPOOL_ROWS))
            except ValueError:
                max_rows = DEFAULT_SPOOL_ROWS
        self.max_rows = max(1, max_rows)
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._settings: dict[str, Any] | None = None
        self._settings_at = 0.0

    def create(self, settings: dict[str, Any]) -> None:
        """Called once by the master before forking: a fresh spool with the starting settings."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
        os.environ["MLPORTAL_CAPTURE_FILE"] = self.path
        db = self._conn()
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS row (seq INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(settings),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped', '0')")
        db.close()
        self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # never share a connection across a fork
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")  # the spool lives as long as the container anyway
            self._pid = os.getpid()
        return self._db

    def settings(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._settings is None or now - self._settings_at > SETTINGS_TTL:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
            self._settings = json.loads(row[0]) if row else {"mode": "off", "percent": 0.0}
            self._settings_at = now
        return self._settings

    def sampled(self) -> str | None:
        """The mode to capture this request with, or None when it is not sampled."""
        settings = self.settings()
        mode = settings["mode"]
        if mode == "off" or random.random() * 100 >= settings["percent"]:
            return None
        return mode

    def bound(self) -> int:
        """The most rows the spool keeps: the portal's last word (settings), else the start value."""
        return self.settings().get("spool_rows") or self.max_rows

    def add(self, row: dict[str, Any] | str) -> None:
        """Spool one row (a dict, or its JSON text from ``row_text``); drops and counts the oldest
        rows past the bound in the same transaction."""
        data = row if isinstance(row, str) else json.dumps(row, default=str)
        bound = self.bound()
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = db.execute("INSERT INTO row (data) VALUES (?)", (data,)).lastrowid
            dropped = db.execute("DELETE FROM row WHERE seq <= ?", (seq - bound,)).rowcount
            if dropped > 0:
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped'", (dropped,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def pull(self, ack: int | None, settings: dict[str, Any] | None, limit: int) -> dict[str, Any]:
        """``pull_text`` decoded."""
        return json.loads(self.pull_text(ack, settings, limit))

    def pull_text(self, ack: int | None, settings: dict[str, Any] | None, limit: int) -> str:
        """Delete what `ack` acknowledges, store new settings, answer the oldest `limit` rows left
        as JSON text ({"rows": [{"seq", …the row}], "pending", "dropped", "settings", "spool_rows"}),
        each row's stored text spliced in with its sequence number, not decoded and encoded again."""
        db = self._conn()
        if ack is not None or settings is not None:
            # The write lock only for the writes: scoring workers wait on it (sleeping in SQLite's
            # busy handler, 1 ms at least), so the reading below must not hold it.
            db.execute("BEGIN IMMEDIATE")
            try:
                if ack is not None:
                    db.execute("DELETE FROM row WHERE seq <= ?", (ack,))
                if settings is not None:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(settings),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        db.execute("BEGIN")  # one WAL snapshot for rows, count and meta; writers go on meanwhile
        try:
            rows = db.execute("SELECT seq, data FROM row ORDER BY seq LIMIT ?", (limit,)).fetchall()
            pending = db.execute("SELECT COUNT(*) FROM row").fetchone()[0]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._settings = None
        stored = json.loads(meta["settings"])
        head = json.dumps({"pending": pending, "dropped": int(meta.get("dropped", 0)), "settings": stored,
                           "spool_rows": stored.get("spool_rows") or self.max_rows})
        # A row's text is an object with request_id first, so "{" + "seq" + its members is one too.
        return head[:-1] + ',"rows":[' + ",".join(f'{{"seq":{seq},{data[1:]}' for seq, data in rows) + "]}"
