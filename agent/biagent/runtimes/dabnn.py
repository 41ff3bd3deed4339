"""daBNN (JDAI-CV/dabnn) through a small C driver of our own, loaded with ctypes.

daBNN is not packaged for pip and this project ships no build recipe for it: a board that
runs it points ``BIAGENT_DABNN_ROOT`` at its own daBNN build (the source tree with
``dabnn/net.h`` and ``common/dab_generated.h``, plus ``libdabnn.a``/``.so`` under the root
or a ``build*`` directory). The agent then compiles ``dabnn_driver.cpp`` (next to this file)
once into ``~/.cache/bibench-farm/dabnn-driver-<hash>/`` with::

    c++ -O2 -std=c++17 -shared -fPIC $BIAGENT_DABNN_CXXFLAGS -I$ROOT <found glog/flatbuffers includes>
        dabnn_driver.cpp <libdabnn> <found libglog/libflatbuffers> $BIAGENT_DABNN_LDFLAGS -lpthread

The glog and flatbuffers headers and libraries of daBNN's own build are found automatically
(glog's generated headers under build*/ first; its Windows port is never used), else the
system's (``-lglog``, ``-lflatbuffers``). ``BIAGENT_DABNN_CXXFLAGS`` comes first, so an
``-I`` there overrides what was found; ``BIAGENT_DABNN_LDFLAGS`` adds libraries. ``-DBNN_BENCHMARK`` is added when the build's
CMakeCache.txt has BNN_NET_BENCHMARK on (bnn::Net's layout depends on it). A static
libdabnn must have been compiled with -fPIC to link into the driver.

Artifacts come from ``bimodels.export(model, "dabnn", x)``. The model's input is NCHW
``[1, C, H, W]`` (transposed to daBNN's NHWC in `set_inputs`, not timed); its output is the
last layer's output, ``[1, classes]`` for a classifier. daBNN is single-threaded: the
thread count is recorded, not applied. This module imports neither torch nor flatbuffers.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .base import InvokeError, LoadedModel, ModelLoadError, Runtime, RuntimeInfo, RuntimeNotInstalled, TensorSpec

CONFIG_KEY = "BIAGENT_DABNN_ROOT"
CXXFLAGS_KEY = "BIAGENT_DABNN_CXXFLAGS"
LDFLAGS_KEY = "BIAGENT_DABNN_LDFLAGS"
DRIVER_SOURCE = Path(__file__).with_name("dabnn_driver.cpp")
HEADERS = ("dabnn/net.h", "common/dab_generated.h")
LIBRARIES = ("libdabnn.so", "libdabnn.a")
_SKIP_DIRS = {".git", "third_party", "node_modules"}
_lock = threading.Lock()
_cache: dict[tuple, "_Probe"] = {}
_RETRY_S = 60.0


# -- the .dab, read without flatbuffers (the agent's base install has no flatbuffers) -------
_LAYER_TYPES = {0: "FpConv2D", 1: "AvePool", 2: "MaxPool", 3: "Relu", 4: "Softmax", 5: "FC", 6: "Add", 7: "Concat",
                8: "BinConv2D", 9: "Affine", 10: "Binarize", 11: "Split", 12: "Shuffle", 13: "PRelu"}
# LayerType -> (slot of its parameter table in Layer, slot of "output" in that table)
_OUTPUT_SLOTS = {"FpConv2D": (1, 6), "BinConv2D": (2, 6), "AvePool": (3, 4), "MaxPool": (4, 4), "Relu": (5, 1),
                 "Softmax": (6, 1), "FC": (7, 3), "Add": (8, 2), "Concat": (9, 2), "Affine": (10, 3),
                 "Binarize": (11, 1), "Shuffle": (13, 1), "PRelu": (15, 2)}
_UNSUPPORTED = ("Softmax", "FC", "Binarize")


class _Flat:
    """Bounds-checked reads of a FlatBuffers buffer."""

    def __init__(self, buf: bytes):
        self.buf = buf

    def u(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.buf):
            raise ValueError("offset outside the file")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def field(self, table: int, slot: int) -> int:
        """Absolute position of a field, or 0 when absent."""
        vtable = table - self.u("<i", table)
        size = self.u("<H", vtable)
        at = 4 + 2 * slot
        if at + 2 > size:
            return 0
        rel = self.u("<H", vtable + at)
        return table + rel if rel else 0

    def ref(self, pos: int) -> int:
        return pos + self.u("<I", pos)

    def string(self, table: int, slot: int) -> str | None:
        pos = self.field(table, slot)
        if not pos:
            return None
        start = self.ref(pos)
        n = self.u("<I", start)
        if start + 4 + n > len(self.buf):
            raise ValueError("string outside the file")
        return self.buf[start + 4: start + 4 + n].decode("utf-8")

    def vector(self, table: int, slot: int) -> tuple[int, int] | None:
        pos = self.field(table, slot)
        if not pos:
            return None
        start = self.ref(pos)
        return start + 4, self.u("<I", start)

    def tables(self, table: int, slot: int) -> list[int] | None:
        vec = self.vector(table, slot)
        return None if vec is None else [self.ref(vec[0] + 4 * i) for i in range(vec[1])]


def inspect_dab(data: bytes) -> dict:
    """Version, input (name, NHWC shape) and the last layer's output name of a .dab; ValueError if malformed."""
    f = _Flat(bytes(data))
    try:
        root = f.ref(0)
        version_pos = f.field(root, 3)
        version = f.u("<I", version_pos) if version_pos else 0
        layers, inits, inputs = f.tables(root, 0), f.tables(root, 1), f.tables(root, 2)
        if layers is None or inits is None or inputs is None:
            raise ValueError("Model.layers, initializers and inputs are required")
        if not inputs:
            raise ValueError("the model has no input")
        in_name = f.string(inputs[0], 1)
        shape_vec = f.vector(inputs[0], 0)
        shape = [] if shape_vec is None else [f.u("<I", shape_vec[0] + 4 * i) for i in range(shape_vec[1])]
        types = []
        for layer in layers:
            pos = f.field(layer, 0)
            types.append(_LAYER_TYPES.get(f.u("<B", pos) if pos else 0, "?"))
        output = None
        if layers and types[-1] in _OUTPUT_SLOTS:
            pslot, oslot = _OUTPUT_SLOTS[types[-1]]
            ppos = f.field(layers[-1], pslot)
            output = f.string(f.ref(ppos), oslot) if ppos else None
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a daBNN model: {exc}") from None
    return {"version": version, "input": in_name, "input_shape": shape, "layer_types": types, "output": output}


