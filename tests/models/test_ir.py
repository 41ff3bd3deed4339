"""The IR: the declared op set, typed nodes, and every exporter lowering only declared ops."""

from __future__ import annotations

import json
import re
import zipfile
from io import BytesIO

import numpy as np
import pytest
import torch

import biformats.custom
from bimodels import binarize, create_model, example_input
from bimodels.export import export_with_report
from bimodels.export.dabnn import LOWERINGS
from bimodels.export.ir import IR, OPS, IRError, Node, ValueInfo
from bimodels.export.lce import _Lowering as LceLowering
from bimodels.export.trace import trace_ir


def _conv_attrs(**over):
    attrs = {
        "weight": "w",
        "bias": None,
        "stride": [1, 1],
        "dilation": [1, 1],
        "pads": [[1, 1], [1, 1]],
        "groups": 1,
    }
    return {**attrs, **over}


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "says"),
    [
        ("rotate", ["x"], {}, "not in the IR's op set"),
        ("constant", ["x"], {"value": "v"}, "constant takes 0 inputs, got 1"),
        ("matmul", ["x"], {}, "matmul takes 2 inputs, got 1"),
        ("reshape", ["x"], {"shape": [2, "3"]}, "reshape.shape = [2, '3'] is not a ints"),
        ("conv", ["x"], _conv_attrs(groups="1"), "conv.groups = '1' is not a int"),
        ("conv", ["x"], _conv_attrs(pads=[1, 1]), "conv.pads = [1, 1] is not a pads"),
        ("conv", ["x"], {k: v for k, v in _conv_attrs().items() if k != "stride"}, "missing ['stride']"),
        ("conv", ["x"], _conv_attrs(padding="same"), "unknown ['padding']"),
        ("add", ["x"], {}, "add takes 2 inputs, got 1"),
        ("concat", [], {"axis": 1}, "concat takes one or more inputs"),
        ("hardtanh", ["x"], {"min_val": True, "max_val": 1.0}, "is not a float"),
    ],
)
def test_a_node_outside_the_declaration_is_refused_when_built(op, inputs, attrs, says):
    with pytest.raises(IRError, match=re.escape(says)):
        Node(op, "n0", inputs, ["y"], attrs)


def test_a_graph_that_breaks_its_own_wiring_is_refused():
    w = {"w": np.ones((4, 3, 3, 3), np.float32)}
    conv = Node("conv", "c", ["input"], ["y"], _conv_attrs())
    IR([ValueInfo("input", [1, 3, 8, 8])], ["y"], [conv], w)  # well formed
    with pytest.raises(IRError, match="reads 'z' before anything defines it"):
        IR([ValueInfo("input", [1, 3, 8, 8])], ["y"], [Node("relu", "r", ["z"], ["y"])], {})
    with pytest.raises(IRError, match="names the tensor 'w'"):
        IR([ValueInfo("input", [1, 3, 8, 8])], ["y"], [conv], {})
    with pytest.raises(IRError, match="output 'out' is never defined"):
        IR([ValueInfo("input", [1, 3, 8, 8])], ["out"], [conv], w)
    with pytest.raises(IRError, match="redefines the value 'input'"):
        IR([ValueInfo("input", [1, 3, 8, 8])], ["input"], [Node("relu", "r", ["input"], ["input"])], {})


@pytest.mark.parametrize(
    ("arch", "algo"), [("resnet20", "xnorpp"), ("dfsmn", "reactnet"), ("reactnet", "recu")]
)
def test_the_custom_artifact_is_the_traced_ir_stored(arch, algo):
    torch.manual_seed(0)
    model = binarize(create_model(arch), algo).eval()
    x = example_input(arch)[:1]
    ir = trace_ir(model, x)
    assert {n.op for n in ir.nodes} <= set(OPS)
    assert "binary_conv" in {n.op for n in ir.nodes}
    data = export_with_report(model, "custom", x).data
    assert data == ir.to_artifact()
    with zipfile.ZipFile(BytesIO(data)) as zf:
        doc = json.loads(zf.read("graph.json"))
    # the stored nodes are valid IR nodes again: the file holds exactly the declaration
    rebuilt = [Node(n["op"], n["name"], n["inputs"], n["outputs"], n["attrs"]) for n in doc["nodes"]]
    assert [n.to_json() for n in rebuilt] == [n.to_json() for n in ir.nodes]


def test_every_lowering_lowers_declared_ops_only():
    lce = {name.removeprefix("op_") for name in dir(LceLowering) if name.startswith("op_")}
    assert lce and lce <= set(OPS), lce - set(OPS)
    assert set(LOWERINGS) and set(LOWERINGS) <= set(OPS), set(LOWERINGS) - set(OPS)
    # what each one leaves out is refused with a message, not lowered silently: pinned here
    tokens_and_attention = {"embedding", "layer_norm", "gelu", "tanh", "softmax", "scalar"}
    indexing = {"slice", "select"}
    assert set(OPS) - lce == tokens_and_attention | indexing
    layout = {"constant", "matmul", "reshape", "transpose", "expand"}
    assert set(OPS) - set(LOWERINGS) == tokens_and_attention | indexing | layout


def test_the_custom_format_documents_every_declared_op():
    doc = biformats.custom.__doc__ or ""
    missing = [op for op in OPS if f"``{op}``" not in doc]
    assert not missing, f"biformats.custom's op list lacks {missing}"


def test_the_custom_runtime_runs_every_declared_op():
    from biagent.runtimes.custom.engine import _OPS as RUNTIME_OPS

    assert set(RUNTIME_OPS) == set(OPS)
