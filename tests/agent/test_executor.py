"""The whole-graph executor (runtimes/custom/executor.py, kernels/graph.c).

It must compute, bit for bit, what the per-node path computes (the same kernels, the same
summation orders), for every image architecture and algorithm, at several batch sizes and
thread counts; fall back to the per-node path, saying why, for a graph it cannot plan; and
refuse at build time any plan that could read or write out of bounds.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import bimodels
from biagent import kernels
from biagent.runtimes.custom import executor, load_artifact
from biagent.runtimes.custom.engine import Graph, ValueSpec
from biagent.runtimes.custom.executor import NativeGraph, Planner, Unplannable, plan_tables
from biagent.runtimes.custom.runtime import CustomRuntime, plan_native
from biagent.runtimes.custom.settings import KernelSettings

pytestmark = pytest.mark.skipif(
    not (kernels.available() and executor.available()), reason="C kernels not built on this machine"
)

# every family of the registry; image models and point clouds at a small size, token models
# (None) on their own example input of int64 ids
NETWORKS = [
    ("resnet20", (3, 32, 32)),
    ("vgg_small", (3, 32, 32)),
    ("birealnet18", (3, 64, 64)),
    ("reactnet", (3, 64, 64)),
    ("pointnet_vanilla", (3, 256)),
    ("pointnet", (3, 256)),
    ("pointnet_part_seg", (3, 256)),
    ("dfsmn", (40, 98)),
    ("ssd_resnet", (3, 64, 64)),
    ("bert_tiny", None),
]


def _algorithms() -> list[str]:
    from bimodels.algorithms import ALGORITHMS as registry

    return sorted(registry.names())


def _export(
    arch: str, algo: str, shape: tuple[int, ...] | None = (3, 32, 32), seed: int = 0
) -> tuple[bytes, np.ndarray]:
    torch.manual_seed(seed)
    x = bimodels.example_input(arch, 3, seed=seed) if shape is None else torch.randn(3, *shape)
    model = bimodels.binarize(bimodels.create_model(arch), algo, example_input=x[:1]).eval()
    return bimodels.export(model, "custom", x[:1]), x.numpy()


def _every_prefix_equal(graph: Graph, native_settings: KernelSettings, x: np.ndarray) -> None:
    """The executor equals the per-node path on the graph and on every prefix of it whose last
    value is floats (so a difference is pinned to the node that made it)."""
    for i, node in enumerate(graph.nodes):
        sub = Graph(
            graph.inputs,
            [ValueSpec(node.output, graph.shapes[node.output])],
            graph.nodes[: i + 1],
            graph.shapes,
        )
        ref = sub.run([x])[0]
        if not isinstance(ref, np.ndarray):  # packed sign bits: checked through their reader
            continue
        got = NativeGraph(sub, native_settings.isa, native_settings.threads).run([x])[0]
        np.testing.assert_array_equal(got, ref, err_msg=f"after node {i} {node.name} ({node.op})")


@pytest.mark.parametrize("algo", _algorithms())
@pytest.mark.parametrize("arch,shape", NETWORKS, ids=[a for a, _ in NETWORKS])
def test_executor_equals_the_per_node_path(arch, shape, algo):
    data, x = _export(arch, algo, shape)
    for threads in (1, 2):
        settings = KernelSettings(threads=threads)
        graph = load_artifact(data, settings, fuse=True)
        native, how = plan_native(graph, settings)
        assert native is not None, how
        assert how.startswith("native (")
        for n in (1, 3):  # batch sizes: each its own plan
            np.testing.assert_array_equal(native.run([x[:n]])[0], graph.run([x[:n]])[0])
    if arch == "resnet20":  # node by node, on the cheapest network
        _every_prefix_equal(
            load_artifact(data, KernelSettings(threads=1), fuse=True), KernelSettings(threads=1), x[:2]
        )


def test_runtime_uses_the_executor_and_can_be_told_not_to(tmp_path, monkeypatch):
    data, x = _export("resnet20", "bnn")
    path = tmp_path / "m.custom"
    path.write_bytes(data)
    model = CustomRuntime().load(path, threads=1)
    assert model.executor.startswith("native ("), model.executor
    model.set_inputs([x[:2]])
    model.invoke()
    native_out = model.get_outputs()[0]
    monkeypatch.setenv("BIAGENT_CUSTOM_EXECUTOR", "python")
    slow = CustomRuntime().load(path, threads=1)
    assert slow.executor == "python (BIAGENT_CUSTOM_EXECUTOR=python)"
    slow.set_inputs([x[:2]])
    slow.invoke()
    np.testing.assert_array_equal(slow.get_outputs()[0], native_out)


def test_a_graph_it_cannot_plan_keeps_the_per_node_path_and_says_why(tmp_path):
    # whatever the reason a node has no step, the model still runs and the reason names the node
    torch.manual_seed(0)
    model = bimodels.binarize(bimodels.create_model("resnet20"), "bnn").eval()
    x = torch.randn(1, 3, 32, 32)
    graph = load_artifact(bimodels.export(model, "custom", x), KernelSettings(threads=1), fuse=True)
    graph.nodes[-1].fn = lambda v: v  # a node the planner does not know
    native, how = plan_native(graph, KernelSettings(threads=1))
    assert native is None
    assert how.startswith("python (node ") and "no step for function" in how


def test_plans_are_kept_per_batch_size_and_bounded():
    data, x = _export("resnet20", "bnn")
    graph = load_artifact(data, KernelSettings(), fuse=True)
    native = NativeGraph(graph, "auto", 1)
    big = np.concatenate([x] * 3)
    for n in range(1, executor.PLANS_KEPT + 3):
        native.run([big[:n]])
    assert sorted(native._plans) == list(range(3, executor.PLANS_KEPT + 3))


def test_invoke_errors_are_invoke_errors():
    from biagent.runtimes.base import InvokeError

    data, x = _export("resnet20", "bnn")
    native = NativeGraph(load_artifact(data, KernelSettings(), fuse=True), "auto", 1)
    with pytest.raises(InvokeError, match=r"must have shape \('N', 3, 32, 32\)"):
        native.run([x[:, :, :16]])
    with pytest.raises(InvokeError, match="float32"):
        native.run([x.astype(np.float64)])
    with pytest.raises(InvokeError, match="expected 1 input"):
        native.run([x, x])


# -- graph_build: no plan can reach out of bounds -------------------------------------------------
def _plan_tables(arch="resnet20", algo="bnn"):
    data, x = _export(arch, algo)
    tables = plan_tables(load_artifact(data, KernelSettings(), fuse=True), 1)
    return (*tables.build_args(), x[:1])


def test_graph_build_refuses_plans_that_reach_out_of_bounds():
    from biagent.kernels import _xnor

    steps, floats, tensors, arena, in_bytes, out_bytes, x = _plan_tables()
    _xnor.graph_build(steps, floats, tensors, arena, in_bytes, out_bytes)  # the real plan builds
    bconv = int(np.flatnonzero(steps[:, 0] == executor.OP["bconv"])[0])

    def refused(mutate, match):
        s, f = steps.copy(), floats.copy()
        mutate(s, f)
        with pytest.raises(ValueError, match=match):
            _xnor.graph_build(s, f, tensors, arena, in_bytes, out_bytes)

    refused(
        lambda s, f: s.__setitem__((bconv, 2), arena), "outside its space"
    )  # output offset past the arena
    refused(lambda s, f: s.__setitem__((bconv, executor.P + 4), 10**6), "outside its space|must hold")  # cout
    refused(lambda s, f: s.__setitem__((bconv, 9), len(tensors)), "is not one of the")  # a tensor index
    refused(
        lambda s, f: s.__setitem__((bconv, 9 + 4), s[bconv, 9]), "tensor alpha must hold"
    )  # the packed weights
    refused(lambda s, f: s.__setitem__((0, 0), 99), "unknown op 99")
    # the fuzzer's find: a slot the op reads only in another mode (the next conv's shift, read
    # only when writing packed bits) was not checked, and graph_run read past the tensors
    refused(lambda s, f: s.__setitem__((bconv, 9 + 9), 1 << 31), "tensor slot 9: index 2147483648")
    refused(lambda s, f: s.__setitem__((bconv, 1), (7 << 32)), "unknown space")
    with pytest.raises(ValueError, match="output 0 has"):
        plan = _xnor.graph_build(steps, floats, tensors, arena, in_bytes, out_bytes)
        _xnor.graph_run(plan, (x,), (np.empty(3, np.float32),), "auto", 1)


def test_graph_build_survives_random_mutations():
    """A fuzz of the plan tables: every mutated plan is refused with a ValueError or runs to
    the end; none crashes the process (bench/fuzz.py runs many more)."""
    from biagent.kernels import _xnor

    steps, floats, tensors, arena, in_bytes, out_bytes, x = _plan_tables()
    rng = np.random.default_rng(0)
    built = refused = 0
    for _ in range(300):
        s = steps.copy()
        for _ in range(int(rng.integers(1, 4))):
            i, j = int(rng.integers(len(s))), int(rng.integers(executor.SLOTS))
            s[i, j] = rng.choice(
                [0, 1, -1, 2, 7, 64, 1 << 20, 1 << 40, -(1 << 62), int(s[i, j]) + 1, int(s[i, j]) - 1]
            )
        try:
            plan = _xnor.graph_build(s, floats, tensors, arena, in_bytes, out_bytes)
        except ValueError:
            refused += 1
            continue
        built += 1
        out = np.empty(out_bytes[0] // 4, np.float32)
        try:
            _xnor.graph_run(plan, (x,), (out,), "auto", 1)
        except (ValueError, MemoryError):
            pass
    assert refused > 100 and built > 10, (refused, built)


def test_reduce_mean_sums_as_numpy_does():
    """np.mean over a contiguous run: 8192-element buffers, each summed pairwise."""
    from biformats.custom import write_artifact

    for n in (7, 100, 8192, 50000):
        node = {
            "name": "m",
            "op": "reduce_mean",
            "inputs": ["x"],
            "outputs": ["y"],
            "attrs": {"axes": [1], "keepdims": False},
        }
        data = write_artifact([{"name": "x", "shape": [2, n], "dtype": "float32"}], ["y"], [node], {})
        graph = load_artifact(data, KernelSettings(), fuse=True)
        x = np.abs(np.random.default_rng(n).standard_normal((2, n))).astype(np.float32)
        native = NativeGraph(graph, "auto", 1)
        np.testing.assert_array_equal(native.run([x])[0], graph.run([x])[0])


@pytest.mark.parametrize("special", ["none", "nan", "inf", "-inf", "nan+inf"])
def test_reduce_max_is_numpys_max_with_nan_and_infinities(special):
    from biformats.custom import write_artifact

    n = 1000
    node = {
        "name": "m",
        "op": "reduce_max",
        "inputs": ["x"],
        "outputs": ["y"],
        "attrs": {"axes": [2], "keepdims": False},
    }
    data = write_artifact([{"name": "x", "shape": [2, 3, n], "dtype": "float32"}], ["y"], [node], {})
    graph = load_artifact(data, KernelSettings(), fuse=True)
    x = np.random.default_rng(1).standard_normal((2, 3, n)).astype(np.float32)
    for token in special.split("+"):
        if token != "none":
            x[0, 1, 517] = x[1, 2, 3] = np.float32(token)
    got, want = NativeGraph(graph, "auto", 1).run([x])[0], np.max(x, axis=2)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_unplannable_names_the_node():
    data, _ = _export("resnet20", "bnn")
    graph = load_artifact(data, KernelSettings(), fuse=True)
    graph.nodes[3].fn = object()
    with pytest.raises(Unplannable, match=re.escape(f"node {graph.nodes[3].name} (")):
        Planner(graph, 1).plan()


@pytest.mark.parametrize("algo", ["bnn", "reactnet"])
def test_binary_linears_over_sequences_equal_the_per_node_path_at_ragged_sizes(algo):
    """A binary linear over (N, T, K) runs as transpose, 1x1 binary conv, transpose: the
    transposes' 8 x 8 blocks and their ragged edges (T = 13, K = 37, 70 outputs)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(37, 70), torch.nn.Hardtanh(), torch.nn.Linear(70, 67))
    x = torch.randn(3, 13, 37)
    model = bimodels.binarize(net, algo, example_input=x[:1]).eval()
    data = bimodels.export(model, "custom", x[:1])
    graph = load_artifact(data, KernelSettings(threads=1), fuse=True)
    native, how = plan_native(graph, KernelSettings(threads=1))
    assert native is not None, how
    steps = plan_tables(graph, 3).steps[:, 0].tolist()
    assert executor.OP["transpose"] in steps, "the sequence linear is expected on the transposing path"
    for n in (1, 3):
        np.testing.assert_array_equal(native.run([x.numpy()[:n]])[0], graph.run([x.numpy()[:n]])[0])


