"""The `dabnn` runtime: configuration messages, the driver build, and ctypes plumbing.

daBNN is not on this machine. The real driver-compile test runs only where
BIAGENT_DABNN_ROOT points at a daBNN build. The ctypes path (build, cache, load, NCHW ->
NHWC, row-padded output copy, error reporting) is checked against a stand-in `bnn::Net`
written below — a test double with daBNN's header names, not daBNN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import biformats.dabnn
from biagent.runtimes import InvokeError, ModelLoadError, RuntimeNotInstalled, get_runtime
from biagent.runtimes import dabnn as dab

CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
REAL_ROOT = os.environ.get(dab.CONFIG_KEY, "")  # a real daBNN build, if this machine has one
REAL_FLAGS = {k: os.environ[k] for k in (dab.CXXFLAGS_KEY, dab.LDFLAGS_KEY) if k in os.environ}


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    for key in (dab.CONFIG_KEY, dab.CXXFLAGS_KEY, dab.LDFLAGS_KEY):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dab._cache.clear()
    yield
    dab._cache.clear()


def test_registered_and_not_installed_without_config():
    cls = get_runtime("dabnn")
    assert cls is dab.DabnnRuntime and cls.formats == ("dabnn", "dab")
    info = cls.describe()
    assert not info.installed and info.name == "dabnn"
    assert info.detail == "not installed: set BIAGENT_DABNN_ROOT to a daBNN build (lib + headers)"
    with pytest.raises(RuntimeNotInstalled, match="BIAGENT_DABNN_ROOT"):
        cls().load(Path("model.dab"), 1)


def test_empty_root_lists_what_is_missing(monkeypatch, tmp_path):
    root = tmp_path / "dabnn-root"
    root.mkdir()
    monkeypatch.setenv(dab.CONFIG_KEY, str(root))
    info = dab.DabnnRuntime.describe()
    assert not info.installed
    assert "libdabnn.so or libdabnn.a" in info.detail
    assert (
        str(root / "dabnn" / "net.h") in info.detail
        and str(root / "common" / "dab_generated.h") in info.detail
    )
    # with the headers present only the library is missing
    (root / "dabnn").mkdir()
    (root / "dabnn" / "net.h").write_text("")
    (root / "common").mkdir()
    (root / "common" / "dab_generated.h").write_text("")
    dab._cache.clear()
    detail = dab.DabnnRuntime.describe().detail
    assert "libdabnn" in detail and "net.h" not in detail


def test_root_that_is_not_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(dab.CONFIG_KEY, str(tmp_path / "nope"))
    info = dab.DabnnRuntime.describe()
    assert not info.installed and "is not a directory" in info.detail


def test_importing_it_imports_neither_torch_nor_flatbuffers():
    code = (
        "import sys, biagent.runtimes.dabnn as d; d.DabnnRuntime.describe(); "
        "assert 'torch' not in sys.modules and 'flatbuffers' not in sys.modules; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != dab.CONFIG_KEY}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_inspect_rejects_garbage():
    with pytest.raises(ValueError, match="not a daBNN model"):
        dab.inspect_dab(b"\x00\x01")
    with pytest.raises(ValueError, match="not a daBNN model"):
        dab.inspect_dab(b"\xff\xff\xff\x7f" + b"\x00" * 60)


def _dab_file(path: Path, output: str = "logits", layer: str = "FpConv2D") -> Path:
    pytest.importorskip("flatbuffers")  # the writer's dependency (the host side has it)
    exp = biformats.dabnn
    params = {
        "FpConv2D": {
            "input": "input",
            "weight": "w",
            "bias": "b",
            "pads": [0, 0, 0, 0],
            "strides": [1, 1],
            "dilations": [1, 1],
            "output": output,
        },
        "Softmax": {"input": "input", "output": output},
    }[layer]
    inits = [
        exp.DabTensor("w", [3, 4, 4, 4], float32_data=np.zeros(192, np.float32)),
        exp.DabTensor("b", [3], float32_data=np.zeros(3, np.float32)),
    ]
    path.write_bytes(exp.write_dab([exp.DabLayer(layer, params)], inits, "input", [1, 4, 4, 4]))
    return path


def test_inspect_reads_what_the_exporter_writes(tmp_path):
    meta = dab.inspect_dab(_dab_file(tmp_path / "m.dab").read_bytes())
    assert meta == {
        "version": 2,
        "input": "input",
        "input_shape": [1, 4, 4, 4],
        "layer_types": ["FpConv2D"],
        "output": "logits",
    }


# -- a stand-in bnn::Net, to exercise the driver and the ctypes path here -------------------
_FAKE_NET_H = """
#pragma once
#include <memory>
#include <string>
#include <vector>
namespace bnn {
enum class DataType { Float, Bit };
struct Mat {
    void *data = nullptr;
    DataType data_type = DataType::Float;
    int n = 1, w = 1, h = 1, c = 1, elem_c = 1;
    size_t hstep = 0;
    std::vector<float> own;
};
class Net {
    Net() = default;
   public:
    static std::shared_ptr<Net> create();
    void read(const std::string &path);
    void run(void *input);
    std::shared_ptr<Mat> get_blob(const std::string &name);
    bool optimize = true, run_fconv = true, strict = true;
    std::shared_ptr<Mat> in_, out_;
};
}
"""
# input [1,4,4,4]; output "logits" [1,2,1,3] with rows padded to 4 floats; out[r][k] = in[r*16 + k] * (k+1)
_FAKE_NET_CPP = """
#include <dabnn/net.h>
#include <stdexcept>
namespace bnn {
std::shared_ptr<Net> Net::create() { return std::shared_ptr<Net>(new Net()); }
void Net::read(const std::string &path) {
    if (path.find("broken") != std::string::npos) throw std::runtime_error("mock assert: bad model");
    in_ = std::make_shared<Mat>(); in_->w = 4; in_->h = 4; in_->c = in_->elem_c = 4; in_->hstep = 16;
    out_ = std::make_shared<Mat>(); out_->w = 1; out_->h = 2; out_->c = out_->elem_c = 3; out_->hstep = 4;
    out_->own.assign(8, -1.f); out_->data = out_->own.data();
}
void Net::run(void *input) {
    if (!strict || !optimize || !run_fconv) throw std::runtime_error("flags not set before read");
    const float *x = static_cast<const float *>(input);
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 3; ++k) out_->own[r * 4 + k] = x[r * 16 + k] * (k + 1);
}
std::shared_ptr<Mat> Net::get_blob(const std::string &name) {
    if (name == "input") return in_;
    if (name == "logits") return out_;
    throw std::out_of_range("no blob " + name);
}
}
"""


def _fake_root(tmp_path: Path, pic: bool) -> Path:
    if CXX is None:
        pytest.skip("no C++ compiler")
    root = tmp_path / "fake-dabnn"
    (root / "dabnn").mkdir(parents=True)
    (root / "common").mkdir()
    (root / "dabnn" / "net.h").write_text(textwrap.dedent(_FAKE_NET_H))
    (root / "common" / "dab_generated.h").write_text("#pragma once\n")
    build = root / "build" / "dabnn"
    build.mkdir(parents=True)
    (build / "net.cpp").write_text(_FAKE_NET_CPP)
    # -fPIE: what a compiler that builds position-independent executables by default gives a
    # static library that CMake was not asked to make position-independent.
    subprocess.run(
        [
            CXX,
            "-std=c++17",
            "-fPIC" if pic else "-fPIE",
            "-c",
            "-I",
            str(root),
            str(build / "net.cpp"),
            "-o",
            str(build / "net.o"),
        ],
        check=True,
        timeout=120,
    )
    subprocess.run(["ar", "rcs", str(build / "libdabnn.a"), str(build / "net.o")], check=True, timeout=60)
    return root


@pytest.fixture
def fake_root(tmp_path):
    return _fake_root(tmp_path, pic=True)


@pytest.fixture
def fake_root_not_pic(tmp_path):
    return _fake_root(tmp_path, pic=False)


def test_driver_builds_once_and_runs_through_ctypes(monkeypatch, tmp_path, fake_root):
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root))
    info = dab.DabnnRuntime.describe()
    assert info.installed, info.detail
    assert "single-threaded" in info.detail
    (driver,) = (tmp_path / "cache" / "bibench-farm").glob("dabnn-driver-*/libdabnn_driver.so")
    mtime = driver.stat().st_mtime_ns
    dab._cache.clear()
    assert dab.DabnnRuntime.describe().installed and driver.stat().st_mtime_ns == mtime  # cached on disk

    model = dab.DabnnRuntime().load(_dab_file(tmp_path / "m.dab"), threads=4)
    assert model.inputs[0].shape == (1, 4, 4, 4) and model.outputs[0].shape == (1, 3, 2, 1)
    with pytest.raises(InvokeError, match="before set_inputs"):
        model.invoke()
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)  # NCHW
    model.set_inputs([x])
    model.invoke()
    (out,) = model.get_outputs()
    nhwc = x.transpose(0, 2, 3, 1).reshape(-1)
    expect = np.array(
        [[nhwc[r * 16 + k] * (k + 1) for k in range(3)] for r in range(2)], np.float32
    )  # [H*W, C]
    np.testing.assert_array_equal(out, expect.reshape(1, 2, 1, 3).transpose(0, 3, 1, 2))
    with pytest.raises(InvokeError, match="does not match"):
        model.set_inputs([np.zeros((1, 4, 4, 3), np.float32)])
    model.close()


def test_load_errors_are_model_load_errors(monkeypatch, tmp_path, fake_root):
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root))
    rt = dab.DabnnRuntime()
    with pytest.raises(ModelLoadError, match="mock assert: bad model"):
        rt.load(_dab_file(tmp_path / "broken.dab"), 1)
    with pytest.raises(ModelLoadError, match="no float blob 'other'"):
        rt.load(_dab_file(tmp_path / "m.dab", output="other"), 1)
    with pytest.raises(ModelLoadError, match="Softmax"):
        rt.load(_dab_file(tmp_path / "s.dab", layer="Softmax"), 1)
    (tmp_path / "junk.dab").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="not a daBNN model"):
        rt.load(tmp_path / "junk.dab", 1)


def test_build_failure_is_reported(monkeypatch, tmp_path, fake_root):
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root))
    monkeypatch.setenv(dab.CXXFLAGS_KEY, "-DTHIS_BREAKS -include /nonexistent/header.h")
    info = dab.DabnnRuntime.describe()
    assert (
        not info.installed
        and "building the daBNN driver failed" in info.detail
        and "build.log" in info.detail
    )


@pytest.mark.skipif(
    not REAL_ROOT,
    reason="dabnn runtime: not installed: set BIAGENT_DABNN_ROOT to a daBNN build (lib + headers)",
)
def test_real_dabnn_driver_compiles_and_runs(monkeypatch, tmp_path):
    monkeypatch.setenv(dab.CONFIG_KEY, REAL_ROOT)
    for key, value in REAL_FLAGS.items():
        monkeypatch.setenv(key, value)
    info = dab.DabnnRuntime.describe()
    assert info.installed, info.detail
    torch = pytest.importorskip("torch")
    import bimodels

    model = bimodels.binarize(
        bimodels.create_model("reactnet", num_classes=16), "bireal", pad_value=-1
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "reactnet.dab"
    path.write_bytes(bimodels.export(model, "dabnn", x))
    from tests.helpers import assert_numerics

    # daBNN cannot show its sign inputs: the output must match torch's float64 reference
    # (biagent.numerics), as on a board.
    assert_numerics("dabnn", path.read_bytes(), "dabnn", model, [x])


def _with_glog(root: Path, generated: str) -> None:
    """daBNN's tree as its CMake leaves it: glog's sources (with a Windows port whose logging.h
    does not compile here) and, under build/, the logging.h glog's CMake generated."""
    net_h = root / "dabnn" / "net.h"
    net_h.write_text("#include <glog/logging.h>\n" + net_h.read_text())
    windows = root / "third_party" / "glog" / "src" / "windows" / "glog"
    windows.mkdir(parents=True)
    (windows / "logging.h").write_text('#error "glog\'s Windows port: typedef __int32 int32;"\n')
    (root / "third_party" / "glog" / "src" / "glog").mkdir()
    (root / "third_party" / "glog" / "src" / "glog" / "log_severity.h").write_text("#pragma once\n")
    generated_dir = root / "build" / "third_party" / "glog" / "glog"
    generated_dir.mkdir(parents=True)
    (generated_dir / "logging.h").write_text(generated)


