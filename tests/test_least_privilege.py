"""Least-privilege storage on the local stack: each function's own S3 account (versitygw IAM)
may do what flts.dev.infra.s3.GRANTS says and nothing else; every refusal is shown here."""
from __future__ import annotations

import os
import uuid

import pytest

from flts import routing
from flts.dev import infra as fi
from flts.dev import stack
from flts.dev.infra.s3 import READ, WRITE
from flts.storage import S3Store

pytestmark = pytest.mark.stack


def store_of(infra, function: str) -> S3Store:
    creds = fi.function_s3_credentials(infra, function)
    return S3Store(fi.s3_endpoint(infra), creds.access_key, creds.secret_key)


@pytest.fixture(scope="module")
def objects(infra):
    """One object in every bucket, written with the root account; returns the key."""
    key = f"tests/{uuid.uuid4().hex}/x.bin"
    root = fi.client_env(infra)
    store = S3Store(root["S3_ENDPOINT"], root["S3_ACCESS_KEY"], root["S3_SECRET_KEY"])
    for bucket in fi.DEFAULT_BUCKETS:
        store.put_bytes(bucket, key, b"content")
    return key


def denied(action, *args) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 - minio's S3Error or our StorageError: the code says it
        action(*args)
    assert "AccessDenied" in str(info.value), info.value
    return str(info.value)


def test_every_deployed_function_has_grants():
    assert set(fi.GRANTS) == {spec.name for spec in routing.SPECS}
    assert all(set(buckets) <= set(fi.DEFAULT_BUCKETS) for buckets in fi.GRANTS.values())


def test_the_stack_gives_each_function_its_own_account(infra, tmp_path):
    cfg = stack.StackConfig(infra=infra)
    root = fi.s3_credentials(infra)
    keys = {}
    for proc in stack.plan(cfg):
        if proc.kind == "function":
            function = routing.deployment(proc.name.removeprefix("fn-")).function
            assert proc.env["S3_ACCESS_KEY"] == fi.function_s3_credentials(infra, function).access_key
            keys[function] = proc.env["S3_ACCESS_KEY"]
        else:
            assert "S3_ACCESS_KEY" not in proc.env or proc.env["S3_ACCESS_KEY"] == root.access_key
    assert len(set(keys.values())) == len(keys) and root.access_key not in keys.values()
    # without accounts (s3proxy, an older server) the root credentials stay
    no_iam = fi.InfraConfig(state_dir=tmp_path / "state")
    assert fi.function_env(no_iam, "infer") == {}


@pytest.mark.parametrize("function", sorted(fi.GRANTS))
def test_each_function_can_do_exactly_what_it_is_granted(infra, objects, function):
    store = store_of(infra, function)
    for bucket in fi.DEFAULT_BUCKETS:
        access = fi.GRANTS[function].get(bucket)
        new_key = f"tests/{uuid.uuid4().hex}/{function}.bin"
        if access in (READ, WRITE):
            assert store.get_bytes(bucket, objects) == b"content"
            assert store.size(bucket, objects) == 7
        else:
            denied(store.get_bytes, bucket, objects)
        if access == WRITE:
            store.put_bytes(bucket, new_key, b"mine")
            assert store.get_bytes(bucket, new_key) == b"mine"
        else:
            denied(store.put_bytes, bucket, new_key, b"mine")


def test_preprocess_cannot_read_model_artifacts_or_promotions(infra, objects):
    store = store_of(infra, "preprocess")
    message = denied(store.get_bytes, "mlflow", objects)
    assert f"mlflow/{objects}" in message  # the refusal names what was refused
    denied(store.get_bytes, "model-promotion", objects)


def test_infer_can_only_read_the_promotion_bucket(infra, objects):
    store = store_of(infra, "infer")
    assert store.get_bytes("model-promotion", objects) == b"content"
    denied(store.put_bytes, "model-promotion", "current.json", b"{}")  # it cannot promote a model
    denied(store.get_bytes, "mlflow", objects)
    denied(store.get_bytes, "raw-data", objects)


def test_a_large_write_goes_through_the_granted_multipart_upload(infra, tmp_path):
    source = tmp_path / "big.parquet"
    source.write_bytes(os.urandom(6 * 1024 * 1024))  # above minio's 5 MiB part: a multipart upload
    store = store_of(infra, "preprocess")
    key = f"tests/{uuid.uuid4().hex}/big.parquet"
    store.put_file("processed-data", key, source)
    assert store.size("processed-data", key) == source.stat().st_size
    denied(store_of(infra, "train").put_file, "processed-data", key + ".2", source)