@pytest.mark.parametrize("algo", ["xnor", "xnorpp"])
def test_every_token_step_equals_the_per_node_path(algo):
    """tests.helpers.TinyTransformer: gather, constants broadcast into adds, strided transposes,
    slices, selects and expands, matmul, softmax, layer norm, GELU both ways, tanh, arithmetic."""
    from biagent.runtimes.base import InvokeError
    from tests.helpers import TinyTransformer

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 6))
    model = bimodels.binarize(TinyTransformer(), algo, example_input=ids[:1]).eval()
    graph = load_artifact(bimodels.export(model, "custom", ids[:1]), KernelSettings(threads=2), fuse=True)
    native, how = plan_native(graph, KernelSettings(threads=2))
    assert native is not None, how
    ops = {executor.OP[k] for k in ("gather", "strided", "matmul", "softmax", "layernorm", "unary")}
    assert ops <= set(plan_tables(graph, 3).steps[:, 0].tolist())
    for n in (1, 3):
        np.testing.assert_array_equal(native.run([ids.numpy()[:n]])[0], graph.run([ids.numpy()[:n]])[0])
    bad = ids.numpy().copy()
    bad[1, 2] = 50
    with pytest.raises(InvokeError, match="a token id outside its embedding table"):
        native.run([bad])
