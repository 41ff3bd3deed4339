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
``-I`` there overrides what was found; ``BIAGENT_DABNN_LDFLAGS`` adds libraries.
``-DBNN_BENCHMARK`` is added when the build's CMakeCache.txt has BNN_NET_BENCHMARK on
(bnn::Net's layout depends on it). A static libdabnn built without -fPIC (CMake's default)
cannot go into a shared object: then the same source is built as an executable
(``-DDABNN_DRIVER_SERVER``) that serves the model over a pipe and times each run itself.

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

from biformats.dabnn import inspect_dab

from .base import (
    InvokeError,
    LoadedModel,
    ModelLoadError,
    Runtime,
    RuntimeInfo,
    RuntimeNotInstalled,
    TensorSpec,
)

CONFIG_KEY = "BIAGENT_DABNN_ROOT"
CXXFLAGS_KEY = "BIAGENT_DABNN_CXXFLAGS"
LDFLAGS_KEY = "BIAGENT_DABNN_LDFLAGS"
DRIVER_SOURCE = Path(__file__).with_name("dabnn_driver.cpp")
HEADERS = ("dabnn/net.h", "common/dab_generated.h")
LIBRARIES = ("libdabnn.so", "libdabnn.a")
_SKIP_DIRS = {".git", "third_party", "node_modules"}
_lock = threading.Lock()
_cache: dict[tuple, _Probe] = {}
_RETRY_S = 60.0


#: layer types daBNN refuses when it prepares a model (an FC is written as an FpConv2D instead)
_UNSUPPORTED = ("Softmax", "FC", "Binarize")


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
    return [
        str(hit.parent.parent)
        for hit in _walk(base, (header,), depth, skip={".git", "windows"})
        if hit.parent.name == parent
    ]


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
    add(
        [str(d) for d in [root / "third_party" / "glog" / "src"] if (d / "glog" / "log_severity.h").is_file()]
    )
    add(_headers_under(root / "third_party" / "flatbuffers", "flatbuffers.h", "flatbuffers", 3))
    libs: list[str] = []
    for names, system in (
        (("libglog.so", "libglog.a", "libglogd.a"), "glog"),
        (("libflatbuffers.a", "libflatbuffers.so"), "flatbuffers"),
    ):
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
        any(Path(d).glob(f"lib{name}.a"))
        for d in ("/usr/lib", *map(str, Path("/usr/lib").glob("*-linux-gnu*")))
    )


def first_error(log: str) -> str:
    """The compiler's or linker's first error line: what to fix first (later ones often follow from it)."""
    lines = log.strip().splitlines()
    for line in lines:
        if any(
            k in line
            for k in (" error: ", "fatal error", "undefined reference", "recompile with", "cannot find")
        ):
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
        return _Probe(
            False, f"{CONFIG_KEY}={root_s} is not a directory; point it at a daBNN build (lib + headers)"
        )
    lib = find_library(root)
    missing = (
        [] if lib else [f"{' or '.join(LIBRARIES)} (searched {root} and its subdirectories, 4 levels deep)"]
    )
    missing += [f"{root / h}" for h in HEADERS if not (root / h).is_file()]
    if missing:
        return _Probe(
            False, f"{CONFIG_KEY}={root_s} is not a usable daBNN build: missing {'; '.join(missing)}"
        )
    assert lib is not None  # else `missing` named it
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        return _Probe(False, "no C++ compiler to build the daBNN driver (c++, g++ or clang++; or set CXX)")
    includes, libs, defines = _third_party(root, lib.parent)
    cxxflags = shlex.split(os.environ.get(CXXFLAGS_KEY, ""))
    ldflags = shlex.split(os.environ.get(LDFLAGS_KEY, ""))
    # The operator's flags come first, so an -I there wins over every directory found here.
    compile_args = [
        *cxxflags,
        *defines,
        "-I",
        str(root),
        *(f"-I{i}" for i in includes),
        str(DRIVER_SOURCE),
        str(lib),
        *libs,
        *ldflags,
        "-lpthread",
    ]
    if lib.suffix == ".so":
        compile_args.append(f"-Wl,-rpath,{lib.parent}")
    stamp = [cxx, *compile_args] + [
        f"{p}:{os.stat(p).st_mtime_ns}:{os.stat(p).st_size}"
        for p in (str(lib), *libs)
        if not p.startswith("-l")
    ]
    key = hashlib.sha256(DRIVER_SOURCE.read_bytes() + "\0".join(stamp).encode()).hexdigest()[:16]
    out_dir = _cache_root() / f"dabnn-driver-{key}"
    version = _git_version(root)
    library, server = out_dir / "libdabnn_driver.so", out_dir / "dabnn_driver_server"

    def ready(driver: Path) -> _Probe:
        how = (
            f"our driver {driver}"
            if driver == library
            else f"our driver process {driver} ({lib.name} is not position-independent)"
        )
        return _Probe(True, f"daBNN at {root} through {how}; {_kernels()}; single-threaded", driver, version)

    for built in (library, server):
        if built.is_file():
            return ready(built)
    out_dir.mkdir(parents=True, exist_ok=True)
    error = _compile(
        cxx, ["-O2", "-std=c++17", "-shared", "-fPIC"], compile_args, library, out_dir / "build.log"
    )
    if not error:
        return ready(library)
    if "recompile with -fPIC" in error or "making a shared object" in error:
        # CMake builds a static libdabnn without -fPIC by default: it cannot go into a shared
        # object, but it links into an executable; the same source serves it over a pipe.
        error = _compile(
            cxx,
            ["-O2", "-std=c++17", "-DDABNN_DRIVER_SERVER"],
            compile_args,
            server,
            out_dir / "build-server.log",
        )
        if not error:
            return ready(server)
    return _Probe(
        False,
        f"building the daBNN driver failed at compiling and linking {DRIVER_SOURCE.name} "
        f"against {lib}{error}",
        version=version,
    )


