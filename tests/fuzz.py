"""Fuzz properties shared by the unit suite (a few hundred cases) and bench/fuzz.py (10,000+).

Each property takes the number of examples to run, so the same code is a quick test here
and a long campaign there. The contract being checked is the same everywhere: malformed
input gets a clear, typed rejection, and nothing crashes or is left behind.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SERVICE = "/bibench.farm.v1.Agent/"
UNARY = [
    "GetBoardInfo",
    "StatModel",
    "ListModels",
    "DeleteModel",
    "AcquireLease",
    "RenewLease",
    "ReleaseLease",
]
# What an agent may answer to garbage: a refusal with a reason. UNKNOWN (an unhandled
# exception in a handler) or a dead agent is a failure; INTERNAL only for bytes gRPC itself
# cannot parse as the request message.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=n <= 1000,
        suppress_health_check=list(HealthCheck),
    )


def check_refusal(exc: grpc.RpcError) -> str:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INTERNAL and "deserializ" in details.lower():
        return "unparsable"
    assert code in REFUSALS, f"{code}: {details}"
    assert len(details) > 10, f"{code} without a reason"
    return code.name


def raw_bytes_to_every_rpc(address: str, n: int) -> dict[str, int]:
    """Random bytes as the serialized request of every RPC (push and benchmark included)."""
    outcomes: dict[str, int] = {}
    channel = grpc.insecure_channel(address)
    calls = {name: channel.unary_unary(SERVICE + name) for name in UNARY}
    calls["PushModel"] = channel.stream_unary(SERVICE + "PushModel")
    calls["RunBenchmark"] = channel.unary_stream(SERVICE + "RunBenchmark")

    @_settings(n)
    @given(
        method=st.sampled_from(sorted(calls)),
        payloads=st.lists(st.binary(max_size=512), min_size=1, max_size=4),
    )
    def prop(method, payloads):
        call = calls[method]
        try:
            if method == "PushModel":
                call(iter(payloads), timeout=10)
            elif method == "RunBenchmark":
                list(call(payloads[0], timeout=10))
            else:
                call(payloads[0], timeout=10)
            outcome = "OK"
        except grpc.RpcError as exc:
            outcome = check_refusal(exc)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    try:
        prop()
    finally:
        channel.close()
    return outcomes


def tensors():
    dtypes = st.sampled_from(
        ["float32", "int64", "float64", "uint8", "bool", "float16", "object", "", "<f4", "S3"]
    )
    return st.builds(
        lambda shape, dtype, data: {"shape": shape, "dtype": dtype, "data": data},
        st.lists(st.integers(-3, 2**40), max_size=5),
        dtypes,
        st.binary(max_size=64),
    )


def structured_requests(address: str, n: int, model_ids: list[str]) -> dict[str, int]:
    """Well-formed protobuf with hostile values: ids, names, metadata, tensors, counts, leases."""
    from biagent.runtimes import list_runtimes
    from biproto import agent_pb2 as pb
    from biproto import agent_pb2_grpc as pb_grpc

    outcomes: dict[str, int] = {}
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.AgentStub(channel)
    ids = st.one_of(
        st.sampled_from(model_ids or ["0" * 64]), st.text(max_size=80), st.just("../" * 10 + "etc/passwd")
    )
    text = st.text(max_size=300)

    def tensor(t):
        return pb.Tensor(
            shape=[max(min(d, 2**62), -(2**62)) for d in t["shape"]], dtype=t["dtype"], data=t["data"]
        )

    push = st.builds(
        lambda sha, size, fmt, name, meta, chunks: (
            "push",
            pb.ModelHeader(sha256=sha, size_bytes=size, format=fmt, name=name, metadata=meta),
            chunks,
        ),
        ids,
        st.integers(-5, 2**40),
        text,
        text,
        st.dictionaries(text, text, max_size=4),
        st.lists(st.binary(max_size=256), max_size=3),
    )
    bench = st.builds(
        lambda mid, rt, threads, runs, warm, cases, inputs: (
            "bench",
            pb.BenchmarkRequest(
                model_id=mid,
                runtime=rt,
                threads=threads,
                min_runs=runs,
                warmup_runs=warm,
                min_duration_s=0.0,
                max_duration_s=1.0,
                checks=[pb.NumericsCase(inputs=[tensor(a)], expected=[tensor(b)]) for a, b in cases],
                inputs=[tensor(t) for t in inputs],
            ),
            None,
        ),
        ids,
        st.one_of(st.sampled_from(list_runtimes()), text),
        st.integers(-10, 2**31 - 1),
        st.integers(-10, 5),
        st.integers(-10, 2),
        st.lists(st.tuples(tensors(), tensors()), max_size=2),
        st.lists(tensors(), max_size=2),
    )
    lease = st.builds(
        lambda holder, ttl, lid: ("lease", pb.LeaseRequest(holder=holder, ttl_s=ttl, lease_id=lid), None),
        text,
        st.floats(allow_nan=True, allow_infinity=True),
        text,
    )
    stat = st.builds(lambda mid: ("stat", pb.StatModelRequest(model_id=mid), None), ids)

    @_settings(n)
    @given(case=st.one_of(push, bench, lease, stat))
    def prop(case):
        kind, msg, extra = case
        try:
            if kind == "push":
                chunks = [pb.PushModelChunk(header=msg)] + [pb.PushModelChunk(data=c) for c in extra]
                stub.PushModel(iter(chunks), timeout=20)
            elif kind == "bench":
                list(stub.RunBenchmark(msg, timeout=60))
            elif kind == "lease":
                got = stub.AcquireLease(msg, timeout=10)
                stub.RenewLease(pb.LeaseRequest(lease_id=msg.lease_id, ttl_s=msg.ttl_s), timeout=10)
                stub.ReleaseLease(pb.LeaseRequest(lease_id=got.lease_id), timeout=10)  # leave the board free
            else:
                stub.StatModel(msg, timeout=10)
            outcome = f"{kind}:OK"
        except grpc.RpcError as exc:
            outcome = f"{kind}:{check_refusal(exc)}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    try:
        prop()
    finally:
        channel.close()
    return outcomes


def custom_artifact_mutations(seed_artifact: bytes, n: int) -> dict[str, int]:
    """Byte flips, cuts and splices of a real custom artifact, and JSON-level edits of its graph:
    the loader raises ModelLoadError (with a reason) or loads a graph that runs or raises InvokeError."""
    from biagent.runtimes.base import InvokeError, ModelLoadError
    from biagent.runtimes.custom import KernelSettings, load_artifact
    from biagent.runtimes.custom.runtime import plan_native

    with zipfile.ZipFile(io.BytesIO(seed_artifact)) as zf:
        doc = json.loads(zf.read("graph.json"))
        npz = zf.read("tensors.npz")
    outcomes: dict[str, int] = {}

    def repack(graph: dict) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("graph.json", json.dumps(graph))
            zf.writestr("tensors.npz", npz)
        return buf.getvalue()

    json_values = st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**40), 2**40),
            st.floats(allow_nan=False),
            st.text(max_size=12),
        ),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
        max_leaves=10,
    )

    def edit_graph(path_choice, value):
        graph = json.loads(json.dumps(doc))
        nodes = graph["nodes"]
        node = nodes[path_choice[0] % len(nodes)]
        keys = sorted(node["attrs"]) or ["x"]
        key = keys[path_choice[1] % len(keys)]
        node["attrs"][key] = value
        return repack(graph)

    byte_edits = st.builds(
        lambda pos, val, cut: _mutate(seed_artifact, pos, val, cut),
        st.lists(st.integers(0, len(seed_artifact) - 1), min_size=1, max_size=8),
        st.integers(0, 255),
        st.one_of(st.none(), st.integers(0, len(seed_artifact))),
    )
    graph_edits = st.builds(edit_graph, st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), json_values)

    @_settings(n)
    @given(data=st.one_of(byte_edits, graph_edits))
    def prop(data):
        try:
            graph = load_artifact(data, KernelSettings.from_env())
        except ModelLoadError as exc:
            assert str(exc)
            outcomes["rejected"] = outcomes.get("rejected", 0) + 1
            return
        x = np.zeros(graph.inputs[0].shape, np.float32)
        try:
            graph.run([x])
            outcomes["ran"] = outcomes.get("ran", 0) + 1
        except InvokeError as exc:
            assert str(exc)
            outcomes["invoke error"] = outcomes.get("invoke error", 0) + 1
        native, how = plan_native(graph, KernelSettings.from_env())  # the whole-graph executor too
        if native is None:
            outcomes["executor: not planned"] = outcomes.get("executor: not planned", 0) + 1
            assert how.startswith("python (")
            return
        try:
            native.run([x])
            outcomes["executor: ran"] = outcomes.get("executor: ran", 0) + 1
        except InvokeError as exc:
            assert str(exc)
            outcomes["executor: invoke error"] = outcomes.get("executor: invoke error", 0) + 1

    prop()
    return outcomes


def executor_plan_mutations(seed_artifact: bytes, n: int) -> dict[str, int]:
    """Mutated plans of the whole-graph executor (kernels/graph.c): any slot of any step set to
    a hostile value. graph_build refuses the plan with a ValueError naming the step, or the
    plan it accepts runs to the end (or stops with a ValueError); it never crashes."""
    from biagent.kernels import _xnor
    from biagent.runtimes.custom import KernelSettings, load_artifact
    from biagent.runtimes.custom.executor import SLOTS, plan_tables

    graph = load_artifact(seed_artifact, KernelSettings.from_env())
    tables = plan_tables(graph, 1)
    steps, floats, tensors, arena, in_bytes, out_bytes = tables.build_args()
    spec, rng = graph.inputs[0], np.random.default_rng(0)
    if spec.dtype == "int64":  # token ids inside the table; a mutated gather may still read past it
        x = rng.integers(0, 8, spec.shape).astype(np.int64)
    else:
        x = rng.standard_normal(spec.shape).astype(np.float32)
    outcomes: dict[str, int] = {}
    hostile = st.one_of(
        st.sampled_from(
            [0, 1, -1, 2, 7, 8, 63, 64, 65, 1 << 20, 1 << 31, 1 << 32, 1 << 40, -(1 << 62), (1 << 63) - 1]
        ),
        st.integers(-(2**63), 2**63 - 1),
    )
    edits = st.lists(
        st.tuples(st.integers(0, len(steps) - 1), st.integers(0, SLOTS - 1), hostile), min_size=1, max_size=4
    )

    @_settings(n)
    @given(edits=edits, nudge=st.booleans())
    def prop(edits, nudge):
        mutated = steps.copy()
        for i, j, value in edits:
            mutated[i, j] = mutated[i, j] + (1 if value > 0 else -1) if nudge else value
        try:
            plan = _xnor.graph_build(mutated, floats, tensors, arena, in_bytes, out_bytes)
        except ValueError as exc:
            assert "graph_build: " in str(exc)
            outcomes["refused at build"] = outcomes.get("refused at build", 0) + 1
            return
        out = np.empty(out_bytes[0] // 4, np.float32)
        try:
            _xnor.graph_run(plan, (x,), (out,), "auto", 1)
            outcomes["built and ran"] = outcomes.get("built and ran", 0) + 1
        except ValueError as exc:
            assert str(exc)
            outcomes["built, refused at run"] = outcomes.get("built, refused at run", 0) + 1

    prop()
    return outcomes


def token_model_artifact(algorithm: str = "xnorpp") -> bytes:
    """A small binarized token model (tests.helpers.TinyTransformer): every step a Transformer
    adds to the executor (gather, strided copies, matmul, layer norm, softmax, unary)."""
    import torch

    import bimodels
    from tests.helpers import TinyTransformer

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (1, 6))
    model = bimodels.binarize(TinyTransformer(), algorithm, example_input=ids).eval()
    return bimodels.export(model, "custom", ids)


def _mutate(data: bytes, positions: list[int], value: int, cut: int | None) -> bytes:
    b = bytearray(data)
    for p in positions:
        b[p] = value
    return bytes(b[:cut] if cut is not None else b)


def inventory_files(tmp: Path, n: int) -> dict[str, int]:
    """Random YAML documents, near-valid inventories with hostile values, and random text:
    Inventory.load either loads or raises InventoryError naming the file."""
    import yaml

    from bihost.inventory import BOARD_KEYS, Inventory, InventoryError

    path = tmp / "inventory.yaml"
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30)
    )
    values = st.recursive(
        scalars,
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), kids, max_size=4)
        ),
        max_leaves=12,
    )
    keys = st.sampled_from([*BOARD_KEYS, "bogus"])
    boards = st.dictionaries(
        st.one_of(st.text(max_size=20), st.integers()), st.dictionaries(keys, values, max_size=6), max_size=3
    )
    near_valid = st.builds(
        lambda b, v: yaml.safe_dump({"version": v, "boards": b}, allow_unicode=True),
        boards,
        st.one_of(st.just(1), scalars),
    )
    raw = st.text(max_size=400)
    outcomes: dict[str, int] = {}

    @_settings(n)
    @given(text=st.one_of(near_valid, raw))
    def prop(text):
        path.write_text(text, encoding="utf-8")
        try:
            Inventory.load(path)
            outcomes["loaded"] = outcomes.get("loaded", 0) + 1
        except InventoryError as exc:
            assert str(path) in str(exc), exc
            outcomes["rejected"] = outcomes.get("rejected", 0) + 1

    prop()
    return outcomes


def double_model_onnx() -> bytes:
    """`y = 2 x` on a (1, 8) float32 input: the reference output of any input is known exactly."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["x", "two"], ["y"])
    graph = helper.make_graph(
        [node],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def expected_verdict(output: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> str:
    """The check's verdict, written out independently of the agent's code: INVALID for a
    tolerance that is not finite and >= 0 (0 means the default), numerics_error for any NaN
    mismatch or an error over atol + rtol * max finite |expected|, else ok."""
    if not (np.isfinite(atol) and np.isfinite(rtol) and atol >= 0 and rtol >= 0):
        return "INVALID_ARGUMENT"
    atol, rtol = atol or 1e-4, rtol or 1e-5
    o, e = output.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    worst, scale = 0.0, 0.0
    for a, b in zip(o, e):
        if np.isnan(a) or np.isnan(b):
            if not (np.isnan(a) and np.isnan(b)):
                return "numerics_error"
            continue
        if a != b:
            worst = max(worst, abs(a - b))
        if np.isfinite(b):
            scale = max(scale, abs(b))
    return "ok" if worst <= atol + rtol * scale else "numerics_error"


def nan_and_inf_checks(address: str, n: int, model_id: str) -> dict[str, int]:
    """Check inputs, expected outputs and tolerances with NaN, +-Inf and huge values placed at
    random against the `y = 2 x` model (`double_model_onnx`, pushed as `model_id`): the agent's
    verdict must be the independent one of `expected_verdict` every time."""
    from biproto import agent_pb2 as pb
    from biproto import agent_pb2_grpc as pb_grpc

    specials = st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -0.0])
    values = st.one_of(st.floats(-4, 4, width=32), specials)
    vectors = st.lists(values, min_size=8, max_size=8)
    tolerances = st.one_of(
        st.just(0.0), st.floats(1e-7, 10.0), st.sampled_from([np.nan, np.inf, -np.inf, -1e-3])
    )
    outcomes: dict[str, int] = {}
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.AgentStub(channel)

    def tensor(a: np.ndarray):
        return pb.Tensor(shape=list(a.shape), dtype="float32", data=a.astype("<f4").tobytes())

    @_settings(n)
    @given(
        x=vectors,
        edits=st.lists(st.tuples(st.integers(0, 7), values), max_size=3),
        noise=st.floats(0, 1e-3),
        atol=tolerances,
        rtol=tolerances,
    )
    def prop(x, edits, noise, atol, rtol):
        x = np.asarray(x, np.float32).reshape(1, 8)
        with np.errstate(over="ignore", invalid="ignore"):
            output = x * np.float32(2)
            expected = (output + np.float32(noise)).astype(np.float32)
        for i, v in edits:
            expected[0, i] = v
        want = expected_verdict(output, expected, atol, rtol)
        request = pb.BenchmarkRequest(
            model_id=model_id,
            runtime="onnxruntime",
            min_runs=1,
            atol=atol,
            rtol=rtol,
            checks=[pb.NumericsCase(inputs=[tensor(x)], expected=[tensor(expected)])],
        )
        try:
            events = list(stub.RunBenchmark(request, timeout=60))
            got = events[-1].summary.status
        except grpc.RpcError as exc:
            got = exc.code().name
        assert got == want, (x, expected, atol, rtol, got, want)
        outcomes[got] = outcomes.get(got, 0) + 1

    try:
        prop()
    finally:
        channel.close()
    return outcomes


