"""A tenant's captured data has a lifecycle (issue 23, finding 2): it is stored per tenant,
exported and erased with its adapter or tenant, expires after the retention, and a tenant
created again under a deleted one's name starts with none of it."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loraswap.adapters.store import FileSystemStore, ObjectStore, open_store
from loraswap.jobs.tenant_data import TenantData, feedback_prefix
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.service.drift.retention import RetentionSweeper
from loraswap.tenants.directory import TenantDirectory, TenantRecord
from tests.service.conftest import LiveServer, ServerFactory
from tests.service.drift.helpers import owner
from tests.service.drift.test_capture_feedback_api import (
    ADMIN,
    ADMIN_HEADERS,
    bearer,
    classifier_package,
    create_tenant,
    feedback,
    register,
)
from tests.utils.polling import wait_for

ACME_TEXTS = ["acme-secret alpha", "acme-secret beta", "acme-secret gamma"]
BRAVO_TEXTS = ["bravo-private one", "bravo-private two"]


def parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S%f")


def texts_in(store: ObjectStore) -> str:
    """Everything the store holds, decoded (Parquet read back to its rows)."""
    parts = []
    for key in store.list(""):
        data = store.get(key)
        if key.endswith(".parquet"):
            parts.append(json.dumps(pq.read_table(io.BytesIO(data)).to_pylist()))
        else:
            parts.append(data.decode("utf-8", errors="replace"))
        parts.append(key)
    return "\n".join(parts)


def zip_texts(data: bytes) -> dict[str, str]:
    """Each member of an export, decoded."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            raw = archive.read(name)
            out[name] = (json.dumps(pq.read_table(io.BytesIO(raw)).to_pylist())
                         if name.endswith(".parquet") else raw.decode("utf-8"))
    return out


def predict(server: LiveServer, key: str, adapter: str, texts: list[str]) -> str:
    response = server.client.post("/v1/predict", headers=bearer(key),
                                  json={"adapter": adapter, "inputs": texts})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def give_feedback(server: LiveServer, key: str, prediction_id: str, count: int) -> None:
    for index in range(count):
        response = feedback(server, key, prediction_id=prediction_id, index=index,
                            label="positive")
        assert response.status_code == 200, response.text


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    return live_server(admin_token=ADMIN, dev_mode=False, drift_enabled=True,
                       drift_capture_flush_seconds=600)