def _compile(cxx: str, flags: list[str], args: list[str], target: Path, log: Path) -> str:
    """Build `target` atomically; '' on success, else the hint, first error and log path."""
    fd, tmp = tempfile.mkstemp(suffix=target.suffix or ".bin", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *flags, "-o", tmp, *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        Path(tmp).unlink(missing_ok=True)
        return f": {exc}"
    log.write_text(shlex.join(cmd) + "\n\n" + res.stdout + res.stderr)
    if res.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        hint = ""
        if "undefined reference" in res.stderr or "cannot find -l" in res.stderr:
            hint = f" (add the missing libraries with {LDFLAGS_KEY})"
        elif "No such file" in res.stderr:
            hint = f" (add include directories with {CXXFLAGS_KEY})"
        return f"{hint}: {first_error(res.stderr or res.stdout)} (full log: {log})"
    os.replace(tmp, target)
    return ""


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
    key = tuple(
        os.environ.get(k, "") for k in (CONFIG_KEY, CXXFLAGS_KEY, LDFLAGS_KEY, "CXX", "XDG_CACHE_HOME")
    )
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


# -- the driver: a shared library through ctypes, or the same code as a process ---------------
class DriverError(Exception):
    """What daBNN (or the driver around it) said went wrong."""


def _load_driver(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.dabnn_last_error.restype, lib.dabnn_last_error.argtypes = cp, []
    lib.dabnn_create.restype, lib.dabnn_create.argtypes = vp, [cp, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.dabnn_blob_shape.restype, lib.dabnn_blob_shape.argtypes = (
        ctypes.c_int,
        [vp, cp, ctypes.POINTER(ctypes.c_int)],
    )
    lib.dabnn_run.restype, lib.dabnn_run.argtypes = ctypes.c_int, [vp, vp]
    lib.dabnn_blob_size.restype, lib.dabnn_blob_size.argtypes = ctypes.c_longlong, [vp, cp]
    lib.dabnn_blob_copy.restype, lib.dabnn_blob_copy.argtypes = ctypes.c_int, [vp, cp, vp, ctypes.c_longlong]
    lib.dabnn_destroy.restype, lib.dabnn_destroy.argtypes = None, [vp]
    return lib


class _LibraryDriver:
    """One loaded net in this process: no boundary to cross, so invoke is timed by the caller."""

    def __init__(self, path: Path, model: Path):
        self.lib = _load_driver(path)
        self.handle = self.lib.dabnn_create(str(model).encode(), 1, 1, 1)
        if not self.handle:
            raise DriverError(self._error())

    def _error(self) -> str:
        return (self.lib.dabnn_last_error() or b"").decode("utf-8", "replace")

    def shape(self, name: bytes) -> list[int]:
        out = (ctypes.c_int * 4)()
        if self.lib.dabnn_blob_shape(self.handle, name, out) != 0:
            raise DriverError(self._error())
        return list(out)

    def run(self, nhwc: np.ndarray) -> float | None:
        if self.lib.dabnn_run(self.handle, nhwc.ctypes.data) != 0:
            raise DriverError(self._error())
        return None

    def output(self, name: bytes) -> np.ndarray:
        n = self.lib.dabnn_blob_size(self.handle, name)
        if n < 0:
            raise DriverError(self._error())
        out = np.empty(n, np.float32)
        if self.lib.dabnn_blob_copy(self.handle, name, out.ctypes.data, n) != 0:
            raise DriverError(self._error())
        return out

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self.lib.dabnn_destroy(handle)


class _ServerDriver:
    """The driver as a child process (for a libdabnn.a that is not position-independent). It
    times `run` itself, so the pipe's round trip never enters a latency sample."""

    def __init__(self, path: Path, model: Path):
        self.proc = subprocess.Popen(
            [str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        try:
            self._call(b"C" + self._text(str(model).encode()))
        except Exception:
            self.close()
            raise

    @staticmethod
    def _text(b: bytes) -> bytes:
        return struct.pack("<I", len(b)) + b

    def _read(self, n: int) -> bytes:
        data = self._stdout.read(n) if n else b""
        if len(data) != n:
            code = self.proc.poll()
            raise DriverError(
                f"the daBNN driver process ended (exit code {code})"
                if code is not None
                else "the daBNN driver process stopped answering"
            )
        return data

    def _call(self, request: bytes) -> None:
        if self.proc.poll() is not None:
            raise DriverError(f"the daBNN driver process ended (exit code {self.proc.returncode})")
        try:
            self._stdin.write(request)
            self._stdin.flush()
        except (BrokenPipeError, OSError):
            raise DriverError(f"the daBNN driver process ended (exit code {self.proc.wait()})") from None
        if self._read(1) != b"\0":
            (n,) = struct.unpack("<I", self._read(4))
            raise DriverError(self._read(n).decode("utf-8", "replace"))

    def shape(self, name: bytes) -> list[int]:
        self._call(b"S" + self._text(name))
        return list(struct.unpack("<4i", self._read(16)))

    def run(self, nhwc: np.ndarray) -> float | None:
        data = nhwc.tobytes()
        self._call(b"R" + struct.pack("<Q", len(data)) + data)
        (ns,) = struct.unpack("<Q", self._read(8))
        return ns / 1e9

    def output(self, name: bytes) -> np.ndarray:
        self._call(b"Y" + self._text(name))
        (n,) = struct.unpack("<q", self._read(8))
        return np.frombuffer(self._read(4 * n), np.float32).copy()

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(b"Q")
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


class DabnnModel(LoadedModel):
    def __init__(self, driver, meta: dict, threads: int):
        self.driver, self.threads = driver, threads
        self.runtime_seconds: float | None = None
        self._input: np.ndarray | None = None
        self._ran = False
        self._in_name = meta["input"].encode()
        self._out_name = meta["output"].encode()
        _, h, w, c = meta["input_shape"]
        self.inputs = [TensorSpec(meta["input"], (1, c, h, w), "float32")]
        try:
            self._out_nhwc = tuple(self.driver.shape(self._out_name))
        except DriverError as exc:
            self.close()  # the driver is ours from the first line on
            raise ModelLoadError(f"daBNN has no float blob {meta['output']!r}: {exc}") from None
        n, oh, ow, oc = self._out_nhwc
        shape = (n, oc) if (oh, ow) == (1, 1) else (n, oc, oh, ow)
        self.outputs = [TensorSpec(meta["output"], shape, "float32")]

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != 1:
            raise InvokeError(f"daBNN models take 1 input, got {len(arrays)}")
        a = np.asarray(arrays[0])
        if tuple(a.shape) != self.inputs[0].shape:
            raise InvokeError(
                f"input shape {tuple(a.shape)} does not match the model's {self.inputs[0].shape} (NCHW)"
            )
        self._input = np.ascontiguousarray(a.transpose(0, 2, 3, 1), dtype=np.float32)  # NCHW -> NHWC

    def invoke(self) -> None:
        if self._input is None:
            raise InvokeError("invoke() before set_inputs()")
        if self.driver is None:
            raise InvokeError("the model is closed")
        try:
            self.runtime_seconds = self.driver.run(self._input)
        except DriverError as exc:
            raise InvokeError(f"daBNN failed: {exc}") from None
        self._ran = True

    def get_outputs(self) -> list[np.ndarray]:
        if not self._ran:
            raise InvokeError("get_outputs() before invoke()")
        try:
            out = self.driver.output(self._out_name)
        except DriverError as exc:
            raise InvokeError(f"daBNN output: {exc}") from None
        nhwc = out.reshape(self._out_nhwc)
        return [nhwc.transpose(0, 3, 1, 2).reshape(self.outputs[0].shape).copy()]

    def close(self) -> None:
        driver, self.driver = getattr(self, "driver", None), None
        if driver is not None:
            driver.close()
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
        bad = sorted(set(meta["layer_types"]) & set(_UNSUPPORTED))
        if bad:
            raise ModelLoadError(f"daBNN cannot run layer type(s) {', '.join(bad)}")
        if not meta["output"]:
            raise ModelLoadError(
                "the model's last layer has no single output (daBNN's output is the last layer's)"
            )
        assert p.driver is not None  # an installed probe names its driver
        transport = _LibraryDriver if p.driver.suffix == ".so" else _ServerDriver
        try:
            driver = transport(p.driver, Path(path))
        except DriverError as exc:
            raise ModelLoadError(f"daBNN could not load {path}: {exc}") from None
        return DabnnModel(driver, meta, threads)  # owns (and on failure closes) the driver
