from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetBoardInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CpuInfo(_message.Message):
    __slots__ = ("model", "machine", "logical_cores", "features", "max_freq_mhz", "core_types")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    CORE_TYPES_FIELD_NUMBER: _ClassVar[int]
    model: str
    machine: str
    logical_cores: int
    features: _containers.RepeatedScalarFieldContainer[str]
    max_freq_mhz: _containers.RepeatedScalarFieldContainer[float]
    core_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., machine: _Optional[str] = ..., logical_cores: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., max_freq_mhz: _Optional[_Iterable[float]] = ..., core_types: _Optional[_Iterable[str]] = ...) -> None: ...

class RuntimeStatus(_message.Message):
    __slots__ = ("name", "installed", "version", "detail", "formats")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    name: str
    installed: bool
    version: str
    detail: str
    formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., installed: _Optional[bool] = ..., version: _Optional[str] = ..., detail: _Optional[str] = ..., formats: _Optional[_Iterable[str]] = ...) -> None: ...

class BoardInfo(_message.Message):
    __slots__ = ("agent_name", "agent_version", "hostname", "cpu", "os", "memory_bytes", "governor", "temperature_known", "temperature_c", "runtimes", "python")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    agent_version: str
    hostname: str
    cpu: CpuInfo
    os: str
    memory_bytes: int
    governor: str
    temperature_known: bool
    temperature_c: float
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeStatus]
    python: str
    def __init__(self, agent_name: _Optional[str] = ..., agent_version: _Optional[str] = ..., hostname: _Optional[str] = ..., cpu: _Optional[_Union[CpuInfo, _Mapping]] = ..., os: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., governor: _Optional[str] = ..., temperature_known: _Optional[bool] = ..., temperature_c: _Optional[float] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeStatus, _Mapping]]] = ..., python: _Optional[str] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("sha256", "size_bytes", "format", "name", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    format: str
    name: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ..., name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PushModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "size_bytes", "format", "name", "metadata", "stored_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size_bytes: int
    format: str
    name: str
    metadata: _containers.ScalarMap[str, str]
    stored_at: float
    def __init__(self, model_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ..., name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., stored_at: _Optional[float] = ...) -> None: ...

class PushModelResponse(_message.Message):
    __slots__ = ("model", "already_present")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    already_present: bool
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., already_present: _Optional[bool] = ...) -> None: ...

class StatModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class NumericsCase(_message.Message):
    __slots__ = ("inputs", "expected", "signs", "alternatives")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    SIGNS_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    expected: _containers.RepeatedCompositeFieldContainer[Tensor]
    signs: _containers.RepeatedCompositeFieldContainer[SignReference]
    alternatives: _containers.RepeatedCompositeFieldContainer[Alternative]
    def __init__(self, inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., expected: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., signs: _Optional[_Iterable[_Union[SignReference, _Mapping]]] = ..., alternatives: _Optional[_Iterable[_Union[Alternative, _Mapping]]] = ...) -> None: ...

class Alternative(_message.Message):
    __slots__ = ("layer", "position", "margin", "expected")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    layer: int
    position: int
    margin: float
    expected: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, layer: _Optional[int] = ..., position: _Optional[int] = ..., margin: _Optional[float] = ..., expected: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class SignReference(_message.Message):
    __slots__ = ("shape", "bits", "fragile", "margins")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    FRAGILE_FIELD_NUMBER: _ClassVar[int]
    MARGINS_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    bits: bytes
    fragile: _containers.RepeatedScalarFieldContainer[int]
    margins: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., bits: _Optional[bytes] = ..., fragile: _Optional[_Iterable[int]] = ..., margins: _Optional[_Iterable[float]] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("model_id", "runtime", "threads", "warmup_runs", "min_runs", "min_duration_s", "max_duration_s", "checks", "atol", "rtol", "inputs", "lease_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    runtime: str
    threads: int
    warmup_runs: int
    min_runs: int
    min_duration_s: float
    max_duration_s: float
    checks: _containers.RepeatedCompositeFieldContainer[NumericsCase]
    atol: float
    rtol: float
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    lease_id: str
    def __init__(self, model_id: _Optional[str] = ..., runtime: _Optional[str] = ..., threads: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., min_runs: _Optional[int] = ..., min_duration_s: _Optional[float] = ..., max_duration_s: _Optional[float] = ..., checks: _Optional[_Iterable[_Union[NumericsCase, _Mapping]]] = ..., atol: _Optional[float] = ..., rtol: _Optional[float] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., lease_id: _Optional[str] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("holder", "ttl_s", "lease_id")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    holder: str
    ttl_s: float
    lease_id: str
    def __init__(self, holder: _Optional[str] = ..., ttl_s: _Optional[float] = ..., lease_id: _Optional[str] = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = ("granted", "lease_id", "holder", "expires_in_s")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    lease_id: str
    holder: str
    expires_in_s: float
    def __init__(self, granted: _Optional[bool] = ..., lease_id: _Optional[str] = ..., holder: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "done", "total", "message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    done: int
    total: int
    message: str
    def __init__(self, phase: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Samples(_message.Message):
    __slots__ = ("latency_s",)
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    latency_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, latency_s: _Optional[_Iterable[float]] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("min_s", "median_s", "mean_s", "p90_s", "p99_s", "std_s", "max_s", "count")
    MIN_S_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    STD_S_FIELD_NUMBER: _ClassVar[int]
    MAX_S_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    min_s: float
    median_s: float
    mean_s: float
    p90_s: float
    p99_s: float
    std_s: float
    max_s: float
    count: int
    def __init__(self, min_s: _Optional[float] = ..., median_s: _Optional[float] = ..., mean_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., std_s: _Optional[float] = ..., max_s: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class BenchmarkSummary(_message.Message):
    __slots__ = ("status", "reason", "latency", "runs", "warmup_runs", "threads", "model_bytes", "peak_rss_bytes", "max_abs_errors", "runtime", "runtime_version", "load_s", "governor", "temperature_known", "temperature_c", "affinity")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    latency: LatencyStats
    runs: int
    warmup_runs: int
    threads: int
    model_bytes: int
    peak_rss_bytes: int
    max_abs_errors: _containers.RepeatedScalarFieldContainer[float]
    runtime: str
    runtime_version: str
    load_s: float
    governor: str
    temperature_known: bool
    temperature_c: float
    affinity: str
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., threads: _Optional[int] = ..., model_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., max_abs_errors: _Optional[_Iterable[float]] = ..., runtime: _Optional[str] = ..., runtime_version: _Optional[str] = ..., load_s: _Optional[float] = ..., governor: _Optional[str] = ..., temperature_known: _Optional[bool] = ..., temperature_c: _Optional[float] = ..., affinity: _Optional[str] = ...) -> None: ...

class BenchmarkEvent(_message.Message):
    __slots__ = ("progress", "samples", "summary")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    samples: Samples
    summary: BenchmarkSummary
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., samples: _Optional[_Union[Samples, _Mapping]] = ..., summary: _Optional[_Union[BenchmarkSummary, _Mapping]] = ...) -> None: ...