def test_delete_erases_a_tenants_data_and_a_reused_name_starts_empty(
        server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    acme = create_tenant(server, "acme", "all")
    bravo = create_tenant(server, "bravo", "all")
    package = classifier_package(tiny_base_dir, tmp_path / "pkg", seed=1)
    for tenant in ("acme", "bravo"):
        register(server, tenant, "sentiment", package)
    stored = server.client.put("/admin/training-data/acme/sentiment/train.csv",
                               headers=ADMIN_HEADERS, content=b"text,label\nacme-secret,x\n")
    assert stored.status_code == 200, stored.text
    acme_id = predict(server, acme, "acme/sentiment", ACME_TEXTS)
    bravo_id = predict(server, bravo, "bravo/sentiment", BRAVO_TEXTS)
    give_feedback(server, acme, acme_id, 3)  # feedback writes the batches before its 200
    give_feedback(server, bravo, bravo_id, 2)
    store = open_store(server.settings.store_uri)
    old_owner = owner(store, "acme")

    # No object mixes tenants: each index object holds one tenant's lines, under its owner.
    index_keys = store.list("capture-index/")
    assert index_keys
    for key in index_keys:
        tenants = {json.loads(line)["tenant"] for line in store.get(key).decode().splitlines()}
        assert len(tenants) == 1, f"{key} mixes tenants {tenants}"
        assert key.split("/")[1] == owner(store, tenants.pop())

    # The export holds acme's captures, index and feedback, and nothing of bravo's.
    exported = server.client.get("/admin/tenants/acme/data", headers=ADMIN_HEADERS)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    members = zip_texts(exported.content)
    everything = "\n".join(members.values())
    assert all(text in everything for text in ACME_TEXTS)
    assert "bravo-private" not in everything
    assert {name.split("/")[0] for name in members} == {
        "captures", "capture-index", "feedback", "training-data"}

    # DELETE the adapter (with its export): its captures, feedback and training data go.
    deleted = server.client.delete("/admin/adapters/acme/sentiment?export=true",
                                   headers=ADMIN_HEADERS)
    assert deleted.status_code == 200, deleted.text
    assert "acme-secret alpha" in "\n".join(zip_texts(deleted.content).values())
    left = texts_in(store)
    assert "acme-secret" not in left, "the deleted adapter's data is still in the store"
    assert all(text in left for text in BRAVO_TEXTS)  # bravo's is untouched
    # Another replica flushes a batch of the old adapter after the deletion (a straggler).
    late = f"captures/{old_owner}/sentiment/batch-{stamp(datetime.now(UTC))}-0001.parquet"
    store.put(late, parquet([{"input": "acme-secret late"}]))

    assert server.client.delete("/admin/tenants/acme", headers=ADMIN_HEADERS).status_code == 204
    assert old_owner not in texts_in(store) and "acme-secret" not in texts_in(store)
    # A write of the old tenant landing after its deletion cannot reach the new one.
    store.put(f"feedback/{old_owner}/sentiment/batch-{stamp(datetime.now(UTC))}-0002.parquet",
              parquet([{"input": "acme-secret later", "label": "negative"}]))

    # Training data for a tenant that does not exist is refused (it would be the next one's).
    assert server.client.put("/admin/training-data/acme/sentiment/t.csv", headers=ADMIN_HEADERS,
                             content=b"text\nx\n").status_code == 404
    # The name is reused: a new id, a new owner, none of the old data.
    again = create_tenant(server, "acme", "all")
    new_owner = owner(store, "acme")
    assert new_owner != old_owner
    register(server, "acme", "sentiment", package)
    assert read_parquet_batches(store, feedback_prefix(new_owner, "sentiment")) == []
    fresh = zip_texts(server.client.get("/admin/tenants/acme/data",
                                        headers=ADMIN_HEADERS).content)
    assert fresh == {}
    stale = feedback(server, again, prediction_id=acme_id, index=0, label="positive")
    assert stale.status_code == 404  # the old tenant's prediction is not the new one's
    info = server.client.get("/admin/tenants/acme", headers=ADMIN_HEADERS).json()
    assert info["id"] == new_owner.partition(".")[2]


def test_delete_tenant_can_export_first(server: LiveServer, tiny_base_dir: Path,
                                        tmp_path: Path) -> None:
    key = create_tenant(server, "acme", "all")
    register(server, "acme", "sentiment", classifier_package(tiny_base_dir, tmp_path / "p", 1))
    give_feedback(server, key, predict(server, key, "acme/sentiment", ACME_TEXTS), 1)
    store = open_store(server.settings.store_uri)
    # What DELETE adapter missed (a straggler) is still exported, then erased, with the tenant.
    stray = f"captures/{owner(store, 'acme')}/gone/batch-{stamp(datetime.now(UTC))}-01.parquet"
    assert server.client.delete("/admin/adapters/acme/sentiment",
                                headers=ADMIN_HEADERS).status_code == 204
    store.put(stray, parquet([{"input": "acme-secret stray"}]))
    answer = server.client.delete("/admin/tenants/acme?export=true", headers=ADMIN_HEADERS)
    assert answer.status_code == 200
    assert "acme-secret stray" in zip_texts(answer.content)[stray]
    assert store.list("captures/") == [] and store.list("capture-index/") == []


def test_the_service_sweeps_expired_data(live_server: ServerFactory) -> None:
    server = live_server(capture_retention_days=1, capture_sweep_seconds=1)
    store = open_store(server.settings.store_uri)
    TenantDirectory(store).create("acme")
    data = owner(store, "acme")
    now = datetime.now(UTC)
    old = f"captures/{data}/sentiment/batch-{stamp(now - timedelta(days=2))}-01.parquet"
    new = f"captures/{data}/sentiment/batch-{stamp(now)}-02.parquet"
    for key in (old, new):
        store.put(key, parquet([{"input": "x"}]))
    wait_for(lambda: old not in store.list("captures/"), timeout=20)
    assert new in store.list("captures/")


def test_the_sweep_expires_by_age_and_removes_data_of_deleted_tenants(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store")
    tenants = TenantDirectory(store)
    live = tenants.create("acme")[0].data_owner
    now = datetime.now(UTC)
    old, recent = stamp(now - timedelta(days=31)), stamp(now - timedelta(days=29))
    keys = {
        "expired capture": f"captures/{live}/a/batch-{old}-01.parquet",
        "expired feedback": f"feedback/{live}/a/batch-{old}-01.parquet",
        "expired index": f"capture-index/{live}/20260101T0000/{old}-01.jsonl",
        "expired mixed index": f"capture-index/20260101T0000/{old}-01.jsonl",
        "kept capture": f"captures/{live}/a/batch-{recent}-01.parquet",
        "kept training data": "training-data/acme/a/0123-train.csv",
        "orphan capture": f"captures/gone.0123456789abcdef/a/batch-{recent}-01.parquet",
        "orphan training data": "training-data/gone/a/0123-train.csv",
    }
    for key in keys.values():
        store.put(key, b"x")
    sweeper = RetentionSweeper(TenantData(store), tenants, retention_days=30,
                               interval_seconds=3600)
    # An unreadable tenant record: nothing is treated as orphaned (it may be its data).
    store.put("tenants/broken.json", b"{not json")
    report = sweeper.sweep()
    assert (report.expired, report.orphaned, report.owners_checked) == (4, 0, False)
    assert store.exists(keys["orphan capture"]) and store.exists(keys["orphan training data"])
    store.delete("tenants/broken.json")
    report = sweeper.sweep()
    assert (report.expired, report.orphaned) == (0, 2)
    assert sorted(store.list("captures/") + store.list("training-data/")) == sorted(
        [keys["kept capture"], keys["kept training data"]])


def test_lines_of_the_layouts_that_mixed_tenants_are_erased_alone(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store")
    lines = [{"tenant": "acme", "adapter": "a", "input_text": "acme-secret"},
             {"tenant": "bravo", "adapter": "a", "input_text": "bravo-private"}]
    mixed = "capture-index/20260101T0000/20260101T000000000000-01.jsonl"
    store.put(mixed, "".join(json.dumps(line) + "\n" for line in lines).encode())
    data = TenantData(store)
    exported = data.export_to_temp("acme", "acme")
    try:
        with zipfile.ZipFile(exported) as archive:
            assert "acme-secret" in archive.read("legacy-index.jsonl").decode()
            assert "bravo-private" not in archive.read("legacy-index.jsonl").decode()
    finally:
        exported.unlink()
    data.erase("acme", "acme")
    assert "acme-secret" not in store.get(mixed).decode()
    assert "bravo-private" in store.get(mixed).decode()


def test_tenant_ids_are_immutable_and_records_from_before_them_keep_their_data(
        tmp_path: Path) -> None:
    tenants = TenantDirectory(FileSystemStore(tmp_path / "store"))
    first = tenants.create("acme")[0]
    tenants.delete("acme")
    second = tenants.create("acme")[0]
    assert first.id and second.id and first.id != second.id
    assert second.data_owner == f"acme.{second.id}"
    legacy = TenantRecord(name="acme", created_at=datetime.now(UTC))
    assert legacy.data_owner == "acme"  # captures/acme/… stay this tenant's
    rotated_key = tenants.rotate_key("acme")
    assert rotated_key and tenants.get("acme").id == second.id  # changes keep the id
