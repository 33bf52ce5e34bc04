"""Log text shown by the portal and the CLI cannot forge lines or drive a terminal (issue 13)."""

import pytest

from mlportal_runtime.logsafe import escape_controls
from mlportal_runtime.server import escape_log_bytes, json_deeper_than


@pytest.mark.parametrize("raw, shown", [
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # OSC: retitles the terminal
    ("\x1b[2J", "\\x1b[2J"),  # CSI: clears it
    ("ok\rforged", "ok\\x0dforged"),  # a bare CR overwrites the line
    ("a\x9bb", "a\\x9bb"),  # the one-character C1 CSI
    ("price \u202e1$", "price \\u202e1$"),  # a bidi override reorders what follows
    ("x\x00y\x7f", "x\\x00y\\x7f"),
])
def test_control_characters_are_written_out(raw, shown):
    assert escape_controls(raw) == shown


def test_lines_and_tabs_stay_and_crlf_becomes_lf():
    assert escape_controls("one\ttwo\r\nthree\n") == "one\ttwo\nthree\n"
    assert escape_controls("plain text, é ü 漢字") == "plain text, é ü 漢字"


def test_one_line_mode_escapes_the_newline_too():
    assert escape_controls("a\nb\tc", keep_newlines=False) == "a\\x0ab\\x09c"


def test_the_access_log_escapes_every_byte_that_is_not_printable_ascii():
    assert escape_log_bytes(b"/score?x=1") == b"/score?x=1"
    assert escape_log_bytes(b"/a\nw0 1.2.3.4 \"GET /forged\"") == b"/a\\x0aw0 1.2.3.4 \"GET /forged\""
    assert escape_log_bytes(b"/\x1b]0;x\x07\\") == b"/\\x1b]0;x\\x07\\x5c"
    assert escape_log_bytes(b"/\xc3\xa9") == b"/\\xc3\\xa9"


@pytest.mark.parametrize("body, deeper", [
    (b"[1, 2, 3]", False),
    (b'{"a": [[1], [2]], "b": {"c": []}}', False),
    (b"[" * 64 + b"]" * 64, False),
    (b"[" * 65 + b"]" * 65, True),
    (b"{\"a\":" * 65 + b"1" + b"}" * 65, True),
    (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string do not nest
    (b'["\\"' + b"[" * 500 + b'"]', False),  # nor after an escaped quote
    (b"[" + b"[], " * 5000 + b"[]]", False),  # many brackets, shallow
])
def test_json_depth_is_measured_outside_strings(body, deeper):
    assert json_deeper_than(body, 64) is deeper
