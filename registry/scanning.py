"""Model files judged from their opcodes, never loaded: the verdict a model version carries.

Pure Python with no Django import (the registry calls it with its settings; tests call it on files).
A file is read as a stream with bounded memory (see ``mlportal_runtime.pickles.read_pickle``):

- a pickle (protocols 0 to 5, several pickles one after another as ``torch.save``'s legacy format
  writes them), a joblib file (arrays stepped over, object arrays read as the nested pickles they
  are; zlib, gzip, bz2 and xz compression undone on the fly), a numpy ``.npy`` file (its pickle, when
  it holds objects);
- zip and tar archives (PyTorch's ``.pt`` zips, ``.npz``, ``.tar.gz`` bundles), one level of
  archive inside another: each member that is a pickle (by its name or its first bytes) is read.

Each global the file names is classified against a deny list (what executes or reaches the system,
always dangerous) and an allow list (model libraries and harmless builtins; a portal administrator
extends it). The file's verdict is ``dangerous`` when any global is, ``not_scanned`` when some part
could not be read (``reason`` says why), ``unknown`` when a global is on neither list, ``safe``
otherwise. A file in none of these formats is ``not_scanned`` with reason code ``not_pickle``: it
holds no pickle the scanner knows of.

Longer than 500 lines on purpose: one pure reader of every container format above, whose parts
share the bounded stream and the classification; it has no Django side to split off.
"""
from __future__ import annotations

import _compat_pickle
import ast
import bz2
import gzip
import io
import lzma
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

from mlportal_runtime.pickles import COMPUTED, ScanLimit, Source, read_pickle

SAFE, UNKNOWN, DANGEROUS, NOT_SCANNED = "safe", "unknown", "dangerous", "not_scanned"
VERDICTS = (SAFE, UNKNOWN, DANGEROUS, NOT_SCANNED)
SCANNER_VERSION = 1

# Reason codes of a not_scanned verdict. NOT_PICKLE is the only one a manifest lets through without a
# confirmation: every other one means part of a pickle went unread.
NOT_PICKLE, TRUNCATED, DAMAGED, OVER_BOUND, TOO_MANY_MEMBERS = "not_pickle", "truncated", "damaged", "over_bound", "too_many_members"

