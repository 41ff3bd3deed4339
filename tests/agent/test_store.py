"""The content-addressed model store: nothing half-written, nothing outside the store."""

from __future__ import annotations

import hashlib

import pytest

from biagent.store import (
    InvalidModelId,
    ModelNotFound,
    ModelStore,
    StoredModel,
    UploadCorrupt,
    UploadRejected,
    UploadTooLarge,
    UploadTruncated,
)

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
        up.write(DATA[i : i + 777])
    model = up.commit()
    assert store.path(ID).read_bytes() == DATA
    assert store.stat(ID).metadata == {"arch": "resnet18"} and model.stored_at > 0
    assert [m.model_id for m in store.list()] == [ID]
    assert store.delete(ID) and not store.delete(ID)
    with pytest.raises(ModelNotFound):
        store.stat(ID)


@pytest.mark.parametrize(
    "payload, error",
    [
        (DATA[:-1] + b"X", UploadCorrupt),  # same size, other bytes: sha256 mismatch
        (DATA[:100], UploadTruncated),  # stream ended early
    ],
)
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


@pytest.mark.parametrize(
    "kw, error",
    [
        ({"model_id": "../../etc/passwd"}, InvalidModelId),
        ({"model_id": ID.upper()}, InvalidModelId),
        ({"size_bytes": 0}, UploadRejected),
        ({"size_bytes": 10 << 20}, UploadTooLarge),
        ({"format": "ONNX; rm -rf"}, UploadRejected),
        ({"name": "x" * 500}, UploadRejected),
    ],
)
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


def _put(store: ModelStore, data: bytes) -> str:
    model_id = hashlib.sha256(data).hexdigest()
    up = store.begin(StoredModel(model_id, len(data), "onnx", "m"))
    up.write(data)
    up.commit()
    return model_id


def test_store_budget_evicts_least_recently_used_but_never_a_held_model(tmp_path):
    import os

    store = ModelStore(tmp_path, max_store_bytes=3000)
    a, b = _put(store, b"a" * 1000), _put(store, b"b" * 1000)
    os.utime(store.path(a), (1, 1))  # a used long ago, b more recently
    os.utime(store.path(b), (2, 2))
    with store.using(b):  # b is used now and held: cannot go
        c = _put(store, b"c" * 1500)  # 3500 > 3000: evict a (the oldest)
        assert {m.model_id for m in store.list()} == {b, c}
        with store.using(c), pytest.raises(UploadTooLarge, match="in use"):
            _put(store, b"d" * 1000)  # only held models left to evict
    assert {m.model_id for m in store.list()} == {b, c}
    os.utime(store.path(b), (3, 3))  # nothing held now; b was last used before c
    os.utime(store.path(c), (4, 4))
    d = _put(store, b"d" * 1400)  # 3900 > 3000: b goes, c stays
    assert {m.model_id for m in store.list()} == {c, d}
    with pytest.raises(UploadTooLarge, match="store of 3000 bytes"):
        store.begin(StoredModel("e" * 64, 3001, "onnx"))
    assert not list(store.tmp_dir.iterdir())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "two\nlines"}, "printable"),
        ({"name": "bell\x07"}, "printable"),
        ({"metadata": {"bad key": "v"}}, "metadata key"),
        ({"metadata": {"k": "tab\tin value"}}, "printable"),
        ({"metadata": {"../x": "v"}}, "metadata key"),
    ],
)
def test_names_and_metadata_are_charset_limited(tmp_path, kw, match):
    with pytest.raises(UploadRejected, match=match):
        ModelStore(tmp_path).begin(header(**kw))
