"""The runtime contract, checked for every registered runtime and every format it loads.

The lists come from the registries (biagent.runtimes, biformats, bimodels.export), so a
runtime or a format added there is held to the same contract here without editing this file:
describe() never raises and names the formats; a model exported for the runtime loads,
invokes and gives torch's outputs; a corrupt artifact is a ModelLoadError, never a crash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bimodels
from biagent.runtimes import ModelLoadError, RuntimeInfo, get_runtime, list_runtimes
from biformats import FORMATS, get_format
from bihost.artifacts import export_format, pad_value_for
from bimodels.export import ExportResult, export_with_report
from tests.helpers import assert_numerics, randomize_norms

PAIRS = [(rt, fmt) for rt in list_runtimes() for fmt in get_runtime(rt).formats]


def test_every_runtime_is_registered_once_with_known_formats():
    for name in list_runtimes():
        cls = get_runtime(name)
        assert cls.name == name, f"{name} resolves to a class named {cls.name}"
        assert cls.formats, f"{name} lists no formats"
        for fmt in cls.formats:
            get_format(fmt)  # UnknownFormat if the runtime names a format biformats lacks


def test_every_format_has_an_exporter_and_a_runtime():
    assert set(bimodels.list_formats()) == set(FORMATS)
    loaded = {get_format(f).name for rt in list_runtimes() for f in get_runtime(rt).formats}
    assert loaded == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_exporter_returns_the_artifact_and_what_it_added(fmt):
    """The deployability matrix reads `extra_ops` the same way for every format."""
    model = _model(get_format(fmt).binary_pad_value)
    result = export_with_report(model, fmt, torch.zeros(1, 3, 8, 8))
    assert isinstance(result, ExportResult) and result.data == bimodels.export(
        model, fmt, torch.zeros(1, 3, 8, 8)
    )
    assert all(isinstance(op, str) and n >= 1 for op, n in result.extra_ops.items())


@pytest.mark.parametrize("runtime", list_runtimes())
def test_describe_never_raises_and_names_the_formats(runtime):
    info = get_runtime(runtime).describe()
    assert isinstance(info, RuntimeInfo) and info.name == runtime
    assert tuple(info.formats) == get_runtime(runtime).formats
    assert info.installed or info.detail, "a missing runtime must say why"


def _model(pad_value: float) -> nn.Module:
    """One FP conv, one binary conv, a linear head: every runtime's minimal binarized model."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.Hardtanh(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    net = bimodels.binarize(
        net, "bnn", fp_layers=["0", "7"], pad_value=pad_value, example_input=torch.zeros(1, 3, 8, 8)
    )
    return randomize_norms(net).eval()


def _installed(runtime: str) -> None:
    info = get_runtime(runtime).describe()
    if not info.installed:
        pytest.skip(f"{runtime} is not installed here: {info.detail}")


@pytest.mark.parametrize(("runtime", "fmt"), PAIRS)
def test_a_model_exported_for_the_runtime_loads_invokes_and_matches_torch(runtime, fmt, tmp_path: Path):
    _installed(runtime)
    model = _model(pad_value_for(runtime, "bnn"))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"model.{fmt}"
    data = bimodels.export(model, get_format(fmt).name, x)
    path.write_bytes(data)
    loaded = get_runtime(runtime)().load(path, threads=1)
    try:
        (spec,) = loaded.outputs
        assert spec.shape[-1] == 10 and spec.shape[0] in (1, -1)  # -1: a dynamic batch axis
        loaded.set_inputs([x.numpy()])
        loaded.invoke()
        (out,) = loaded.get_outputs()
    finally:
        loaded.close()
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert_numerics(runtime, data, fmt, model, [x])  # torch's outputs, by the agent's own rule


@pytest.mark.parametrize(("runtime", "fmt"), PAIRS)
@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "flipped"])
def test_a_corrupt_artifact_is_a_load_error(runtime, fmt, damage, tmp_path: Path):
    _installed(runtime)
    good = bimodels.export(
        _model(pad_value_for(runtime, "bnn")), get_format(fmt).name, torch.zeros(1, 3, 8, 8)
    )
    rng = np.random.default_rng(0)
    bad = {
        "empty": b"",
        "garbage": rng.bytes(len(good)),
        "truncated": good[: len(good) // 3],
        "flipped": bytes(b ^ 0xFF for b in good[:64]) + good[64:],  # the header and root offsets
    }[damage]
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(bad)
    with pytest.raises(ModelLoadError):
        get_runtime(runtime)().load(path, threads=1)


def test_the_host_exports_each_runtime_its_first_format():
    for runtime in list_runtimes():
        assert export_format(runtime) == get_format(get_runtime(runtime).formats[0]).name
    assert pad_value_for("dabnn", "bnn") == -1.0 and pad_value_for("custom", "bnn") == 0.0
    assert pad_value_for("dabnn", "fp32") == 0.0