def silent_and_slow_clients(address: str, n: int, idle_s: float) -> dict[str, int]:
    """Batches of concurrent uploads that pause (shorter or longer than the agent's idle limit
    `idle_s`), stop early, or never finish: each ends as it must (stored, ABORTED, DATA_LOSS),
    and the health check answers within a second all along."""
    import hashlib
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from biproto import agent_pb2 as pb
    from biproto import agent_pb2_grpc as pb_grpc

    outcomes: dict[str, int] = {}
    behaviours = st.tuples(
        st.integers(1, 6),  # chunks sent before the pause
        st.sampled_from(["short pause", "long pause", "hang up", "stop early"]),
    )

    def upload(channel, data: bytes, sent: int, how: str) -> str:
        data = os.urandom(16) + data  # a model never stored before: no early "already present"

        hung_up = threading.Event()

        def chunks():
            yield pb.PushModelChunk(
                header=pb.ModelHeader(
                    sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), format="onnx"
                )
            )
            pieces = [data[i : i + 100] for i in range(0, len(data), 100)]
            for i, piece in enumerate(pieces):
                if i == sent:
                    if how == "stop early":
                        return
                    if how == "hang up":
                        hung_up.wait(idle_s * 10)
                        return
                    time.sleep(idle_s * (0.3 if how == "short pause" else 2.0))
                yield pb.PushModelChunk(data=piece)

        call = pb_grpc.AgentStub(channel).PushModel.future(chunks(), timeout=idle_s * 10)
        if how == "hang up":
            time.sleep(idle_s * 0.3)
            call.cancel()
            hung_up.set()
        try:
            call.result()
            return "stored"
        except grpc.FutureCancelledError:
            return "CANCELLED"
        except grpc.RpcError as exc:
            return exc.code().name

    allowed = {
        "short pause": {"stored"},
        "long pause": {"ABORTED"},
        "stop early": {"DATA_LOSS"},
        "hang up": {"CANCELLED"},
    }

    @_settings(n)
    @given(
        batch=st.lists(st.tuples(behaviours, st.binary(min_size=700, max_size=700)), min_size=1, max_size=6)
    )
    def prop(batch):
        channels = [
            grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in batch
        ]
        results: list[tuple[str, str]] = []
        threads = [
            threading.Thread(target=lambda c=c, d=d, s=s, h=h: results.append((h, upload(c, d, s, h))))
            for c, ((s, h), d) in zip(channels, batch)
        ]
        for t in threads:
            t.start()
        with grpc.insecure_channel(address) as probe:
            health = health_pb2_grpc.HealthStub(probe)
            while any(t.is_alive() for t in threads):
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service="bibench.farm.v1.Agent"), timeout=1
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.1)
        for t in threads:
            t.join()
        for c in channels:
            c.close()
        for how, got in results:
            assert got in allowed[how], (how, got)
            outcomes[f"{how}:{got}"] = outcomes.get(f"{how}:{got}", 0) + 1

    prop()
    return outcomes