def test_glogs_generated_headers_win_over_its_windows_port(monkeypatch, tmp_path, fake_root):
    _with_glog(fake_root, "#pragma once\n#include <glog/log_severity.h>\n")
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root))
    info = dab.DabnnRuntime.describe()
    assert info.installed, info.detail


def test_the_operators_include_flags_come_first_and_a_failure_shows_the_first_error(
    monkeypatch, tmp_path, fake_root
):
    _with_glog(fake_root, '#error "a stale generated header"\n')
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root))
    info = dab.DabnnRuntime.describe()
    assert not info.installed
    assert "failed at compiling and linking dabnn_driver.cpp" in info.detail
    assert '#error "a stale generated header"' in info.detail and "full log:" in info.detail
    mine = tmp_path / "my-glog" / "glog"
    mine.mkdir(parents=True)
    (mine / "logging.h").write_text("#pragma once\n")
    monkeypatch.setenv(dab.CXXFLAGS_KEY, f"-I{mine.parent}")
    dab._cache.clear()
    info = dab.DabnnRuntime.describe()
    assert info.installed, info.detail


def test_a_static_library_without_pic_runs_in_a_driver_process_timed_there(
    monkeypatch, tmp_path, fake_root_not_pic
):
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root_not_pic))
    info = dab.DabnnRuntime.describe()
    assert info.installed, info.detail
    assert "through our driver process" in info.detail and "not position-independent" in info.detail
    model = dab.DabnnRuntime().load(_dab_file(tmp_path / "m.dab"), threads=1)
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    model.set_inputs([x])
    model.invoke()
    assert model.runtime_seconds is not None and 0 <= model.runtime_seconds < 1  # timed in the driver process
    (out,) = model.get_outputs()
    nhwc = x.transpose(0, 2, 3, 1).reshape(-1)
    expect = np.array([[nhwc[r * 16 + k] * (k + 1) for k in range(3)] for r in range(2)], np.float32)
    np.testing.assert_array_equal(out, expect.reshape(1, 2, 1, 3).transpose(0, 3, 1, 2))
    proc = model.driver.proc
    model.close()
    assert proc.poll() == 0  # asked to quit, it did
    with pytest.raises(ModelLoadError, match="mock assert: bad model"):
        dab.DabnnRuntime().load(_dab_file(tmp_path / "broken.dab"), 1)


def test_a_driver_process_that_dies_is_an_invoke_error_not_a_hang(monkeypatch, tmp_path, fake_root_not_pic):
    monkeypatch.setenv(dab.CONFIG_KEY, str(fake_root_not_pic))
    model = dab.DabnnRuntime().load(_dab_file(tmp_path / "m.dab"), threads=1)
    model.set_inputs([np.zeros((1, 4, 4, 4), np.float32)])
    model.driver.proc.kill()
    model.driver.proc.wait()
    with pytest.raises(InvokeError, match=r"daBNN failed: the daBNN driver process ended \(exit code -9\)"):
        model.invoke()
    model.close()
