"""Content-addressed model store: a model's id is the sha256 of its bytes.

An upload is written to a private temp file, checked against the size and hash declared
up front, and only then renamed into place. A bad, truncated or oversized upload leaves
nothing behind. Ids are validated as 64 hex digits, so no request can name a path; names
and metadata are length- and charset-limited (printable text, no control characters).

The store holds at most `max_store_bytes`: installing a model evicts the least recently
used ones (a model's file mtime is its last use) that no running benchmark holds.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("biagent.store")
_ID = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = re.compile(r"^[a-z0-9_]{1,16}$")
MAX_NAME = 200
MAX_METADATA_ITEMS, MAX_METADATA_CHARS = 32, 1024
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class StoreLocked(OSError):
    """Another live agent serves this store."""


class StoreLock:
    """An exclusive lock on the store for one agent process, released when it exits (even by
    SIGKILL: the kernel drops a dead process's flock), with the holder's pid for the message."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "agent.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            self.release()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLocked(
                    f"another agent (pid {holder}) serves the store {root}; stop it first, "
                    "or give this one its own --store"
                ) from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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

    def __init__(self, store: ModelStore, header: StoredModel):
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
                raise UploadCorrupt(
                    f"sha256 mismatch: declared {self.header.model_id}, received bytes hash to {digest}"
                )
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
    def __init__(self, root: Path, max_model_bytes: int = 2 << 30, max_store_bytes: int | None = None):
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.max_model_bytes = max_model_bytes
        self.max_store_bytes = max_store_bytes
        self._pins: dict[str, int] = {}  # model id -> running benchmarks that hold it
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
        if self.max_store_bytes is not None and header.size_bytes > self.max_store_bytes:
            raise UploadTooLarge(
                f"model of {header.size_bytes} bytes exceeds this agent's store of "
                f"{self.max_store_bytes} bytes"
            )
        if len(header.name) > MAX_NAME:
            raise UploadRejected(f"name longer than {MAX_NAME} characters")
        if not header.name.isprintable():
            raise UploadRejected("name must be printable text (no control characters or newlines)")
        if len(header.metadata) > MAX_METADATA_ITEMS or any(
            len(k) + len(v) > MAX_METADATA_CHARS for k, v in header.metadata.items()
        ):
            raise UploadRejected(
                f"metadata limited to {MAX_METADATA_ITEMS} items of {MAX_METADATA_CHARS} characters"
            )
        for key, value in header.metadata.items():
            if not _METADATA_KEY.match(key):
                raise UploadRejected(f"metadata key {key[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . : -")
            if not value.isprintable():
                raise UploadRejected(f"metadata value of {key!r} must be printable text")
        return Upload(self, header)

    @contextmanager
    def using(self, model_id: str) -> Iterator[Path]:
        """Hold a model for a benchmark: it is marked used now and cannot be evicted meanwhile."""
        path = self.path(model_id)
        with self._lock:
            if not path.exists():
                raise ModelNotFound(f"no model {model_id} on this board; push it first")
            self._pins[model_id] = self._pins.get(model_id, 0) + 1
            os.utime(path)
        try:
            yield path
        finally:
            with self._lock:
                self._pins[model_id] -= 1
                if not self._pins[model_id]:
                    del self._pins[model_id]

    def _make_room(self, incoming: int, keep: str) -> None:
        """Evict least recently used, unheld models until `incoming` more bytes fit (lock held)."""
        if self.max_store_bytes is None:
            return
        others = [m for m in self.list() if m.model_id != keep]
        excess = sum(m.size_bytes for m in others) + incoming - self.max_store_bytes
        if excess <= 0:
            return

        def last_use(m: StoredModel) -> float:
            try:
                return self.path(m.model_id).stat().st_mtime
            except OSError:
                return 0.0

        for m in sorted((m for m in others if m.model_id not in self._pins), key=last_use):
            if excess <= 0:
                break
            self._meta_path(m.model_id).unlink(missing_ok=True)
            self.path(m.model_id).unlink(missing_ok=True)
            log.info(
                "evicted model %s (%d bytes, least recently used) to stay under %d bytes",
                m.model_id[:12],
                m.size_bytes,
                self.max_store_bytes,
            )
            excess -= m.size_bytes
        if excess > 0:
            raise UploadTooLarge(
                f"the store is full ({self.max_store_bytes} bytes) and the models left are in use "
                "by running benchmarks; retry when they finish"
            )

    def _install(self, tmp: Path, header: StoredModel) -> StoredModel:
        model = StoredModel(
            header.model_id, header.size_bytes, header.format, header.name, dict(header.metadata), time.time()
        )
        with self._lock:
            self._make_room(model.size_bytes, keep=model.model_id)
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
