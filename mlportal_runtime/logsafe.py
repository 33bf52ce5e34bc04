"""Log text made safe to show: no byte of it can start a new line or drive a terminal.

Container logs, run logs and build logs hold what other people's code printed (a model's
``print``, a hostile request a server echoed). Shown raw, an ESC/OSC sequence retitles or clears
the owner's terminal (``mlportal service logs``), a bare CR overwrites a line, and a bidi control
reorders it. Plain Python, no Django: the portal, the compute layer and the CLI all use it.
"""

from __future__ import annotations

import re

# C0 controls but TAB and LF, DEL, C1 controls (U+0080-U+009F, e.g. the one-byte CSI), line and
# paragraph separators, and the bidi embedding/override/isolate controls.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = True) -> str:
    r"""Returns ``text`` with every control character written as ``\xNN`` (``\uNNNN`` above 0xFF).

    CRLF line ends become LF. With ``keep_newlines`` LF (and TAB) stay, so multi-line text keeps
    its lines; without it LF is escaped too, for one line that must stay one line. Text with
    nothing to escape comes back unchanged.
    """
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    if not keep_newlines and ("\n" in text or "\t" in text):
        text = text.replace("\t", "\\x09").replace("\n", "\\x0a")
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)