# -- finding daBNN and building the driver ------------------------------------------------------
class _Probe:
    def __init__(self, installed: bool, detail: str, driver: Path | None = None, version: str = ""):
        self.installed, self.detail, self.driver, self.version = installed, detail, driver, version
        self.when = 0.0


def _walk(root: Path, names: tuple[str, ...], max_depth: int = 4, skip: set[str] = _SKIP_DIRS) -> list[Path]:
    """Files named `names` under root (breadth first, a few levels, skipping .git and sources)."""
    found, level = [], [root]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            try:
                entries = sorted(d.iterdir())
            except OSError:
                continue
            for e in entries:
                if e.name in names and e.is_file():
                    found.append(e)
                elif e.is_dir() and e.name not in skip and not e.is_symlink():
                    nxt.append(e)
        level = nxt
    return found


def find_library(root: Path) -> Path | None:
    """libdabnn.so (preferred) or libdabnn.a under ROOT, ROOT/lib or a build directory."""
    hits = _walk(root, LIBRARIES)
    hits.sort(key=lambda p: (len(p.relative_to(root).parts), LIBRARIES.index(p.name)))
    return hits[0] if hits else None


def _headers_under(base: Path, header: str, parent: str, depth: int) -> list[str]:
    """Directories D with D/<parent>/<header> under base, skipping platform ports (glog's windows/)."""
    if not base.is_dir():
        return []
    return [str(hit.parent.parent) for hit in _walk(base, (header,), depth, skip={".git", "windows"})
            if hit.parent.name == parent]


