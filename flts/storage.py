"""Object storage: one interface, two implementations.

- `S3Store`: any S3-compatible server through the `minio` SDK (S3_ENDPOINT, S3_ACCESS_KEY,
  S3_SECRET_KEY, S3_SECURE, S3_REGION from the environment).
- `FileStore`: a folder per bucket on the local filesystem, the embedded default.

Keys are validated the same way for both, and a missing object raises ObjectNotFound
(never returns None), so a bad claim check fails loudly and names the object. A store that
is out of reach for now (refused, unreachable, timed out, 5xx) is told apart from both by
`is_transient`: the one rule of which storage failures are worth trying again.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import orjson

from flts.settings import Env, Flag, Settings, knob

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_LENGTH = 1024


class StorageError(Exception):
    """Object storage could not do what was asked."""


class InvalidKey(StorageError, ValueError):
    """A bucket name or object key that is unsafe or malformed."""


class ObjectNotFound(StorageError, KeyError):
    def __init__(self, bucket: str, key: str):
        super().__init__(f"object not found: {bucket}/{key}")
        self.bucket, self.key = bucket, key

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


# Transport failures of the clients that reach a store: the minio SDK and MLflow's HTTP client (urllib3,
# requests), boto3 (MLflow's s3:// artifacts). Named, not imported: a module that is not loaded
# raised nothing, and the light processes (infer) never import boto3.
_TRANSIENT_TYPES = {
    "urllib3.exceptions": ("MaxRetryError", "TimeoutError", "ProtocolError", "NewConnectionError"),
    "requests.exceptions": ("ConnectionError", "Timeout", "RetryError"),
    "botocore.exceptions": ("ConnectionError", "HTTPClientError"),  # refused, unreachable, closed, timed out
}
# S3 error codes that mean "try later" (answered with a 5xx, or a request the server gave up waiting for).
_TRANSIENT_S3_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is the store (an S3 server, or MLflow in front of one) being out of reach
    for now: refused, unreachable, timed out or answering 5xx. Such an event is tried again later;
    a missing object, a bad key or a malformed file is not transient.

    Follows the chain of causes (also a context suppressed by `raise ... from None`): a wrapper
    raised while the store was out of reach is that outage.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (InvalidKey, ObjectNotFound)):  # a verdict on the object itself
            return False
        if _unavailable(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _unavailable(exc: BaseException) -> bool:
    for module_name, names in _TRANSIENT_TYPES.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, tuple(getattr(module, name) for name in names)):
            return True
    status, code = _store_answer(exc)
    return status >= 500 or code in _TRANSIENT_S3_CODES


def _store_answer(exc: BaseException) -> tuple[int, str | None]:
    """(HTTP status, S3 error code) of a store's error answer; (0, None) for anything else."""
    module = type(exc).__module__
    response = getattr(exc, "response", None)
    if module.startswith("botocore") and isinstance(response, dict):  # ClientError: the parsed answer
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0), response.get("Error", {}).get("Code")
    if module.startswith("minio"):
        status = (getattr(exc, "status_code", None)  # ServerError
                  or getattr(response, "status", None)  # S3Error
                  or getattr(exc, "_code", None))  # InvalidResponseError: a non-XML answer (a proxy's 502 page)
        return int(status or 0), getattr(exc, "code", None)
    return 0, None


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidKey(f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-'")
    return bucket


def validate_key(key: str) -> str:
    """Refuse keys that could escape a prefix or confuse a filesystem: '..', absolute, control chars."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key is longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/") or key.startswith("\\"):
        raise InvalidKey(f"object key {key!r} must be relative (no leading '/')")
    if any(ord(ch) < 32 or 127 <= ord(ch) <= 159 for ch in key):  # C0, DEL and C1 controls
        raise InvalidKey(f"object key {key!r} contains control characters")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash")
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidKey(f"object key {key!r} contains a '.' or '..' path segment")
    if any(part == "" for part in parts[:-1]) or parts[-1] == "":
        raise InvalidKey(f"object key {key!r} contains an empty path segment")
    return key


class ObjectStore(Protocol):
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, bucket: str, key: str, path: str | os.PathLike,
                 content_type: str = "application/octet-stream") -> None: ...
    def get_bytes(self, bucket: str, key: str) -> bytes: ...
    def size(self, bucket: str, key: str) -> int: ...
    def exists(self, bucket: str, key: str) -> bool: ...
    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]: ...
    def ensure_bucket(self, bucket: str) -> None: ...


def put_json(store: ObjectStore, bucket: str, key: str, value) -> None:
    store.put_bytes(bucket, key, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS), "application/json")


def get_json(store: ObjectStore, bucket: str, key: str):
    raw = store.get_bytes(bucket, key)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StorageError(f"{bucket}/{key} is not valid JSON: {exc}") from None


class FileStore:
    """Buckets as folders under `root`; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / validate_bucket(bucket) / validate_key(key)

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / validate_bucket(bucket)).mkdir(parents=True, exist_ok=True)

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        self._write(bucket, key, lambda fh: fh.write(data))

    def put_file(self, bucket, key, path, content_type="application/octet-stream"):
        with open(path, "rb") as source:  # copied in chunks, never whole in memory
            self._write(bucket, key, lambda fh: shutil.copyfileobj(source, fh))

    def _write(self, bucket, key, write) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a failed write leaves no partial object behind
            raise

    def get_bytes(self, bucket, key):
        path = self._path(bucket, key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(bucket, key) from None

    def size(self, bucket, key):
        path = self._path(bucket, key)
        if not path.is_file():
            raise ObjectNotFound(bucket, key)
        return path.stat().st_size

    def exists(self, bucket, key):
        return self._path(bucket, key).is_file()

    def list_keys(self, bucket, prefix=""):
        base = self.root / validate_bucket(bucket)
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"


# S3 error codes of a missing object or bucket (HEAD answers carry no body: "NotFound").
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound")


class S3Store:
    """An S3-compatible server through the minio SDK."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool = False, region: str | None = None):
        from minio import Minio  # imported here: the embedded default never needs it

        self.endpoint = endpoint
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)

    def ensure_bucket(self, bucket):
        validate_bucket(bucket)
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        validate_bucket(bucket), validate_key(key)
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def put_file(self, bucket, key, path, content_type="application/octet-stream"):
        validate_bucket(bucket), validate_key(key)
        self.client.fput_object(bucket, key, str(path), content_type=content_type)  # streamed, multipart when large

    def size(self, bucket, key):
        """The object's size from a HEAD request: nothing is downloaded."""
        from minio.error import S3Error

        validate_bucket(bucket), validate_key(key)
        try:
            return self.client.stat_object(bucket, key).size
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFound(bucket, key) from None
            raise StorageError(f"cannot stat {bucket}/{key}: {exc.code} {exc.message}") from exc

    def get_bytes(self, bucket, key):
        from minio.error import S3Error

        validate_bucket(bucket), validate_key(key)
        try:
            response = self.client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ObjectNotFound(bucket, key) from None
            raise StorageError(f"cannot read {bucket}/{key}: {exc.code} {exc.message}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, bucket, key):
        from minio.error import S3Error

        validate_bucket(bucket), validate_key(key)
        try:
            self.client.stat_object(bucket, key)
            return True
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise

    def list_keys(self, bucket, prefix=""):
        validate_bucket(bucket)
        for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True):
            yield obj.object_name

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r})"


