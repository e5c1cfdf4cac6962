"""Object storage: key validation, the filesystem store, env selection, promotion layout."""
from __future__ import annotations

import pytest

from flts import promotion
from flts.storage import (
    MAX_KEY_LENGTH,
    FileStore,
    InvalidKey,
    ObjectNotFound,
    S3Store,
    StorageError,
    get_json,
    is_transient,
    put_json,
    store_from_env,
    validate_bucket,
    validate_key,
)

BAD_KEYS = {
    "parent segment": "a/../b",
    "leading parent": "../etc/passwd",
    "only parent": "..",
    "dot segment": "a/./b",
    "absolute": "/etc/passwd",
    "backslash absolute": "\\windows\\system32",
    "backslash inside": "a\\b",
    "newline": "a\nb",
    "nul": "a\x00b",
    "tab": "a\tb",
    "delete char": "a\x7fb",
    "c1 control": "a\x85b",
    "empty segment": "a//b",
    "trailing slash": "a/b/",
    "empty": "",
    "too long": "a" * (MAX_KEY_LENGTH + 1),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_bad_keys_are_refused(case):
    with pytest.raises(InvalidKey):
        validate_key(BAD_KEYS[case])


@pytest.mark.parametrize("key, message", [
    ("a/../b", r"'\.' or '\.\.' path segment"),
    ("/abs", "must be relative"),
    ("a\nb", "control characters"),
    ("a\\b", "backslash"),
    ("a//b", "empty path segment"),
    ("a" * (MAX_KEY_LENGTH + 1), f"longer than {MAX_KEY_LENGTH}"),
])
def test_key_errors_name_the_problem(key, message):
    with pytest.raises(InvalidKey, match=message):
        validate_key(key)


@pytest.mark.parametrize("key", [
    "a", "PobleSec/PobleSec.csv", "processed/PobleSec/0123abcd/train.parquet", "x/.meta.json",
    "dots..inside/name..csv", "ünïcode/ключ.csv", "spaces are ok/a b.csv", "a" * MAX_KEY_LENGTH,
])
def test_valid_keys_pass_unchanged(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("bucket", ["", "ab", "Upper", "../x", "a..b", "-abc", "abc-", "a/b", "a" * 64])
def test_bad_buckets_are_refused(bucket):
    with pytest.raises(InvalidKey, match="invalid bucket name"):
        validate_bucket(bucket)


def test_good_buckets_pass():
    for bucket in ("raw-data", "processed-data", "model-promotion", "abc", "a.b-c"):
        assert validate_bucket(bucket) == bucket


# ---------------------------------------------------------------- FileStore

def test_round_trip_and_nested_keys(file_store):
    file_store.put_bytes("raw-data", "a/b/c.bin", b"\x00\x01")
    assert file_store.get_bytes("raw-data", "a/b/c.bin") == b"\x00\x01"
    assert file_store.exists("raw-data", "a/b/c.bin")
    assert not file_store.exists("raw-data", "a/b")  # a "folder" is not an object
    assert (file_store.root / "raw-data" / "a" / "b" / "c.bin").read_bytes() == b"\x00\x01"


def test_overwrite_replaces_the_content(file_store):
    file_store.put_bytes("raw-data", "k", b"old")
    file_store.put_bytes("raw-data", "k", b"new")
    assert file_store.get_bytes("raw-data", "k") == b"new"


@pytest.mark.parametrize("bucket, key", [
    ("raw-data", "../../outside"), ("raw-data", "/tmp/outside"), ("raw-data", "a/../../outside"),
    ("..", "outside"), ("../raw-data", "outside"),
])
def test_file_store_cannot_escape_its_root(tmp_path, bucket, key):
    store = FileStore(tmp_path / "root")
    for operation in (lambda: store.put_bytes(bucket, key, b"x"), lambda: store.get_bytes(bucket, key),
                      lambda: store.exists(bucket, key)):
        with pytest.raises(InvalidKey):
            operation()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_missing_object_names_bucket_and_key(file_store):
    with pytest.raises(ObjectNotFound, match=r"^object not found: raw-data/no/such\.csv$") as info:
        file_store.get_bytes("raw-data", "no/such.csv")
    assert (info.value.bucket, info.value.key) == ("raw-data", "no/such.csv")
    file_store.put_bytes("raw-data", "file", b"x")
    with pytest.raises(ObjectNotFound):  # a path "below" an object is missing too, not an OS error
        file_store.get_bytes("raw-data", "file/below")
    file_store.put_bytes("raw-data", "dir/obj", b"x")
    with pytest.raises(ObjectNotFound):  # a prefix is not an object
        file_store.get_bytes("raw-data", "dir")
    assert not file_store.exists("other-bucket", "x")


def test_size_is_read_without_the_content_and_a_missing_object_names_itself(file_store):
    file_store.put_bytes("raw-data", "a/b.csv", b"12345")
    assert file_store.size("raw-data", "a/b.csv") == 5
    with pytest.raises(ObjectNotFound, match=r"^object not found: raw-data/a/c\.csv$"):
        file_store.size("raw-data", "a/c.csv")
    with pytest.raises(ObjectNotFound):  # a prefix is not an object
        file_store.size("raw-data", "a")
    with pytest.raises(InvalidKey):
        file_store.size("raw-data", "../b.csv")


def test_put_file_copies_a_file_atomically(file_store, tmp_path):
    source = tmp_path / "big.csv"
    source.write_bytes(b"x" * 3_000_000)
    file_store.put_file("raw-data", "s/big.csv", source, "text/csv")
    assert file_store.get_bytes("raw-data", "s/big.csv") == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        file_store.put_file("raw-data", "s/big.csv", tmp_path / "missing.csv")
    assert file_store.size("raw-data", "s/big.csv") == 3_000_000  # the old object is intact
    assert [p.name for p in (file_store.root / "raw-data" / "s").iterdir()] == ["big.csv"]


def test_writes_are_atomic_and_leave_no_temp_files(file_store):
    file_store.put_bytes("raw-data", "k.bin", b"first")
    with pytest.raises(TypeError):
        file_store.put_bytes("raw-data", "k.bin", "not bytes")  # the write fails half way
    assert file_store.get_bytes("raw-data", "k.bin") == b"first"  # the old object is intact
    leftovers = [p.name for p in (file_store.root / "raw-data").iterdir()]
    assert leftovers == ["k.bin"]


def test_list_keys_with_prefix(file_store):
    for key in ("a/1", "a/2/x", "ab", "b/1"):
        file_store.put_bytes("raw-data", key, b"")
    (file_store.root / "raw-data" / "a" / ".tmp-inflight").write_bytes(b"partial")  # a write in progress
    assert list(file_store.list_keys("raw-data")) == ["a/1", "a/2/x", "ab", "b/1"]
    assert list(file_store.list_keys("raw-data", "a/")) == ["a/1", "a/2/x"]
    assert list(file_store.list_keys("raw-data", "a")) == ["a/1", "a/2/x", "ab"]
    assert list(file_store.list_keys("raw-data", "zzz")) == []
    assert list(file_store.list_keys("missing-bucket")) == []


def test_json_helpers(file_store):
    put_json(file_store, "model-promotion", "p.json", {"b": 1, "a": [1.5, "x"]})
    assert get_json(file_store, "model-promotion", "p.json") == {"a": [1.5, "x"], "b": 1}
    file_store.put_bytes("model-promotion", "broken.json", b"{not json")
    with pytest.raises(StorageError, match=r"model-promotion/broken\.json is not valid JSON"):
        get_json(file_store, "model-promotion", "broken.json")
    with pytest.raises(ObjectNotFound):
        get_json(file_store, "model-promotion", "absent.json")


def test_ensure_bucket_is_idempotent(file_store):
    file_store.ensure_bucket("raw-data")
    file_store.ensure_bucket("raw-data")
    assert (file_store.root / "raw-data").is_dir()


# ---------------------------------------------------------------- choosing a store from the environment

def test_store_from_env_defaults_to_the_file_store(tmp_path):
    store = store_from_env({"FLTS_OBJECT_DIR": str(tmp_path)})
    assert isinstance(store, FileStore) and store.root == tmp_path
    assert isinstance(store_from_env({}), FileStore)


def test_store_from_env_uses_s3_when_an_endpoint_is_set():
    # Building the client does not connect: no server needed to check the wiring.
    store = store_from_env({"S3_ENDPOINT": "http://127.0.0.1:9000", "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"})
    assert isinstance(store, S3Store) and store.endpoint == "127.0.0.1:9000"
    with pytest.raises(InvalidKey):  # keys are validated before any request
        store.put_bytes("raw-data", "../x", b"")


# ---------------------------------------------------------------- a store out of reach, or a bad object

def _s3_error(status: int, code: str):
    import urllib3
    from minio.error import S3Error

    return S3Error(urllib3.HTTPResponse(status=status), code, "msg", "/b/k", "req", "host")


def _client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _refused():
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    return MaxRetryError(None, "/processed-data/k", NewConnectionError(None, "[Errno 111] Connection refused"))


def _raised_while(outage: BaseException, wrapper: BaseException) -> BaseException:
    """`wrapper` raised `from None` while handling `outage`, as our stores and loaders translate errors."""
    try:
        try:
            raise outage
        except BaseException:
            raise wrapper from None
    except BaseException as exc:
        return exc


def _transient_cases():
    import botocore.exceptions as boto
    import requests
    from minio.error import ServerError
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    return {
        "minio refused (urllib3 gave up)": _refused(),
        "urllib3 read timeout": ReadTimeoutError(None, "/b/k", "read timed out"),
        "connection reset": ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        "minio 503": _s3_error(503, "ServiceUnavailable"),
        "minio SlowDown": _s3_error(503, "SlowDown"),
        "minio 500 non-XML": ServerError("bad gateway", 502),
        "botocore endpoint unreachable": boto.EndpointConnectionError(endpoint_url="http://s3:9000"),
        "botocore connect timeout": boto.ConnectTimeoutError(endpoint_url="http://s3:9000"),
        "botocore read timeout": boto.ReadTimeoutError(endpoint_url="http://s3:9000"),
        "botocore connection closed": boto.ConnectionClosedError(endpoint_url="http://s3:9000"),
        "botocore 500": _client_error(500, "InternalError"),
        "botocore 503 SlowDown": _client_error(503, "SlowDown"),
        "MLflow server unreachable (requests)": requests.exceptions.ConnectionError("refused"),
        "wrapped by our StorageError": _raised_while(_s3_error(500, "InternalError"), StorageError("cannot read")),
        "wrapped from None by a loader": _raised_while(_refused(), ValueError("run abc: no GRU/signature.json")),
    }


def _permanent_cases():
    return {
        "missing object": ObjectNotFound("processed-data", "x/train.parquet"),
        "missing object, from an S3 404": _raised_while(_s3_error(404, "NoSuchKey"),
                                                        ObjectNotFound("processed-data", "x/train.parquet")),
        "bad key": InvalidKey("object key '../x' contains a '.' or '..' path segment"),
        "access denied": _s3_error(403, "AccessDenied"),
        "botocore 404": _client_error(404, "NoSuchKey"),
        "malformed CSV": ValueError("Error tokenizing data. C error: Expected 3 fields in line 4, saw 5"),
        "not JSON": StorageError("processed-data/x.meta.json is not valid JSON"),
        "a bug": TypeError("unsupported operand"),
        "a local disk error": OSError(28, "No space left on device"),
        "a bad object read while the store was down": _raised_while(_refused(),
                                                                    ObjectNotFound("processed-data", "k")),
    }


@pytest.mark.parametrize("case", sorted(_transient_cases()))
def test_a_store_out_of_reach_is_transient(case):
    assert is_transient(_transient_cases()[case])


@pytest.mark.parametrize("case", sorted(_permanent_cases()))
def test_a_bad_object_or_a_bug_is_not_transient(case):
    assert not is_transient(_permanent_cases()[case])


def test_a_real_refused_s3_server_is_transient_and_a_missing_file_is_not(tmp_path):
    import urllib3

    from flts.dev.testing import free_port

    store = S3Store(f"127.0.0.1:{free_port()}", "k", "s")
    store.client._http = urllib3.PoolManager(retries=urllib3.Retry(total=0))  # give up at once, as minio does after 5
    with pytest.raises(Exception) as refused:
        store.get_bytes("processed-data", "x/train.parquet")
    assert is_transient(refused.value), repr(refused.value)
    with pytest.raises(ObjectNotFound) as missing:
        FileStore(tmp_path).get_bytes("processed-data", "x/train.parquet")
    assert not is_transient(missing.value)


# ---------------------------------------------------------------- promotion pointer layout

def pointer(identifier: str, run_id: str) -> dict:
    return {"identifier": identifier, "config_hash": "0123456789abcdef", "run_id": run_id, "model_type": "GRU",
            "experiment": "flts", "model_uri": f"runs:/{run_id}/GRU", "rmse": 1.0, "mae": 1.0, "mse": 1.0,
            "score": 1.0, "timestamp": "2024-01-01T00:00:00+00:00", "weights": {"rmse": 0.5, "mae": 0.3, "mse": 0.2},
            "artifact_bucket": "model-promotion", "artifact_key": f"{identifier}/model.onnx"}


def test_promotion_keys():
    assert promotion.current_key() == "current.json"
    assert promotion.current_key("global") == "global/current.json"
    key = promotion.history_key("PobleSec", "0123456789abcdef", "2024-01-01T00:00:00+00:00")
    assert key.startswith("PobleSec/0123456789abcdef/promotion-2024-01-01T") and key.endswith(".json")
    assert validate_key(key) == key
    assert promotion.promotion_bucket({}) == "model-promotion"


def test_resolve_pointer_order(file_store):
    bucket = "model-promotion"
    with pytest.raises(ObjectNotFound, match="current.json"):
        promotion.resolve_pointer(file_store, bucket)
    put_json(file_store, bucket, "global/current.json", pointer("global", "run-global"))
    assert promotion.resolve_pointer(file_store, bucket).run_id == "run-global"
    put_json(file_store, bucket, "current.json", pointer("ElBorn", "run-root"))
    assert promotion.resolve_pointer(file_store, bucket).run_id == "run-root"  # root before global
    put_json(file_store, bucket, "PobleSec/current.json", pointer("PobleSec", "run-own"))
    assert promotion.resolve_pointer(file_store, bucket, "PobleSec").run_id == "run-own"  # a named identifier first
    assert promotion.resolve_pointer(file_store, bucket, "Other").run_id == "run-root"
