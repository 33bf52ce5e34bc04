"""What a pickle names, read from its opcodes: nothing is ever unpickled.

The scoring server uses it to import a model's libraries once before forking its workers; the
portal uses it to tell which packages an image needs when a manifest lists none (a model pickled
by scikit-learn names ``sklearn.…`` classes and records the ``_sklearn_version`` it was made
with), and its model scanner (``registry.scanning``) to judge every global a model file names.
Standard library only, like the rest of the runtime.

``read_pickle`` runs the pickle machine symbolically: it keeps a stack and a memo of *descriptions*
(strings, numbers, small containers, "an object made by calling X") and never imports or calls
anything. So STACK_GLOBAL is resolved the way ``pickle.load`` would resolve it, whatever route its
two strings took (pushed, memoized and fetched again, duplicated, popped around), and a joblib file
is read the way ``joblib.load`` reads it: after each ``NumpyArrayWrapper`` the raw array bytes are
stepped over (their size comes from the wrapper's shape and dtype), and an object array's nested
pickle is read as a pickle of its own. Memory stays bounded: long strings and byte runs are skipped
in chunks and kept only as their size, containers keep their first items only, and the memo,
stack, line length and bytes read all have caps.
"""
from __future__ import annotations

import pickletools
import struct
from dataclasses import dataclass, field
from typing import IO, Any

SCAN_MAX_BYTES = 32 * 1024 * 1024  # per file, for the requirement inference and the scoring server
SCAN_MAX_OPCODES = 2_000_000  # about 1-2 µs each
MAX_KEPT_BYTES = 1024 * 1024  # a string or bytes value longer than this is stepped over, kept as its size
MAX_ITEMS = 64  # items a container keeps (it counts the others)
MAX_STACK = 200_000
MAX_MEMO = 1_000_000
MAX_LINE = 1024 * 1024  # protocol 0's text arguments
MAX_NESTED = 16  # nested pickles (pickle.loads payloads, joblib object arrays) followed per file
SKIP_CHUNK = 1024 * 1024

# Keys whose string value, stored beside them in an object's state, is the version of the package
# that pickled it.
VERSION_KEYS = {"_sklearn_version": "scikit-learn"}

# Callables that unpickle their bytes argument: the payload is read as a pickle too.
NESTED_LOADERS = frozenset({("pickle", "loads"), ("_pickle", "loads"), ("pickle", "_loads"), ("cPickle", "loads"),
                            ("dill", "loads"), ("dill._dill", "loads"), ("cloudpickle", "loads")})
COMPUTED = "<computed>"  # the module and name of a STACK_GLOBAL whose strings were built at load time


class ScanLimit(Exception):
    """A bound of the scan was reached: the rest of the file is unread."""


class Truncated(Exception):
    """The file ended inside the pickle."""


class Malformed(Exception):
    """Bytes that are not a valid pickle opcode or argument."""


@dataclass(frozen=True)
class Global:
    module: str
    name: str


class Made:
    """An object the pickle makes by calling (or instantiating) ``func``; ``state`` from BUILD."""

    __slots__ = ("func", "args", "state")

    def __init__(self, func: Any, args: Any) -> None:
        self.func, self.args, self.state = func, args, None