# Modules whose every global executes code or reaches the system (files, processes, network,
# interpreter state, another unpickler). A submodule counts as its package.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "socket", "_socket", "shutil",
    "importlib", "runpy", "pickle", "_pickle", "cPickle", "pickletools", "dill", "cloudpickle", "marshal", "shelve",
    "ctypes", "_ctypes", "pty", "commands", "code", "codeop", "webbrowser", "multiprocessing", "asyncio", "signal",
    "threading", "_thread", "tempfile", "glob", "pdb", "bdb", "timeit", "profile", "cProfile", "trace", "types",
    "requests", "urllib", "urllib2", "urllib3", "http", "httplib", "httpx", "aiohttp", "ftplib", "smtplib", "telnetlib",
    "pip", "setuptools", "distutils", "venv", "ensurepip", "zipimport", "pkgutil", "platform", "site", "gc", "inspect",
})
# Globals of otherwise harmless (or allowed) modules that execute code, read files or unpickle.
DANGEROUS_GLOBALS = {
    "builtins": {"eval", "exec", "execfile", "compile", "open", "input", "__import__", "getattr", "setattr", "delattr",
                 "globals", "locals", "vars", "breakpoint", "apply", "file", "reload", "memoryview", "exit", "quit",
                 "help", "__loader__", "__builtins__"},
    "io": {"open", "open_code", "FileIO", "BufferedReader", "BufferedWriter", "TextIOWrapper"},
    "_io": {"open", "open_code", "FileIO"},
    "operator": {"attrgetter", "methodcaller", "itemgetter"},
    "_operator": {"attrgetter", "methodcaller", "itemgetter"},
    "functools": {"reduce"},
    "numpy": {"load", "loads", "fromfile", "memmap", "save", "savez", "savetxt", "loadtxt", "genfromtxt"},
    "numpy.lib.npyio": {"load", "loadtxt", "genfromtxt"},
    "numpy.testing": None, "numpy.f2py": None, "numpy.distutils": None, "numpy.ctypeslib": None,
    "pandas": {"read_pickle", "read_csv", "read_table", "read_parquet", "eval", "read_sql", "read_sql_query"},
    "pandas.io.pickle": {"read_pickle"}, "pandas.core.computation": None, "pandas._testing": None,
    "pandas.util._tester": None, "sklearn.utils._testing": None,
    "joblib": {"load", "Parallel", "delayed"},
    "joblib.numpy_pickle": {"load"},
    "joblib.parallel": None, "joblib._parallel_backends": None, "joblib.externals": None,
    "sklearn.externals.joblib": {"load"},
    "torch": {"load", "hub"}, "torch.hub": None, "torch.serialization": {"load"}, "torch._inductor": None,
    "torch.jit": None, "torch.utils.cpp_extension": None, "torch.fx": None, "torch._dynamo": None, "torch.package": None,
    "torch.distributed": None, "torch.multiprocessing": None, "torch.utils.data": None, "torch.testing": None,
    "scipy.weave": None, "scipy.io": {"loadmat"},
}
# What a model library pickle needs: whole packages (a submodule counts as its package) and single
# globals as "module:name".
DEFAULT_ALLOW = (
    "sklearn", "numpy", "scipy", "pandas", "joblib", "xgboost", "lightgbm", "catboost", "statsmodels", "torch",
    "pytz", "dateutil",
    "builtins:object", "builtins:set", "builtins:frozenset", "builtins:list", "builtins:dict", "builtins:tuple",
    "builtins:int", "builtins:float", "builtins:complex", "builtins:bool", "builtins:str", "builtins:bytes",
    "builtins:bytearray", "builtins:slice", "builtins:range", "builtins:NoneType", "builtins:Ellipsis",
    "builtins:NotImplemented",
    "copyreg:_reconstructor", "copyreg:__newobj__", "copyreg:__newobj_ex__", "_codecs:encode",
    "collections:OrderedDict", "collections:defaultdict", "collections:deque", "collections:Counter",
    "datetime:datetime", "datetime:date", "datetime:time", "datetime:timedelta", "datetime:timezone",
    "decimal:Decimal", "fractions:Fraction", "uuid:UUID", "enum:Enum",
)
# Framework label: the first of these packages the file references (scikit-learn first: a pipeline
# that wraps an xgboost estimator is a scikit-learn model).
FRAMEWORK_PACKAGES = (("sklearn", "scikit-learn"), ("xgboost", "xgboost"), ("lightgbm", "lightgbm"),
                      ("catboost", "catboost"), ("torch", "pytorch"), ("keras", "keras"), ("tensorflow", "tensorflow"),
                      ("statsmodels", "statsmodels"))
UNKNOWN_FRAMEWORK = "unknown"

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pck", ".joblib", ".sav", ".dill", ".p", ".pt", ".pth", ".ckpt", ".bin", ".npy",
                   ".data", ".dat", ".model")
ARCHIVE_SUFFIXES = (".zip", ".npz", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".pt", ".pth", ".mar", ".nemo")


@dataclass(frozen=True)
class Limits:
    """The scan's bounds: bytes read per file or member (after decompression), bytes read in all,
    opcodes per pickle, members per archive."""

    max_bytes: int = 1024 * 1024 * 1024
    max_total_bytes: int = 4 * 1024 * 1024 * 1024
    max_opcodes: int = 2_000_000
    max_members: int = 1000


@dataclass
class Finding:
    module: str
    name: str
    verdict: str
    where: str = ""  # the archive member or nested pickle it is in ("" for the file itself)
    why: str = ""
    count: int = 1

    @property
    def ref(self) -> str:
        return f"{self.module}.{self.name}" if self.module != COMPUTED else COMPUTED

    def as_json(self) -> dict:
        return {"module": self.module, "name": self.name, "global": self.ref, "verdict": self.verdict,
                "where": self.where, "why": self.why, "count": self.count}


@dataclass
class ScanResult:
    """The verdict of one file and what it rests on. ``globals`` lists each global once per place,
    worst first; ``reason`` is one sentence a person can act on; ``reason_code`` is stable."""

    verdict: str = NOT_SCANNED
    reason: str = ""
    reason_code: str = ""
    format: str = ""
    findings: list[Finding] = field(default_factory=list)
    framework: str = UNKNOWN_FRAMEWORK
    framework_version: str = ""
    pickles: int = 0
    members: int = 0
    bytes_read: int = 0

    needs_confirmation: bool = False  # unknown, or a part unread that could hold code: a manifest asks first

    def globals_json(self) -> list[dict]:
        return [f.as_json() for f in self.findings]

    def named(self, verdict: str) -> list[str]:
        return list(dict.fromkeys(f.ref for f in self.findings if f.verdict == verdict))


