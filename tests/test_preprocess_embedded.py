"""The real PobleSec data through the embedded router and the preprocess deployment.

A repeated `flts.dataset.ready` must find its output by config hash, log `skip_idempotent`
and write nothing; FORCE_REPROCESS=1 recomputes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flts import events, routing
from flts.dev.demo import upload_dataset
from flts.embedded import EmbeddedRouter
from flts.storage import FileStore, get_json

PROCESSED = "processed-data"


@pytest.fixture
def objects(tmp_path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def ready(objects, lte_dir) -> events.DatasetReady:
    return upload_dataset(FileStore(objects), "PobleSec", lte_dir)


def run_preprocess(objects: Path, ready: events.DatasetReady, **env) -> EmbeddedRouter:
    router = EmbeddedRouter({"FLTS_OBJECT_DIR": str(objects), **env}, [routing.deployment("preprocess")])
    router.publish(events.make_event(events.DATASET_READY, "test", ready))
    deliveries = router.run()
    assert [(d.deployment, d.error) for d in deliveries] == [("preprocess", None)]
    return router


def log_lines(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the store with its mtime and inode (a rewrite via rename changes the inode)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(root.rglob("*")) if p.is_file()}


def claim_of(router: EmbeddedRouter, event_type: str = events.TRAINING_DATA) -> events.DataClaim:
    [event] = [e for e in router.published if e["type"] == event_type]
    return events.parse_data(event)


def test_second_run_skips_and_force_recomputes(objects, ready, capfd):
    first = claim_of(run_preprocess(objects, ready))
    logs = log_lines(capfd.readouterr().err)
    assert [line["event"] for line in logs if line["event"] in ("preprocess_done", "skip_idempotent")] == ["preprocess_done"]
    before = snapshot(objects)
    assert f"{PROCESSED}/PobleSec/{first.config_hash}/train.parquet" in before

    second = claim_of(run_preprocess(objects, ready))
    logs = log_lines(capfd.readouterr().err)
    skips = [line for line in logs if line["event"] == "skip_idempotent"]
    assert len(skips) == 1 and skips[0]["config_hash"] == first.config_hash
    assert skips[0]["identifier"] == "PobleSec"
    assert not [line for line in logs if line["event"] == "preprocess_done"]
    assert snapshot(objects) == before  # nothing written, nothing rewritten
    assert second.model_dump() == first.model_dump()  # the same claim is announced again

    meta_key = f"PobleSec/{first.config_hash}/.meta.json"
    created = get_json(FileStore(objects), PROCESSED, meta_key)["created_at"]
    forced = claim_of(run_preprocess(objects, ready, FORCE_REPROCESS="1"))
    logs = log_lines(capfd.readouterr().err)
    assert [line["event"] for line in logs if line["event"] in ("preprocess_done", "skip_idempotent")] == ["preprocess_done"]
    assert forced.config_hash == first.config_hash  # FORCE_REPROCESS is not part of the identity
    after = snapshot(objects)
    assert set(after) == set(before)
    for name in ("train.parquet", "test.parquet", ".meta.json"):
        key = f"{PROCESSED}/PobleSec/{first.config_hash}/{name}"
        assert after[key] != before[key], key
    assert get_json(FileStore(objects), PROCESSED, meta_key)["created_at"] != created


def test_outputs_carry_their_config(objects, ready, lte_dir):
    claim = claim_of(run_preprocess(objects, ready))
    store = FileStore(objects)
    prefix = f"PobleSec/{claim.config_hash}"
    assert claim.bucket == PROCESSED
    assert (claim.object_key, claim.test_object_key, claim.meta_key) == (
        f"{prefix}/train.parquet", f"{prefix}/test.parquet", f"{prefix}/.meta.json")

    meta = get_json(store, PROCESSED, claim.meta_key)
    for field in ("identifier", "source_objects", "config", "config_hash", "created_at", "row_count", "column_names"):
        assert field in meta, field
    assert meta["identifier"] == "PobleSec" and meta["config_hash"] == claim.config_hash
    train_csv, test_csv = (lte_dir / "PobleSec.csv").read_bytes(), (lte_dir / "PobleSec_test.csv").read_bytes()
    assert meta["source_objects"]["train"] == {"bucket": "raw-data", "object_key": "PobleSec/PobleSec.csv",
                                               "sha256": hashlib.sha256(train_csv).hexdigest(), "bytes": len(train_csv)}
    assert meta["source_objects"]["test"]["sha256"] == hashlib.sha256(test_csv).hexdigest()
    # data/lte/README.md: 15,927 training rows, 3,982 test rows
    assert (meta["row_count"], meta["test_row_count"]) == (15927, 3982) == (claim.rows, claim.test_rows)

    for key in (claim.object_key, claim.test_object_key):
        table = pq.read_table(objects / PROCESSED / key)
        metadata = table.schema.metadata
        config_bytes = metadata[b"preprocess_config"]
        assert metadata[b"config_hash"].decode() == claim.config_hash
        # the hash is recomputable from the stored config: SHA-256 of its canonical JSON
        assert hashlib.sha256(config_bytes).hexdigest() == claim.config_hash
        assert json.loads(config_bytes) == meta["config"]
        assert table.column_names == meta["column_names"] == claim.columns
        frame = table.to_pandas()
        assert not frame.isna().any().any(), key  # PobleSec has empty cells: all imputed
    assert meta["column_names"][0] == "time" and "down" in meta["column_names"]
    assert meta["column_names"][-4:] == ["minute_sin", "minute_cos", "dow_sin", "dow_cos"]


def test_inference_data_only_when_enabled(objects, ready):
    off = run_preprocess(objects, ready)
    assert [e["type"] for e in off.published] == [events.DATASET_READY, events.TRAINING_DATA]
    on = run_preprocess(objects, ready, EMIT_INFERENCE_DATA="1")
    assert [e["type"] for e in on.published] == [events.DATASET_READY, events.TRAINING_DATA, events.INFERENCE_DATA]
    assert claim_of(on, events.INFERENCE_DATA).model_dump() == claim_of(on).model_dump()
    for event in on.published[1:]:
        assert event["source"] == "/flts/preprocess" and event["subject"] == "PobleSec"


def test_salt_gives_a_new_output_beside_the_old(objects, ready):
    plain = claim_of(run_preprocess(objects, ready))
    salted = claim_of(run_preprocess(objects, ready, EXTRA_HASH_SALT="again"))
    assert salted.config_hash != plain.config_hash
    keys = list(FileStore(objects).list_keys(PROCESSED, "PobleSec/"))
    assert len(keys) == 6 and {k.split("/")[1] for k in keys} == {plain.config_hash, salted.config_hash}


def test_bad_dataset_is_a_rejected_delivery_and_writes_nothing(objects):
    store = FileStore(objects)
    store.put_bytes("raw-data", "bad/bad.csv", b"time,down\n2020-01-01 00:02,1\n2020-01-01 00:00,2\n")
    router = EmbeddedRouter({"FLTS_OBJECT_DIR": str(objects)}, [routing.deployment("preprocess")])
    router.publish(events.make_event(events.DATASET_READY, "test",
                                     {"bucket": "raw-data", "object_key": "bad/bad.csv", "identifier": "bad"}))
    [delivery] = router.run()
    assert delivery.error.startswith("rejected: bad/bad.csv: timestamps are not sorted")
    assert list(store.list_keys(PROCESSED)) == []
