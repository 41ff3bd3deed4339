"""Fuzz properties shared by the unit suite (a few hundred cases) and bench/fuzz.py (10,000+).

Each property takes the number of examples to run, so the same code is a quick test here
and a long campaign there. The contract being checked is the same everywhere: malformed
input gets a clear, typed rejection, and nothing crashes or is left behind.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SERVICE = "/bibench.farm.v1.Agent/"
UNARY = ["GetBoardInfo", "StatModel", "ListModels", "DeleteModel", "AcquireLease", "RenewLease", "ReleaseLease"]
# What an agent may answer to garbage: a refusal with a reason. UNKNOWN (an unhandled
# exception in a handler) or a dead agent is a failure; INTERNAL only for bytes gRPC itself
# cannot parse as the request message.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, derandomize=n <= 1000,
                    suppress_health_check=list(HealthCheck))


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
    @given(method=st.sampled_from(sorted(calls)), payloads=st.lists(st.binary(max_size=512), min_size=1, max_size=4))
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
    dtypes = st.sampled_from(["float32", "int64", "float64", "uint8", "bool", "float16", "object", "", "<f4", "S3"])
    return st.builds(lambda shape, dtype, data: {"shape": shape, "dtype": dtype, "data": data},
                     st.lists(st.integers(-3, 2**40), max_size=5), dtypes, st.binary(max_size=64))


def structured_requests(address: str, n: int, model_ids: list[str]) -> dict[str, int]:
    """Well-formed protobuf with hostile values: ids, names, metadata, tensors, counts, leases."""
    from biproto import agent_pb2 as pb
    from biproto import agent_pb2_grpc as pb_grpc

    outcomes: dict[str, int] = {}
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.AgentStub(channel)
    ids = st.one_of(st.sampled_from(model_ids or ["0" * 64]), st.text(max_size=80), st.just("../" * 10 + "etc/passwd"))
    text = st.text(max_size=300)

    def tensor(t):
        return pb.Tensor(shape=[max(min(d, 2**62), -2**62) for d in t["shape"]], dtype=t["dtype"], data=t["data"])

    push = st.builds(lambda sha, size, fmt, name, meta, chunks: ("push", pb.ModelHeader(
        sha256=sha, size_bytes=size, format=fmt, name=name, metadata=meta), chunks),
        ids, st.integers(-5, 2**40), text, text, st.dictionaries(text, text, max_size=4),
        st.lists(st.binary(max_size=256), max_size=3))
    bench = st.builds(lambda mid, rt, threads, runs, warm, cases, inputs: ("bench", pb.BenchmarkRequest(
        model_id=mid, runtime=rt, threads=threads, min_runs=runs, warmup_runs=warm, min_duration_s=0.0,
        max_duration_s=1.0, checks=[pb.NumericsCase(inputs=[tensor(a)], expected=[tensor(b)]) for a, b in cases],
        inputs=[tensor(t) for t in inputs]), None),
        ids, st.one_of(st.sampled_from(["custom", "onnxruntime", "larq", "dabnn"]), text),
        st.integers(-10, 2**31 - 1), st.integers(-10, 5), st.integers(-10, 2),
        st.lists(st.tuples(tensors(), tensors()), max_size=2), st.lists(tensors(), max_size=2))
    lease = st.builds(lambda holder, ttl, lid: ("lease", pb.LeaseRequest(holder=holder, ttl_s=ttl, lease_id=lid), None),
                      text, st.floats(allow_nan=True, allow_infinity=True), text)
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
    from biagent.runtimes.custom_engine import load_artifact

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

    json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                                         st.floats(allow_nan=False), st.text(max_size=12)),
                               lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=4), max_leaves=10)

    def edit_graph(path_choice, value):
        graph = json.loads(json.dumps(doc))
        nodes = graph["nodes"]
        node = nodes[path_choice[0] % len(nodes)]
        keys = sorted(node["attrs"]) or ["x"]
        key = keys[path_choice[1] % len(keys)]
        node["attrs"][key] = value
        return repack(graph)

    byte_edits = st.builds(lambda pos, val, cut: _mutate(seed_artifact, pos, val, cut),
                           st.lists(st.integers(0, len(seed_artifact) - 1), min_size=1, max_size=8),
                           st.integers(0, 255), st.one_of(st.none(), st.integers(0, len(seed_artifact))))
    graph_edits = st.builds(edit_graph, st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), json_values)

    @_settings(n)
    @given(data=st.one_of(byte_edits, graph_edits))
    def prop(data):
        try:
            graph = load_artifact(data)
        except ModelLoadError as exc:
            assert str(exc)
            outcomes["rejected"] = outcomes.get("rejected", 0) + 1
            return
        try:
            graph.run([np.zeros(graph.inputs[0].shape, np.float32)])
            outcomes["ran"] = outcomes.get("ran", 0) + 1
        except InvokeError as exc:
            assert str(exc)
            outcomes["invoke error"] = outcomes.get("invoke error", 0) + 1

    prop()
    return outcomes


def _mutate(data: bytes, positions: list[int], value: int, cut: int | None) -> bytes:
    b = bytearray(data)
    for p in positions:
        b[p] = value
    return bytes(b[:cut] if cut is not None else b)


def inventory_files(tmp: Path, n: int) -> dict[str, int]:
    """Random YAML documents, near-valid inventories with hostile values, and random text:
    Inventory.load either loads or raises InventoryError naming the file."""
    import yaml

    from bihost.inventory import Inventory, InventoryError

    path = tmp / "inventory.yaml"
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30))
    values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=12), st.integers()), kids, max_size=4), max_leaves=12)
    keys = st.sampled_from(["soc", "arch", "os", "cpu", "runtimes", "address", "transport", "ssh", "tls", "token_file",
                            "description", "expected", "bogus"])
    boards = st.dictionaries(st.one_of(st.text(max_size=20), st.integers()), st.dictionaries(keys, values, max_size=6),
                             max_size=3)
    near_valid = st.builds(lambda b, v: yaml.safe_dump({"version": v, "boards": b}, allow_unicode=True),
                           boards, st.one_of(st.just(1), scalars))
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