class Seq:
    """A tuple, list, set or dict: its first MAX_ITEMS items (pairs for a dict) and its length."""

    __slots__ = ("kind", "items", "count")

    def __init__(self, kind: str, items: list | None = None) -> None:
        self.kind, self.items, self.count = kind, [], 0
        for item in items or ():
            self.add(item)

    def add(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < MAX_ITEMS:
            self.items.append(item)

    def get(self, key: str) -> Any:
        for pair in self.items:
            if pair[0] == key:
                return pair[1]
        return None

    def keys(self) -> list:
        return [pair[0] for pair in self.items]


class Blob:
    """A string or bytes value too long to keep: only its size is."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


OPAQUE = object()  # persistent ids, out-of-band buffers, extension codes: nothing to read in them
_MARK = object()


@dataclass
class PickleRead:
    """What one pickle stream holds: the globals it names in order (repeats kept; STACK_GLOBALs whose
    strings were built at load time as ``(COMPUTED, COMPUTED)``), the package versions found under
    VERSION_KEYS, the payloads of nested ``pickle.loads`` calls (bytes), the joblib arrays stepped
    over, the opcodes read, the protocol, and why it stopped before STOP (``error``, with ``limit``
    True when a bound of the scan ended it rather than the file)."""

    globals: list[tuple[str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    nested: list[bytes] = field(default_factory=list)
    arrays: int = 0
    opcodes: int = 0
    protocol: int = 0
    complete: bool = False
    error: str = ""
    limit: bool = False
    start: int = 0
    end: int = 0

    @property
    def modules(self) -> list[str]:
        return [module for module, _ in self.globals if module != COMPUTED]


class Source:
    """A read-only view of a binary stream that counts the bytes read and stops at ``max_bytes``;
    ``unread`` gives bytes back (to look at the byte after a STOP)."""

    def __init__(self, handle: IO[bytes], max_bytes: int) -> None:
        self.handle = handle
        self.left = max_bytes
        self.max_bytes = max_bytes
        self.pos = 0
        self.pushback = b""

    def _raw(self, size: int) -> bytes:
        data = b""
        if self.pushback:
            data, self.pushback = self.pushback[:size], self.pushback[size:]
        if len(data) < size:
            data += self.handle.read(size - len(data))
        self.left -= len(data)
        self.pos += len(data)
        return data

    def unread(self, data: bytes) -> None:
        self.pushback = data + self.pushback
        self.left += len(data)
        self.pos -= len(data)

    def read(self, size: int) -> bytes:
        if size > self.left:
            raise ScanLimit(f"it is over the scan's bound of {self.max_bytes} bytes")
        data = self._raw(size)
        if len(data) < size:
            raise Truncated(f"it ends at byte {self.pos}, inside the pickle (no STOP opcode)")
        return data

    def peek1(self) -> bytes:
        """The next byte, consumed (b'' at the end of the file); ScanLimit past the bound."""
        if self.left > 0:
            return self._raw(1)
        if self.pushback or self.handle.read(1):
            raise ScanLimit(f"it is over the scan's bound of {self.max_bytes} bytes")
        return b""

    def skip(self, size: int) -> None:
        while size > 0:
            step = min(size, SKIP_CHUNK)
            self.read(step)
            size -= step

    def readline(self) -> bytes:
        limit = min(MAX_LINE, self.left)
        head = b""
        if self.pushback:
            cut = self.pushback.find(b"\n")
            if cut >= 0:
                return self._raw(cut + 1)
            head = self._raw(len(self.pushback))
        data = head + self.handle.readline(max(limit + 1 - len(head), 0))
        self.left -= len(data) - len(head)
        self.pos += len(data) - len(head)
        if not data.endswith(b"\n"):
            if len(data) > limit and limit == MAX_LINE:
                raise ScanLimit(f"a text argument at byte {self.pos} is over {MAX_LINE} bytes")
            if self.left <= 0:
                raise ScanLimit(f"it is over the scan's bound of {self.max_bytes} bytes")
            raise Truncated(f"it ends at byte {self.pos}, inside the pickle (no STOP opcode)")
        return data


def _decode_nl(raw: bytes) -> str:
    return raw[:-1].decode("utf-8", "replace")


def _string_nl(raw: bytes) -> str:
    """Protocol 0's STRING argument: a quoted, escaped repr."""
    text = raw[:-1].rstrip(b"\r")
    if len(text) >= 2 and text[:1] == text[-1:] and text[:1] in (b"'", b'"'):
        text = text[1:-1]
    else:
        raise Malformed("a STRING argument is not quoted")
    try:
        return text.decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return text.decode("latin-1")


_CODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH = {"string1": ("<B", "str"), "string4": ("<i", "str"), "bytes1": ("<B", "bytes"), "bytes4": ("<I", "bytes"),
           "bytes8": ("<Q", "bytes"), "bytearray8": ("<Q", "bytes"), "unicodestring1": ("<B", "unicode"),
           "unicodestring4": ("<I", "unicode"), "unicodestring8": ("<Q", "unicode")}
_FIXED = {name: struct.Struct(fmt) for name, fmt in
          {"uint1": "<B", "uint2": "<H", "int4": "<i", "uint4": "<I", "uint8": "<Q", "float8": ">d"}.items()}
_LENGTH = {name: (struct.Struct(fmt), kind) for name, (fmt, kind) in _LENGTH.items()}
# Opcodes that only push their argument (numbers, strings, bytes): the commonest, so read first.
_PUSH_ARG = frozenset(op.name for op in pickletools.opcodes if op.arg is not None and op.stack_before == []
                      and len(op.stack_after) == 1 and op.name not in ("GET", "BINGET", "LONG_BINGET", "PERSID", "EXT1",
                                                                       "EXT2", "EXT4", "GLOBAL"))


def _read_arg(op, src: Source) -> Any:
    arg = op.arg
    if arg is None:
        return None
    name = arg.name
    fixed = _FIXED.get(name)
    if fixed is not None:
        return fixed.unpack(src.read(fixed.size))[0]
    if name in _LENGTH:
        fmt, kind = _LENGTH[name]
        size = fmt.unpack(src.read(fmt.size))[0]
        if size < 0:
            raise Malformed(f"a negative length at byte {src.pos}")
        if size > MAX_KEPT_BYTES:
            src.skip(size)
            return Blob(size)
        data = src.read(size)
        if kind == "bytes":
            return data
        return data.decode("utf-8" if kind == "unicode" else "latin-1", "replace")
    if name in ("long1", "long4"):
        size = struct.unpack("<B" if name == "long1" else "<i", src.read(1 if name == "long1" else 4))[0]
        if size < 0:
            raise Malformed(f"a LONG of negative length at byte {src.pos}")
        if size > 64:  # a number this long is stepped over: no verdict depends on it
            src.skip(size)
            return Blob(size)
        return int.from_bytes(src.read(size), "little", signed=True)
    raw = src.readline()
    if name == "stringnl_noescape_pair":
        return f"{_decode_nl(raw)} {_decode_nl(src.readline())}"
    if name == "stringnl_noescape":
        return _decode_nl(raw)
    if name == "stringnl":
        return _string_nl(raw)
    if name == "unicodestringnl":
        return raw[:-1].decode("raw-unicode-escape", "replace")
    text = raw[:-1].strip()
    try:
        if name == "floatnl":
            return float(text)
        if text.endswith(b"L"):
            text = text[:-1]
        if text in (b"00", b"01"):
            return text == b"01"
        return int(text)
    except ValueError:
        raise Malformed(f"a number argument {text[:20]!r} at byte {src.pos}") from None


def _bytes_of(value: Any) -> bytes | None:
    """The bytes a value stands for: bytes, or protocol 2's ``_codecs.encode(text, 'latin1')``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, Made) and value.func == Global("_codecs", "encode") and isinstance(value.args, Seq):
        items = value.args.items
        if items and isinstance(items[0], str):
            try:
                return items[0].encode("latin-1")
            except UnicodeEncodeError:
                return None
    return None


def _dtype_facts(value: Any) -> tuple[int, bool] | None:
    """(item size in bytes, holds Python objects) of a pickled numpy dtype; None when unreadable."""
    if not isinstance(value, Made) or not isinstance(value.func, Global) or value.func.name != "dtype":
        return None
    args = value.args.items if isinstance(value.args, Seq) else []
    code = args[0] if args and isinstance(args[0], str) else None
    if code is None:
        return None
    state = value.state.items if isinstance(value.state, Seq) else []
    objects = code.lstrip("<>|=").startswith("O")
    if len(state) > 4 and isinstance(state[4], Seq) and state[4].kind == "dict":  # fields of a structured dtype
        for _, spec in state[4].items:
            inner = spec.items[0] if isinstance(spec, Seq) and spec.items else None
            facts = _dtype_facts(inner)
            if facts is None or facts[1]:
                objects = True
    if len(state) > 5 and isinstance(state[5], int) and not isinstance(state[5], bool) and state[5] > 0:
        return state[5], objects
    digits = "".join(c for c in code if c.isdigit())
    if code.lstrip("<>|=")[:1] == "b" and not digits:
        return 1, objects
    if not digits:
        return None
    return int(digits), objects


def _array_layout(state: Any) -> tuple[int, bool, bool] | None:
    """(bytes of raw data, holds objects, has a padding byte) of a joblib NumpyArrayWrapper's state."""
    if not isinstance(state, Seq) or state.kind != "dict":
        return None
    shape, facts = state.get("shape"), _dtype_facts(state.get("dtype"))
    if not isinstance(shape, Seq) or facts is None:
        return None
    count = 1
    for dim in shape.items:
        if not isinstance(dim, int) or dim < 0:
            return None
        count *= dim
    if shape.count != len(shape.items):
        return None
    padded = "numpy_array_alignment_bytes" in state.keys() and state.get("numpy_array_alignment_bytes") is not None
    return count * facts[0], facts[1], padded


def _is_array_wrapper(obj: Any) -> bool:
    func = obj.func if isinstance(obj, Made) else None
    return isinstance(func, Global) and func.name == "NumpyArrayWrapper" and func.module.endswith("numpy_pickle")


def read_pickle(src: Source, *, max_opcodes: int = SCAN_MAX_OPCODES, joblib: bool = True,
                _depth: int = 0) -> PickleRead:
    """Reads one pickle stream from ``src`` up to its STOP; returns what it names (see PickleRead).

    Never raises for what is in the file: a truncated, malformed or over-bound stream ends the read
    with ``error`` saying why. ``joblib`` reads NumpyArrayWrapper arrays as joblib.load does."""
    read = PickleRead(start=src.pos)
    try:
        _run(src, read, max_opcodes=max_opcodes, joblib=joblib, depth=_depth)
    except ScanLimit as exc:
        read.error, read.limit = str(exc), True
    except (Truncated, Malformed) as exc:
        read.error = str(exc)
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, struct.error, RecursionError) as exc:
        read.error = f"the pickle is malformed near byte {src.pos} ({type(exc).__name__})"
    read.end = src.pos
    return read


