"""What a pickle names, read from its opcodes: nothing is ever unpickled.

The scoring server uses it to import a model's libraries once before forking its workers; the
portal uses it to tell which packages an image needs when a manifest lists none (a model pickled
by scikit-learn names ``sklearn.…`` classes and records the ``_sklearn_version`` it was made
with). Standard library only, like the rest of the runtime.
"""
from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import IO, Any

SCAN_MAX_BYTES = 32 * 1024 * 1024  # per file: genops reads each argument (array data too) into memory
SCAN_MAX_OPCODES = 2_000_000  # about 1 µs each

# Keys whose string value, stored beside them in an object's state, is the version of the package
# that pickled it.
VERSION_KEYS = {"_sklearn_version": "scikit-learn"}

_STRING_OPCODES = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                             "SHORT_BINUNICODE", "BINUNICODE8"})
_GET_OPCODES = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_NO_PUSH_OPCODES = frozenset({"PROTO", "FRAME", "MEMOIZE", "STOP"}) | _PUT_OPCODES


@dataclass
class PickleScan:
    """What one pickle names: modules in order of appearance (repeats kept), the versions found
    under VERSION_KEYS (distribution → version; the first one seen wins), opcodes read, and
    whether the scan reached the pickle's STOP (False when raw data, a cap or garbage ended it)."""

    modules: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    opcodes: int = 0
    complete: bool = False


class _Capped:
    """A read-only view of the first ``limit`` bytes of a file: genops then stops at the cap."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle = handle
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.handle.read(size)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.handle.readline(self.left)
        self.left -= len(data)
        return data


def scan_pickle(source: str | IO[bytes], max_bytes: int = SCAN_MAX_BYTES, max_opcodes: int = SCAN_MAX_OPCODES) -> PickleScan:
    """Return what the pickle at ``source`` (a path or a binary file object) names.

    GLOBAL and INST carry their module; STACK_GLOBAL takes it from the stack, so the two values
    pushed last are tracked, with the memo for strings fetched again by GET. A file that is not a
    pickle, is cut off by the caps, or holds raw data mid-stream (joblib's arrays) yields what was
    found before that point.
    """
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return scan_pickle(handle, max_bytes, max_opcodes)
    scan = PickleScan()
    memo: dict[int, Any] = {}
    last: list[Any] = [None, None]  # the two values pushed last; None for anything but a string
    try:
        for opcode, arg, _pos in pickletools.genops(_Capped(source, max_bytes)):
            scan.opcodes += 1
            if scan.opcodes > max_opcodes:
                break
            name = opcode.name
            if name == "STOP":
                scan.complete = True
                break
            if name in ("GLOBAL", "INST"):
                scan.modules.append(str(arg).split(" ", 1)[0])
            elif name == "STACK_GLOBAL":
                if isinstance(last[0], str):
                    scan.modules.append(last[0])
                last = [None, None]
            elif name == "MEMOIZE":
                memo[len(memo)] = last[1]
            elif name in _PUT_OPCODES:
                memo[arg] = last[1]
            if name in _NO_PUSH_OPCODES:
                continue
            value = arg if name in _STRING_OPCODES else memo.get(arg) if name in _GET_OPCODES else None
            if isinstance(value, str) and last[1] in VERSION_KEYS:
                scan.versions.setdefault(VERSION_KEYS[last[1]], value)
            last = [last[1], value]
    except Exception:  # noqa: BLE001 - a broken or foreign file only ends its scan
        pass
    return scan