def _third_party(root: Path, lib_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """Include dirs, libraries and defines for glog and flatbuffers: daBNN's own build of them
    (generated headers in build*/ first: glog's config-dependent logging.h exists only there),
    else the system's (Debian's libgoogle-glog-dev / libflatbuffers-dev)."""
    builds = [b for b in sorted(root.glob("build*")) if b.is_dir()]
    includes: list[str] = []

    def add(dirs: list[str]) -> None:
        includes.extend(d for d in dirs if d not in includes)

    for b in builds:  # build/third_party/glog/glog/logging.h, generated by glog's CMake
        add(_headers_under(b, "logging.h", "glog", 6))
    add([str(d) for d in [root / "third_party" / "glog" / "src"] if (d / "glog" / "log_severity.h").is_file()])
    add(_headers_under(root / "third_party" / "flatbuffers", "flatbuffers.h", "flatbuffers", 3))
    libs: list[str] = []
    for names, system in ((("libglog.so", "libglog.a", "libglogd.a"), "glog"),
                          (("libflatbuffers.a", "libflatbuffers.so"), "flatbuffers")):
        hits = [h for b in builds for h in _walk(b, names, 5, skip={".git"})]
        if hits:
            libs.append(str(hits[0]))
        elif _system_library(system):
            libs.append(f"-l{system}")
    build_dirs = [p for p in {lib_dir, *lib_dir.parents} if p == root or root in p.parents]
    defines = []
    for d in build_dirs:
        cache = d / "CMakeCache.txt"
        if cache.is_file() and "BNN_NET_BENCHMARK:BOOL=ON" in cache.read_text(errors="replace"):
            defines.append("-DBNN_BENCHMARK")
            break
    return includes, libs, defines


def _system_library(name: str) -> bool:
    import ctypes.util

    return ctypes.util.find_library(name) is not None or any(
        any(Path(d).glob(f"lib{name}.a")) for d in ("/usr/lib", *map(str, Path("/usr/lib").glob("*-linux-gnu*"))))


def first_error(log: str) -> str:
    """The compiler's or linker's first error line: what to fix first (later ones often follow from it)."""
    lines = log.strip().splitlines()
    for line in lines:
        if any(k in line for k in (" error: ", "fatal error", "undefined reference", "recompile with", "cannot find")):
            return line.strip()[:400]
    return " | ".join(lines[-3:])[-400:]


def _git_version(root: Path) -> str:
    try:
        head = (root / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = root / ".git" / head[5:]
            head = ref.read_text().strip() if ref.is_file() else ""
        return head[:7]
    except OSError:
        return ""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bibench-farm"


def _probe() -> _Probe:
    root_s = os.environ.get(CONFIG_KEY, "")
    if not root_s:
        return _Probe(False, f"not installed: set {CONFIG_KEY} to a daBNN build (lib + headers)")
    root = Path(root_s).expanduser()
    if not root.is_dir():
        return _Probe(False, f"{CONFIG_KEY}={root_s} is not a directory; point it at a daBNN build (lib + headers)")
    lib = find_library(root)
    missing = [] if lib else [f"{' or '.join(LIBRARIES)} (searched {root} and its subdirectories, 4 levels deep)"]
    missing += [f"{root / h}" for h in HEADERS if not (root / h).is_file()]
    if missing:
        return _Probe(False, f"{CONFIG_KEY}={root_s} is not a usable daBNN build: missing {'; '.join(missing)}")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        return _Probe(False, "no C++ compiler to build the daBNN driver (c++, g++ or clang++; or set CXX)")
    includes, libs, defines = _third_party(root, lib.parent)
    cxxflags = shlex.split(os.environ.get(CXXFLAGS_KEY, ""))
    ldflags = shlex.split(os.environ.get(LDFLAGS_KEY, ""))
    source = DRIVER_SOURCE.read_bytes()
    # The operator's flags come first, so an -I there wins over every directory found here.
    args = ["-O2", "-std=c++17", "-shared", "-fPIC", *cxxflags, *defines, "-I", str(root),
            *(f"-I{i}" for i in includes), str(DRIVER_SOURCE), str(lib), *libs, *ldflags, "-lpthread"]
    if lib.suffix == ".so":
        args.append(f"-Wl,-rpath,{lib.parent}")
    stamp = [cxx, *args] + [f"{p}:{os.stat(p).st_mtime_ns}:{os.stat(p).st_size}" for p in (str(lib), *libs)
                            if not p.startswith("-l")]
    key = hashlib.sha256(source + "\0".join(stamp).encode()).hexdigest()[:16]
    out_dir = _cache_root() / f"dabnn-driver-{key}"
    driver = out_dir / "libdabnn_driver.so"
    version = _git_version(root)
    if not driver.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [cxx, *args[:4], "-o", tmp, *args[4:]]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            Path(tmp).unlink(missing_ok=True)
            return _Probe(False, f"building the daBNN driver failed: {exc}")
        (out_dir / "build.log").write_text(shlex.join(cmd) + "\n\n" + res.stdout + res.stderr)
        if res.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            first = first_error(res.stderr or res.stdout)
            hint = ""
            if "-fPIC" in res.stderr or "recompile with" in res.stderr:
                hint = " (rebuild daBNN with -DCMAKE_POSITION_INDEPENDENT_CODE=ON, or as a shared library)"
            elif "undefined reference" in res.stderr or "cannot find -l" in res.stderr:
                hint = f" (add the missing libraries with {LDFLAGS_KEY})"
            elif "No such file" in res.stderr:
                hint = f" (add include directories with {CXXFLAGS_KEY})"
            return _Probe(False, f"building the daBNN driver failed at compiling and linking {DRIVER_SOURCE.name} "
                                 f"against {lib}{hint}: {first} (full log: {out_dir / 'build.log'})", version=version)
        os.replace(tmp, driver)
    return _Probe(True, f"daBNN at {root} through our driver {driver}; {_kernels()}; single-threaded", driver, version)


def _kernels() -> str:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "aarch64 assembly binary kernels"
    if machine.startswith("armv7") or machine == "arm":
        return "armv7 NEON BGEMM kernels"
    return f"naive C++ kernels on {machine or 'this CPU'} (correctness only, not representative timings)"


def probe() -> _Probe:
    """Find daBNN and build the driver once per configuration (cached on disk and in memory;
    a failure is retried after a minute, so fixing the build needs no agent restart)."""
    key = tuple(os.environ.get(k, "") for k in (CONFIG_KEY, CXXFLAGS_KEY, LDFLAGS_KEY, "CXX", "XDG_CACHE_HOME"))
    with _lock:
        hit = _cache.get(key)
        if hit is None or (not hit.installed and time.monotonic() - hit.when > _RETRY_S):
            try:
                hit = _probe()
            except Exception as exc:  # describe() never raises
                hit = _Probe(False, f"probing daBNN failed: {type(exc).__name__}: {exc}")
            hit.when = time.monotonic()
            _cache[key] = hit
        return hit


# -- the driver through ctypes --------------------------------------------------------------
def _load_driver(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.dabnn_last_error.restype, lib.dabnn_last_error.argtypes = cp, []
    lib.dabnn_create.restype, lib.dabnn_create.argtypes = vp, [cp, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.dabnn_blob_shape.restype, lib.dabnn_blob_shape.argtypes = ctypes.c_int, [vp, cp, ctypes.POINTER(ctypes.c_int)]
    lib.dabnn_run.restype, lib.dabnn_run.argtypes = ctypes.c_int, [vp, vp]
    lib.dabnn_blob_size.restype, lib.dabnn_blob_size.argtypes = ctypes.c_longlong, [vp, cp]
    lib.dabnn_blob_copy.restype, lib.dabnn_blob_copy.argtypes = ctypes.c_int, [vp, cp, vp, ctypes.c_longlong]
    lib.dabnn_destroy.restype, lib.dabnn_destroy.argtypes = None, [vp]
    return lib


class DabnnModel(LoadedModel):
    def __init__(self, lib: ctypes.CDLL, handle: int, meta: dict, threads: int):
        self.lib, self.handle, self.threads = lib, handle, threads
        self._input: np.ndarray | None = None
        self._ran = False
        self._in_name = meta["input"].encode()
        self._out_name = meta["output"].encode()
        _, h, w, c = meta["input_shape"]
        self.inputs = [TensorSpec(meta["input"], (1, c, h, w), "float32")]
        try:
            self._out_nhwc = tuple(self._shape(self._out_name))
        except Exception:
            self.close()  # the handle is ours from the first line on
            raise
        n, oh, ow, oc = self._out_nhwc
        shape = (n, oc) if (oh, ow) == (1, 1) else (n, oc, oh, ow)
        self.outputs = [TensorSpec(meta["output"], shape, "float32")]

    def _error(self) -> str:
        return (self.lib.dabnn_last_error() or b"").decode("utf-8", "replace")

    def _shape(self, name: bytes) -> list[int]:
        out = (ctypes.c_int * 4)()
        if self.lib.dabnn_blob_shape(self.handle, name, out) != 0:
            raise ModelLoadError(f"daBNN has no float blob {name.decode()!r}: {self._error()}")
        return list(out)

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != 1:
            raise InvokeError(f"daBNN models take 1 input, got {len(arrays)}")
        a = np.asarray(arrays[0])
        if tuple(a.shape) != self.inputs[0].shape:
            raise InvokeError(f"input shape {tuple(a.shape)} does not match the model's {self.inputs[0].shape} (NCHW)")
        self._input = np.ascontiguousarray(a.transpose(0, 2, 3, 1), dtype=np.float32)  # NCHW -> NHWC

    def invoke(self) -> None:
        if self._input is None:
            raise InvokeError("invoke() before set_inputs()")
        if self.handle is None:
            raise InvokeError("the model is closed")
        if self.lib.dabnn_run(self.handle, self._input.ctypes.data) != 0:
            raise InvokeError(f"daBNN failed: {self._error()}")
        self._ran = True

    def get_outputs(self) -> list[np.ndarray]:
        if not self._ran:
            raise InvokeError("get_outputs() before invoke()")
        n = self.lib.dabnn_blob_size(self.handle, self._out_name)
        if n < 0:
            raise InvokeError(f"daBNN output: {self._error()}")
        out = np.empty(n, np.float32)
        if self.lib.dabnn_blob_copy(self.handle, self._out_name, out.ctypes.data, n) != 0:
            raise InvokeError(f"daBNN output: {self._error()}")
        nhwc = out.reshape(self._out_nhwc)
        return [nhwc.transpose(0, 3, 1, 2).reshape(self.outputs[0].shape).copy()]

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle is not None:
            self.lib.dabnn_destroy(handle)
        self._input = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class DabnnRuntime(Runtime):
    name = "dabnn"
    formats = ("dabnn", "dab")

    @classmethod
    def describe(cls) -> RuntimeInfo:
        p = probe()
        return RuntimeInfo(cls.name, p.installed, p.version, p.detail, cls.formats)

    def load(self, path: Path, threads: int) -> LoadedModel:
        p = probe()
        if not p.installed:
            raise RuntimeNotInstalled(p.detail)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read daBNN model {path}: {exc}") from exc
        try:
            meta = inspect_dab(data)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        if meta["version"] != 2:
            raise ModelLoadError(f"daBNN needs model version 2, this file has version {meta['version']}")
        shape = meta["input_shape"]
        if len(shape) != 4 or shape[0] != 1 or not meta["input"]:
            raise ModelLoadError(f"daBNN needs one named input of shape [1, H, W, C], this file has {shape}")
        bad = sorted(set(meta["layer_types"]) & set(_UNSUPPORTED + ("?",)))
        if bad:
            raise ModelLoadError(f"daBNN cannot run layer type(s) {', '.join(bad)}")
        if not meta["output"]:
            raise ModelLoadError("the model's last layer has no single output (daBNN's output is the last layer's)")
        lib = _load_driver(p.driver)
        handle = lib.dabnn_create(str(path).encode(), 1, 1, 1)
        if not handle:
            raise ModelLoadError(f"daBNN could not load {path}: {(lib.dabnn_last_error() or b'').decode('utf-8', 'replace')}")
        return DabnnModel(lib, handle, meta, threads)  # owns (and on failure frees) the handle