# --- classifying one global ------------------------------------------------------------------------

def parse_allow(entries) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """(packages, single globals) from entries like ``sklearn`` or ``builtins:set``; blanks skipped.
    Raises ValueError naming an entry that is neither."""
    packages, names = set(), set()
    for raw in entries:
        entry = str(raw).strip()
        if not entry:
            continue
        module, sep, name = entry.partition(":")
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts) or (sep and not all(p.isidentifier() for p in name.split("."))):
            raise ValueError(f"{entry!r} is not a package (like 'mypackage') or a global (like 'mymodule:MyClass')")
        if sep:
            names.add((module, name))
        else:
            packages.add(module)
    return frozenset(packages), frozenset(names)


def _in_package(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _denied(module: str, name: str) -> str:
    """Why (module, name) is dangerous, or ''."""
    if module == COMPUTED:
        return "a STACK_GLOBAL whose module or name is built while loading, to hide what it names"
    if _in_package(module, DANGEROUS_MODULES) or f"{module}.{name}" in DANGEROUS_MODULES:
        return f"the {module.split('.')[0]} module runs commands or reaches the system"
    for denied, names in DANGEROUS_GLOBALS.items():
        if names is None and _in_package(module, (denied,)):
            return f"{denied} runs code or reads files"
        if names is not None and module == denied and name in names:
            return f"{module}.{name} runs code, reads files or loads another pickle"
    if "." in name:
        reached = [p for p in name.split(".") if p in DANGEROUS_MODULES or p in DANGEROUS_GLOBALS["builtins"]]
        if reached:
            return f"its dotted name {name!r} reaches {reached[0]} through {module}'s attributes"
    return ""


def classify(module: str, name: str, allow) -> tuple[str, str]:
    """(verdict, why) of one global. ``allow`` is what parse_allow returns. Pickle's protocol-2
    renames (``__builtin__`` → ``builtins``, ``commands`` → ``subprocess``…) count under both names."""
    packages, names = allow
    candidates = [(module, name)]
    mapped = _compat_pickle.NAME_MAPPING.get((module, name))
    if mapped:
        candidates.append(mapped)
    elif module in _compat_pickle.IMPORT_MAPPING:
        candidates.append((_compat_pickle.IMPORT_MAPPING[module], name))
    for mod, attr in candidates:
        why = _denied(mod, attr)
        if why:
            return DANGEROUS, why
    for mod, attr in candidates:
        if "." in attr:
            return UNKNOWN, f"its dotted name reaches through {mod}'s attributes"
        if (mod, attr) in names or _in_package(mod, packages):
            return SAFE, ""
    if module == "__main__":
        return UNKNOWN, "a class of the script that pickled it: score.py must define it"
    return UNKNOWN, f"{module} is not on the portal's list of model libraries"


# --- reading files ---------------------------------------------------------------------------------

class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were read already (to tell its format) and are read again."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self.head = self.head + self.rest.read(), b""
            return data
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            if len(data) < size:
                data += self.rest.read(size - len(data))
            return data
        return self.rest.read(size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        if self.head:
            cut = self.head.find(b"\n")
            if cut >= 0 and (size is None or size < 0 or cut < size):
                data, self.head = self.head[: cut + 1], self.head[cut + 1:]
                return data
            if size is not None and 0 <= size <= len(self.head):
                data, self.head = self.head[:size], self.head[size:]
                return data
            data, self.head = self.head, b""
            more = self.rest.readline(-1 if size is None or size < 0 else size - len(data))
            return data + more
        return self.rest.readline(size)


class _Counted(io.RawIOBase):
    """Counts bytes read through it against the scan's total; ScanLimit beyond it."""

    def __init__(self, handle: IO[bytes], budget: list[int], bound: int) -> None:
        self.handle, self.budget, self.bound = handle, budget, bound

    def readable(self) -> bool:
        return True

    def _count(self, data: bytes) -> bytes:
        self.budget[0] -= len(data)
        if self.budget[0] < 0:
            raise ScanLimit(f"the file holds over {self.bound} bytes once unpacked, the scan's bound")
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self.handle.read(size))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        return self._count(self.handle.readline(size))


def _decompressor(head: bytes):
    if head[:2] == b"\x1f\x8b":
        return "gzip", lambda h: gzip.GzipFile(fileobj=h, mode="rb")
    if head[:3] == b"BZh":
        return "bz2", lambda h: bz2.BZ2File(h, mode="rb")
    if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"]\x00\x00":
        return "xz", lambda h: lzma.LZMAFile(h, mode="rb")
    if head[:1] == b"\x78" and len(head) > 1 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib", lambda h: _ZlibReader(h)
    return None, None


class _ZlibReader(io.RawIOBase):
    """A raw zlib stream (joblib's compress=N default) read in chunks."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.inflate, self.buffer = handle, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.buffer:
            if self.inflate.unconsumed_tail:
                self.buffer = self.inflate.decompress(self.inflate.unconsumed_tail, 1024 * 1024)
            elif self.inflate.eof:
                return 0
            else:
                chunk = self.handle.read(64 * 1024)
                if not chunk:
                    raise EOFError("the compressed stream ends early")
                self.buffer = self.inflate.decompress(chunk, 1024 * 1024)
        size = min(len(buffer), len(self.buffer))
        buffer[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


class _Scan:
    def __init__(self, limits: Limits, allow) -> None:
        self.limits, self.allow = limits, allow
        self.result = ScanResult()
        self.problems: list[tuple[str, str, bool]] = []
        self.found: dict[tuple[str, str, str], Finding] = {}
        self.versions: dict[str, str] = {}
        self.modules: set[str] = set()
        self.budget = [limits.max_total_bytes]
        self.saw_pickle = False
        self.numbers_only = False

    def problem(self, code: str, text: str, *, risky: bool = True) -> None:
        """Notes a part left unread; ``risky`` when that part could hold code pickle.load would run."""
        self.problems.append((code, text, risky and code != NOT_PICKLE))

    def add_global(self, module: str, name: str, where: str) -> None:
        key = (module, name, where)
        if key in self.found:
            self.found[key].count += 1
            return
        verdict, why = classify(module, name, self.allow)
        self.found[key] = Finding(module, name, verdict, where, why)
        if module != COMPUTED:
            self.modules.add(module.split(".", 1)[0])

    # One stream, whatever it holds.
    def stream(self, handle: IO[bytes], *, where: str, name: str, depth: int, member: bool = False, rewind=None) -> str:
        """Reads ``handle``; returns its format ('' when none the scanner knows). ``rewind()``, when
        given, returns the same stream, seekable, at its start (a zip archive is read from its end)."""
        if rewind is None:
            try:
                if handle.seekable():
                    start = handle.tell()
                    rewind = lambda h=handle, at=start: (h.seek(at), h)[1]  # noqa: E731
            except (OSError, ValueError, AttributeError):
                rewind = None
        handle = _Counted(handle, self.budget, self.limits.max_total_bytes)
        head = handle.read(512)
        if not head:
            if not member:
                self.problem(NOT_PICKLE, "the file is empty")
            return ""
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return self.zip(_Prefixed(head, handle), where=where, depth=depth, rewind=rewind)
        if len(head) >= 262 and head[257:262] == b"ustar":
            return self.tar(_Prefixed(head, handle), where=where, depth=depth)
        kind, opener = _decompressor(head)
        if kind is not None:
            if depth >= 3:
                self.problem(OVER_BOUND, f"{where or 'the file'} nests compression more than 3 levels deep")
                return kind
            inner = opener(_Prefixed(head, handle))
            inner = io.BufferedReader(_Counted(inner, self.budget, self.limits.max_total_bytes))
            try:
                found = self.stream(inner, where=where, name=name, depth=depth + 1, member=member)
            except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                self.problem(DAMAGED, f"{where or 'the file'} is {kind}-compressed but damaged ({exc})")
                return kind
            return f"{kind}+{found}" if found else kind
        if head[:6] == b"\x93NUMPY":
            return self.npy(_Prefixed(head, handle), where=where)
        looks = head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5
        if member and not looks and not name.lower().endswith(PICKLE_SUFFIXES):
            return ""  # an archive's data member (tensor storage, JSON, text): nothing a loader unpickles
        return self.pickles(_Prefixed(head, handle), where=where, member=member)

    def pickles(self, handle: IO[bytes], *, where: str, member: bool) -> str:
        src = Source(handle, self.limits.max_bytes)
        label = where or "the file"
        count = 0
        while True:
            read = read_pickle(src, max_opcodes=self.limits.max_opcodes)
            if count == 0 and not read.complete and not read.limit and read.protocol < 2 and not read.globals:
                # No protocol header, and it breaks before naming any global: pickle.load fails there
                # too, having called nothing (text and random bytes end here).
                what = "a pickle" if member else "a pickle, a joblib or numpy file, or an archive of them"
                self.problem(NOT_PICKLE, f"{label} is not {what} ({read.error})")
                break
            count += 1
            self.saw_pickle = True
            self.result.pickles += 1
            for module, attr in read.globals:
                self.add_global(module, attr, where)
            for key, value in read.versions.items():
                self.versions.setdefault(key, value)
            for i, payload in enumerate(read.nested):
                self.nested(payload, where=f"{where + ' › ' if where else ''}nested pickle {i + 1}")
            if not read.complete:
                code = OVER_BOUND if read.limit else TRUNCATED if "ends at byte" in read.error else DAMAGED
                text = {OVER_BOUND: f"{label} could not be read to its end: {read.error}",
                        TRUNCATED: f"{label} is truncated: {read.error}",
                        DAMAGED: f"{label} is a damaged pickle: {read.error}"}[code]
                # A stream that breaks before naming any global has called nothing when pickle.load
                # breaks there too; past a bound, the unread rest could hold anything.
                self.problem(code, text, risky=read.limit or bool(read.globals) or bool(read.nested))
                break
            # Several pickles may follow each other (torch.save's legacy format); anything else after
            # a STOP is data no loader reads as a pickle.
            following = src.peek1()
            if following != b"\x80":
                break
            src.unread(following)
        return "pickle" if count else ""

    def nested(self, payload: bytes, *, where: str) -> None:
        read = read_pickle(Source(io.BytesIO(payload), self.limits.max_bytes), max_opcodes=self.limits.max_opcodes)
        for module, attr in read.globals:
            self.add_global(module, attr, where)
        if read.opcodes and not read.complete:
            self.problem(DAMAGED if not read.limit else OVER_BOUND, f"{where} could not be read: {read.error}")

    def npy(self, handle: IO[bytes], *, where: str) -> str:
        label = where or "the file"
        magic = handle.read(8)
        major = magic[6]
        size_bytes = 2 if major == 1 else 4
        raw = handle.read(size_bytes)
        header_len = int.from_bytes(raw, "little")
        if header_len > 1024 * 1024:
            self.problem(DAMAGED, f"{label} has a numpy header of {header_len} bytes")
            return "npy"
        try:
            header = ast.literal_eval(handle.read(header_len).decode("latin-1"))
            descr = header["descr"]
        except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
            self.problem(DAMAGED, f"{label} has a numpy header that cannot be read")
            return "npy"
        if "O" in repr(descr):
            self.pickles(handle, where=where, member=True)
        else:
            self.numbers_only = True
            self.modules.add("numpy")
        return "npy"

    def zip(self, handle: IO[bytes], *, where: str, depth: int, rewind=None) -> str:
        label = where or "the file"
        if depth >= 2:
            self.problem(OVER_BOUND, f"{label} is an archive inside an archive inside an archive: the scan reads two levels")
            return "zip"
        with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool:
            seekable = rewind() if rewind is not None else self._copy(handle, spool)
            try:
                archive = zipfile.ZipFile(seekable)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                self.problem(DAMAGED, f"{label} looks like a zip archive but cannot be read ({exc})")
                return "zip"
            with archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                self.result.members += len(members)
                if len(members) > self.limits.max_members:
                    self.problem(TOO_MANY_MEMBERS, f"{label} is an archive of {len(members)} files, over the scan's "
                                                   f"bound of {self.limits.max_members}")
                    return "zip"
                for info in members:
                    inner = f"{where + ' › ' if where else ''}{info.filename}"
                    try:
                        with archive.open(info) as member:
                            self.stream(member, where=inner, name=info.filename, depth=depth + 1, member=True)
                    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
                        self.problem(DAMAGED, f"{inner} cannot be read from the archive ({exc})")
        return "zip"

    def _copy(self, handle: IO[bytes], spool) -> IO[bytes]:
        """A seekable copy of ``handle`` (zipfile needs one), bounded by max_bytes."""
        copied = 0
        while True:
            chunk = handle.read(1024 * 1024)
            if not chunk:
                break
            copied += len(chunk)
            if copied > self.limits.max_bytes:
                raise ScanLimit(f"an archive inside the file is over the scan's bound of {self.limits.max_bytes} bytes")
            spool.write(chunk)
        spool.seek(0)
        return spool

    def tar(self, handle: IO[bytes], *, where: str, depth: int) -> str:
        label = where or "the file"
        if depth >= 2:
            self.problem(OVER_BOUND, f"{label} is an archive inside an archive inside an archive: the scan reads two levels")
            return "tar"
        count = 0
        try:
            with tarfile.open(fileobj=handle, mode="r|") as archive:
                for info in archive:
                    if not info.isfile():
                        continue
                    count += 1
                    self.result.members += 1
                    if count > self.limits.max_members:
                        self.problem(TOO_MANY_MEMBERS, f"{label} is an archive of over {self.limits.max_members} files, "
                                                       "the scan's bound")
                        return "tar"
                    inner = f"{where + ' › ' if where else ''}{info.name}"
                    member = archive.extractfile(info)
                    if member is not None:
                        self.stream(member, where=inner, name=info.name, depth=depth + 1, member=True)
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.problem(DAMAGED, f"{label} looks like a tar archive but cannot be read ({exc})")
        return "tar"

    def finish(self, fmt: str) -> ScanResult:
        result = self.result
        result.format = fmt or "unknown"
        order = {DANGEROUS: 0, UNKNOWN: 1, SAFE: 2}
        result.findings = sorted(self.found.values(), key=lambda f: (order[f.verdict], f.where, f.module, f.name))
        for package, label in FRAMEWORK_PACKAGES:
            if package in self.modules:
                result.framework = label
                result.framework_version = self.versions.get(label, "")
                break
        dangerous = result.named(DANGEROUS)
        unknown = result.named(UNKNOWN)
        problems = sorted((p for p in self.problems if p[0] != NOT_PICKLE), key=lambda p: not p[2]) or self.problems
        result.needs_confirmation = bool(unknown) or any(p[2] for p in self.problems)
        if dangerous:
            result.needs_confirmation = False  # refused outright
            result.verdict, result.reason_code = DANGEROUS, "dangerous_globals"
            result.reason = f"It names {_list(dangerous)}, which run code or reach the system when it is loaded."
        elif problems and (problems[0][0] != NOT_PICKLE or not (self.saw_pickle or self.numbers_only)):
            result.verdict, result.reason_code = NOT_SCANNED, problems[0][0]
            result.reason = problems[0][1][0].upper() + problems[0][1][1:] + "."
            if unknown:
                result.reason += f" Before that it names {_list(unknown)}, which are not on the allow list."
        elif unknown:
            result.verdict, result.reason_code = UNKNOWN, "unknown_globals"
            result.reason = f"It names {_list(unknown)}, which are not on the portal's list of model libraries."
        elif self.saw_pickle or self.numbers_only:
            result.verdict, result.reason_code = SAFE, ""
            result.reason = ("It names only globals of model libraries and harmless builtins." if self.saw_pickle
                             else "A numpy array of numbers: no code in it.")
        else:
            result.verdict, result.reason_code = NOT_SCANNED, NOT_PICKLE
            result.reason = "It holds no pickle the scanner knows of."
        return result


def _list(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def scan_file(handle: IO[bytes], *, file_name: str = "", allow=DEFAULT_ALLOW, limits: Limits = Limits()) -> ScanResult:
    """Returns the verdict on the binary stream ``handle`` (read from where it is; never loaded, never
    imports anything). ``allow`` is a list of entries (see parse_allow). Never raises for what the
    file holds: every problem ends as a not_scanned verdict with its reason."""
    parsed = allow if isinstance(allow, tuple) and len(allow) == 2 and isinstance(allow[0], frozenset) else parse_allow(allow)
    scan = _Scan(limits, parsed)
    fmt = ""
    try:
        fmt = scan.stream(handle, where="", name=file_name, depth=0)
    except ScanLimit as exc:
        scan.problem(OVER_BOUND, f"the file could not be read to its end: {exc}")
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, MemoryError, RecursionError) as exc:
        scan.problem(DAMAGED, f"the file could not be read ({type(exc).__name__}: {str(exc)[:200]})")
    scan.result.bytes_read = limits.max_total_bytes - scan.budget[0]
    return scan.finish(fmt)


def scan_path(path: str, **kwargs) -> ScanResult:
    with open(path, "rb") as handle:
        return scan_file(handle, file_name=path.rsplit("/", 1)[-1], **kwargs)
