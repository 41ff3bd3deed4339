"""The content-addressed model store: nothing half-written, nothing outside the store."""
from __future__ import annotations

import hashlib

import pytest

from biagent.store import (InvalidModelId, ModelNotFound, ModelStore, StoredModel, UploadCorrupt, UploadRejected,
                           UploadTooLarge, UploadTruncated)

DATA = b"model bytes " * 1000
ID = hashlib.sha256(DATA).hexdigest()


def header(**kw) -> StoredModel:
    return StoredModel(**({"model_id": ID, "size_bytes": len(DATA), "format": "onnx", "name": "m"} | kw))


def files(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*") if p.is_file())


def test_upload_in_chunks_then_stat_list_delete(tmp_path):
    store = ModelStore(tmp_path)
    up = store.begin(header(metadata={"arch": "resnet18"}))
    for i in range(0, len(DATA), 777):
        up.write(DATA[i:i + 777])
    model = up.commit()
    assert store.path(ID).read_bytes() == DATA
    assert store.stat(ID).metadata == {"arch": "resnet18"} and model.stored_at > 0
    assert [m.model_id for m in store.list()] == [ID]
    assert store.delete(ID) and not store.delete(ID)
    with pytest.raises(ModelNotFound):
        store.stat(ID)


@pytest.mark.parametrize("payload, error", [
    (DATA[:-1] + b"X", UploadCorrupt),  # same size, other bytes: sha256 mismatch
    (DATA[:100], UploadTruncated),  # stream ended early
])
def test_bad_uploads_leave_nothing(tmp_path, payload, error):
    store = ModelStore(tmp_path)
    up = store.begin(header())
    up.write(payload)
    with pytest.raises(error):
        up.commit()
    assert files(store) == []


def test_longer_than_declared_is_refused_while_streaming(tmp_path):
    store = ModelStore(tmp_path)
    up = store.begin(header(size_bytes=10))
    with pytest.raises(UploadCorrupt, match="longer than its declared size"):
        up.write(DATA)
    up.abort()
    assert files(store) == []


@pytest.mark.parametrize("kw, error", [
    ({"model_id": "../../etc/passwd"}, InvalidModelId),
    ({"model_id": ID.upper()}, InvalidModelId),
    ({"size_bytes": 0}, UploadRejected),
    ({"size_bytes": 10 << 20}, UploadTooLarge),
    ({"format": "ONNX; rm -rf"}, UploadRejected),
    ({"name": "x" * 500}, UploadRejected),
])
def test_headers_are_validated(tmp_path, kw, error):
    store = ModelStore(tmp_path, max_model_bytes=1 << 20)
    with pytest.raises(error):
        store.begin(header(**kw))
    assert files(store) == []


def test_stale_temp_files_are_cleared_on_start(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "upload-crashed").write_bytes(b"partial")
    store = ModelStore(tmp_path)
    assert files(store) == []
