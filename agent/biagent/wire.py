"""Protobuf <-> domain conversions for the agent. Nothing else in biagent sees a _pb2 class."""

from __future__ import annotations

import math

import numpy as np

from biproto import agent_pb2 as pb

from . import __version__
from .hwinfo import BoardIdentity
from .runtimes import RuntimeInfo
from .store import StoredModel

MAX_TENSOR_ELEMENTS = 64 << 20
_DTYPES = {"float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"}


class WireError(ValueError):
    """A message that does not decode into a valid domain object."""


def board_info(name: str, ident: BoardIdentity, runtimes: list[RuntimeInfo]) -> pb.BoardInfo:
    cpu = ident.cpu
    return pb.BoardInfo(
        agent_name=name,
        agent_version=__version__,
        hostname=ident.hostname,
        cpu=pb.CpuInfo(
            model=cpu.model,
            machine=cpu.machine,
            logical_cores=cpu.logical_cores,
            features=list(cpu.features),
            max_freq_mhz=list(cpu.max_freq_mhz),
            core_types=list(cpu.core_types),
        ),
        os=ident.os,
        memory_bytes=ident.memory_bytes,
        governor=ident.governor,
        temperature_known=ident.temperature_c is not None,
        temperature_c=ident.temperature_c or 0.0,
        runtimes=[
            pb.RuntimeStatus(
                name=r.name,
                installed=r.installed,
                version=r.version,
                detail=r.detail,
                formats=list(r.formats),
            )
            for r in runtimes
        ],
        python=ident.python,
    )


def model_info(m: StoredModel) -> pb.ModelInfo:
    return pb.ModelInfo(
        model_id=m.model_id,
        size_bytes=m.size_bytes,
        format=m.format,
        name=m.name,
        metadata=m.metadata,
        stored_at=m.stored_at,
    )


def header_to_model(h: pb.ModelHeader) -> StoredModel:
    return StoredModel(
        model_id=h.sha256, size_bytes=h.size_bytes, format=h.format, name=h.name, metadata=dict(h.metadata)
    )


def to_array(t: pb.Tensor) -> np.ndarray:
    if t.dtype not in _DTYPES:
        raise WireError(f"unsupported tensor dtype {t.dtype[:20]!r}")
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape):
        raise WireError(f"negative dimension in tensor shape {shape}")
    count = math.prod(shape)  # Python ints: a hostile shape cannot overflow into a small count
    if count > MAX_TENSOR_ELEMENTS:
        raise WireError(f"tensor of {count} elements is larger than the limit of {MAX_TENSOR_ELEMENTS}")
    dtype = np.dtype(t.dtype).newbyteorder("<")
    if len(t.data) != count * dtype.itemsize:
        raise WireError(
            f"tensor data has {len(t.data)} bytes, shape {shape} of {t.dtype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(t.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def from_array(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a)
    return pb.Tensor(
        shape=list(a.shape), dtype=a.dtype.name, data=a.astype(a.dtype.newbyteorder("<")).tobytes()
    )


def event_from_worker(msg: dict) -> pb.BenchmarkEvent | None:
    kind = msg.get("event")
    if kind == "progress":
        return pb.BenchmarkEvent(
            progress=pb.Progress(
                phase=msg.get("phase", ""),
                done=int(msg.get("done", 0)),
                total=int(msg.get("total", 0)),
                message=msg.get("message", ""),
            )
        )
    if kind == "samples":
        return pb.BenchmarkEvent(samples=pb.Samples(latency_s=msg["latency_s"]))
    if kind == "summary":
        temp = msg.get("temperature_c")
        return pb.BenchmarkEvent(
            summary=pb.BenchmarkSummary(
                status=msg["status"],
                reason=msg.get("reason", ""),
                latency=pb.LatencyStats(**msg["latency"]),
                runs=msg["runs"],
                warmup_runs=msg["warmup_runs"],
                threads=msg["threads"],
                model_bytes=msg["model_bytes"],
                peak_rss_bytes=msg["peak_rss_bytes"],
                max_abs_errors=msg["max_abs_errors"],
                runtime=msg["runtime"],
                runtime_version=msg["runtime_version"],
                load_s=msg["load_s"],
                governor=msg.get("governor", ""),
                temperature_known=temp is not None,
                temperature_c=temp or 0.0,
                affinity=msg.get("affinity", ""),
            )
        )
    return None