DEFAULT_EMBEDDED_ROOT = ".flts/embedded/objects"


class StorageSettings(Settings):
    endpoint: str = knob("S3_ENDPOINT", "", "host:port of the S3 server (an http:// or https:// prefix is stripped); "
                                            "empty = the FileStore")
    access_key: str = knob("S3_ACCESS_KEY", "", "S3 credentials: access key", repr=False)
    secret_key: str = knob("S3_SECRET_KEY", "", "S3 credentials: secret key", repr=False)
    secure: Flag = knob("S3_SECURE", False, "TLS to the S3 server")
    region: str = knob("S3_REGION", "", "S3 region; empty = the server's")
    object_dir: str = knob("FLTS_OBJECT_DIR", DEFAULT_EMBEDDED_ROOT, "root of the FileStore (a folder per bucket)")


def store_from_env(env: Env) -> ObjectStore:
    """S3 when S3_ENDPOINT is set, else the filesystem store under FLTS_OBJECT_DIR."""
    settings = StorageSettings.from_env(env)
    if not settings.endpoint:
        return FileStore(settings.object_dir)
    endpoint = settings.endpoint.removeprefix("http://").removeprefix("https://")
    return S3Store(endpoint, settings.access_key, settings.secret_key, secure=settings.secure,
                   region=settings.region or None)