def _run(src: Source, read: PickleRead, *, max_opcodes: int, joblib: bool, depth: int) -> None:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list:
        if not marks:
            raise Malformed(f"a MARK is missing before byte {src.pos}")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def push(value: Any) -> None:
        if len(stack) >= MAX_STACK:
            raise ScanLimit(f"the pickle's stack is over {MAX_STACK} items")
        stack.append(value)

    def note_versions(pairs) -> None:
        for key, value in pairs:
            if isinstance(key, str) and key in VERSION_KEYS and isinstance(value, str):
                read.versions.setdefault(VERSION_KEYS[key], value)

    def called(func: Any, args: Any) -> Made:
        if isinstance(func, Global) and (func.module, func.name) in NESTED_LOADERS and isinstance(args, Seq) and args.items:
            payload = _bytes_of(args.items[0])
            if payload is not None and len(read.nested) < MAX_NESTED:
                read.nested.append(payload)
        return Made(func, args)

    while True:
        code = src.peek1()
        if not code:
            if read.opcodes == 0:
                raise Truncated("the file is empty")
            raise Truncated(f"the file ends at byte {src.pos}, inside the pickle (no STOP opcode)")
        op = _CODES.get(code)
        if op is None:
            raise Malformed(f"byte {src.pos - 1} ({code!r}) is not a pickle opcode")
        read.opcodes += 1
        if read.opcodes > max_opcodes:
            raise ScanLimit(f"the pickle is over the scan's bound of {max_opcodes} opcodes")
        arg = _read_arg(op, src)
        name = op.name
        if name in _PUSH_ARG:
            if len(stack) >= MAX_STACK:
                raise ScanLimit(f"the pickle's stack is over {MAX_STACK} items")
            stack.append(arg)
            continue
        if name == "MEMOIZE" or name == "BINPUT":
            if len(memo) >= MAX_MEMO:
                raise ScanLimit(f"the pickle's memo is over {MAX_MEMO} entries")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name == "STOP":
            read.complete = True
            return
        if name == "PROTO":
            read.protocol = arg
        elif name in ("FRAME",):
            pass
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "POP":  # right after a MARK it drops the mark, as pickle.load does
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            push(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if len(memo) >= MAX_MEMO:
                raise ScanLimit(f"the pickle's memo is over {MAX_MEMO} entries")
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            if len(memo) >= MAX_MEMO:
                raise ScanLimit(f"the pickle's memo is over {MAX_MEMO} entries")
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise Malformed(f"memo entry {arg} is fetched before it is stored")
            push(memo[int(arg)])
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            read.globals.append((module, attr))
            if name == "GLOBAL":
                push(Global(module, attr))
            else:
                push(called(Global(module, attr), Seq("tuple", pop_mark())))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            if isinstance(module, str) and isinstance(attr, str):
                read.globals.append((module, attr))
                push(Global(module, attr))
            else:
                read.globals.append((COMPUTED, COMPUTED))
                push(Global(COMPUTED, COMPUTED))
        elif name == "REDUCE":
            args = stack.pop()
            push(called(stack.pop(), args))
        elif name == "NEWOBJ":
            args = stack.pop()
            push(Made(stack.pop(), args))
        elif name == "NEWOBJ_EX":
            stack.pop()
            args = stack.pop()
            push(Made(stack.pop(), args))
        elif name == "OBJ":
            items = pop_mark()
            push(called(items[0], Seq("tuple", items[1:])))
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if isinstance(state, Seq) and state.kind == "dict":
                note_versions(state.items)
            if isinstance(obj, Made):
                obj.state = state
                if joblib and _is_array_wrapper(obj):
                    _step_over_array(src, read, obj.state, max_opcodes=max_opcodes, depth=depth)
        elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            push(Seq(name[6:].lower()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            push(Seq("tuple", items))
        elif name == "TUPLE":
            push(Seq("tuple", pop_mark()))
        elif name == "LIST":
            push(Seq("list", pop_mark()))
        elif name == "FROZENSET":
            push(Seq("set", pop_mark()))
        elif name == "DICT":
            items = pop_mark()
            pairs = list(zip(items[::2], items[1::2]))
            note_versions(pairs)
            push(Seq("dict", pairs))
        elif name == "APPEND":
            item = stack.pop()
            _add(stack[-1], [item])
        elif name in ("APPENDS", "ADDITEMS"):
            items = pop_mark()
            _add(stack[-1], items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            note_versions([(key, value)])
            _add(stack[-1], [(key, value)])
        elif name == "SETITEMS":
            items = pop_mark()
            pairs = list(zip(items[::2], items[1::2]))
            note_versions(pairs)
            _add(stack[-1], pairs)
        elif name in ("PERSID",):
            push(OPAQUE)
        elif name == "BINPERSID":
            stack.pop()
            push(OPAQUE)
        elif name in ("EXT1", "EXT2", "EXT4"):
            read.globals.append(("copyreg", f"extension code {arg}"))
            push(OPAQUE)
        elif name == "NEXT_BUFFER":
            push(OPAQUE)
        elif name == "READONLY_BUFFER":
            pass
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            push({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        else:  # numbers, strings, bytes
            push(arg)


def _add(container: Any, items: list) -> None:
    if isinstance(container, Seq):
        for item in items:
            container.add(item)


def _step_over_array(src: Source, read: PickleRead, state: Any, *, max_opcodes: int, depth: int) -> None:
    """Steps over the array joblib wrote right after a NumpyArrayWrapper: raw bytes (with joblib ≥ 1.2's
    padding), or, for an object array, a nested pickle, read like any other."""
    layout = _array_layout(state)
    if layout is None:
        raise Malformed(f"a joblib array at byte {src.pos} has a shape or dtype the scan cannot read")
    size, objects, padded = layout
    read.arrays += 1
    if objects:
        if depth >= MAX_NESTED:
            raise ScanLimit(f"over {MAX_NESTED} nested pickles")
        inner = read_pickle(src, max_opcodes=max(max_opcodes - read.opcodes, 1), joblib=True, _depth=depth + 1)
        read.globals += inner.globals
        read.nested += inner.nested[: MAX_NESTED - len(read.nested)]
        read.opcodes += inner.opcodes
        for key, value in inner.versions.items():
            read.versions.setdefault(key, value)
        if not inner.complete:
            if inner.limit:
                raise ScanLimit(inner.error)
            raise Truncated(inner.error)
        return
    if padded:
        pad = src.read(1)[0]
        src.skip(pad)
    src.skip(size)


@dataclass
class PickleScan:
    """What one pickle names: modules in order of appearance (repeats kept), the versions found
    under VERSION_KEYS (distribution → version; the first one seen wins), opcodes read, and
    whether the scan reached the pickle's STOP (False when garbage, the end of the file or a cap
    ended it)."""

    modules: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    opcodes: int = 0
    complete: bool = False


def scan_pickle(source: str | IO[bytes], max_bytes: int = SCAN_MAX_BYTES, max_opcodes: int = SCAN_MAX_OPCODES) -> PickleScan:
    """Return what the pickle at ``source`` (a path or a binary file object) names.

    A file that is not a pickle, or is cut off by the caps, yields what was found before that
    point; a joblib file's arrays are stepped over, so the globals after them count too."""
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return scan_pickle(handle, max_bytes, max_opcodes)
    read = read_pickle(Source(source, max_bytes), max_opcodes=max_opcodes)
    return PickleScan(modules=read.modules, versions=dict(read.versions), opcodes=read.opcodes, complete=read.complete)
