"""Content-addressed model store: a model's id is the sha256 of its bytes.

An upload is written to a private temp file, checked against the size and hash declared
up front, and only then renamed into place. A bad, truncated or oversized upload leaves
nothing behind. Ids are validated as 64 hex digits, so no request can name a path.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_ID = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = re.compile(r"^[a-z0-9_]{1,16}$")
MAX_NAME = 200
MAX_METADATA_ITEMS, MAX_METADATA_CHARS = 32, 1024


class StoreError(Exception):
    """Base class; `code` names the gRPC status the server maps it to."""

    code = "INVALID_ARGUMENT"


class InvalidModelId(StoreError):
    pass


class ModelNotFound(StoreError):
    code = "NOT_FOUND"


class UploadRejected(StoreError):
    """The declared header is unacceptable (size limit, bad format name, bad metadata)."""


class UploadTooLarge(UploadRejected):
    code = "RESOURCE_EXHAUSTED"


class UploadCorrupt(StoreError):
    """The bytes do not match what was declared."""


class UploadTruncated(UploadCorrupt):
    code = "DATA_LOSS"


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    size_bytes: int
    format: str
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    stored_at: float = 0.0


def check_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not _ID.match(model_id):
        raise InvalidModelId(f"model id must be 64 lower-case hex digits (a sha256), got {model_id[:80]!r}")
    return model_id


class Upload:
    """One upload in progress; use `write` for each chunk, then `commit` (or `abort`)."""

    def __init__(self, store: "ModelStore", header: StoredModel):
        self.store, self.header = store, header
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.header.size_bytes:
            raise UploadCorrupt(
                f"upload is longer than its declared size of {self.header.size_bytes} bytes "
                f"(received {self.received} so far)"
            )
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> StoredModel:
        try:
            if self.received < self.header.size_bytes:
                raise UploadTruncated(
                    f"upload ended after {self.received} of {self.header.size_bytes} declared bytes"
                )
            digest = self._hash.hexdigest()
            if digest != self.header.model_id:
                raise UploadCorrupt(f"sha256 mismatch: declared {self.header.model_id}, received bytes hash to {digest}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            return self.store._install(self._path, self.header)
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class ModelStore:
    def __init__(self, root: Path, max_model_bytes: int = 2 << 30):
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.max_model_bytes = max_model_bytes
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for stale in self.tmp_dir.iterdir():  # uploads cut short by a crash
            stale.unlink(missing_ok=True)

    # -- queries ----------------------------------------------------------------------
    def path(self, model_id: str) -> Path:
        return self.models_dir / f"{check_id(model_id)}.bin"

    def _meta_path(self, model_id: str) -> Path:
        return self.models_dir / f"{check_id(model_id)}.json"

    def stat(self, model_id: str) -> StoredModel:
        meta = self._meta_path(model_id)
        if not self.path(model_id).exists() or not meta.exists():
            raise ModelNotFound(f"no model {model_id} on this board; push it first")
        return StoredModel(**json.loads(meta.read_text()))

    def list(self) -> list[StoredModel]:
        models = []
        for meta in sorted(self.models_dir.glob("*.json")):
            try:
                models.append(self.stat(meta.stem))
            except (StoreError, ValueError, TypeError):
                continue  # a half-deleted entry is not a model
        return models

    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self.list())

    # -- changes ----------------------------------------------------------------------
    def begin(self, header: StoredModel) -> Upload:
        check_id(header.model_id)
        if header.size_bytes <= 0:
            raise UploadRejected(f"declared size must be positive, got {header.size_bytes}")
        if header.size_bytes > self.max_model_bytes:
            raise UploadTooLarge(
                f"model of {header.size_bytes} bytes exceeds this agent's limit of {self.max_model_bytes} bytes"
            )
        if not _FORMAT.match(header.format):
            raise UploadRejected(f"format must be a short lower-case name, got {header.format[:40]!r}")
        if len(header.name) > MAX_NAME:
            raise UploadRejected(f"name longer than {MAX_NAME} characters")
        if len(header.metadata) > MAX_METADATA_ITEMS or any(
            len(k) + len(v) > MAX_METADATA_CHARS for k, v in header.metadata.items()
        ):
            raise UploadRejected(f"metadata limited to {MAX_METADATA_ITEMS} items of {MAX_METADATA_CHARS} characters")
        return Upload(self, header)

    def _install(self, tmp: Path, header: StoredModel) -> StoredModel:
        model = StoredModel(header.model_id, header.size_bytes, header.format, header.name,
                            dict(header.metadata), time.time())
        with self._lock:
            os.replace(tmp, self.path(model.model_id))
            meta_tmp = self.tmp_dir / f"{model.model_id}.json.tmp"
            meta_tmp.write_text(json.dumps(asdict(model)))
            os.replace(meta_tmp, self._meta_path(model.model_id))
        return model

    def delete(self, model_id: str) -> bool:
        with self._lock:
            existed = self.path(model_id).exists()
            self._meta_path(model_id).unlink(missing_ok=True)
            self.path(model_id).unlink(missing_ok=True)
        return existed
