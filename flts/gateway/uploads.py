"""An upload, streamed: into a temporary file while it is hashed, measured and sniffed, then into the
raw-data bucket (`put_file` streams too). Nothing of it is ever whole in memory.

Keys are content-addressed, so the same bytes land on the same key (and preprocess's config hash,
which covers the key and the checksum, is the same: a repeat is `skip_idempotent`):

    <identifier>/train-<sha256[:16]>.csv        the training file
    <identifier>/test-<sha256[:16]>.csv         a test file (POST ?part=test first, then ?test=<its id>)
    <identifier>/uploads/<upload id>.json       the upload's record, written once its event is out
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONTENT_ID = re.compile(r"^[0-9a-f]{16}$")
SNIFF_BYTES = 64 * 1024


class UploadError(ValueError):
    """The upload is refused; `status` says how (400 bad input, 413 too large)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_identifier(identifier: str) -> str:
    """An identifier is one safe path segment: letters, digits, '.', '_' and '-' (no '..', no slash)."""
    if not IDENTIFIER.match(identifier) or ".." in identifier:
        raise UploadError(400, f"invalid identifier {identifier!r}: use 1-128 letters, digits, '.', '_' or '-', "
                               f"starting with a letter or digit (no '..', no '/')")
    return identifier


@dataclass
class Received:
    path: str  # the temporary file (the caller removes it)
    sha256: str
    size: int

    @property
    def content_id(self) -> str:
        return self.sha256[:16]


async def receive(chunks: AsyncIterator[bytes], limit: int, declared: int | None = None) -> Received:
    """Stream `chunks` to a temporary file; 413 as soon as `limit` is passed, 400 for an empty or non-CSV body."""
    if declared is not None and declared > limit:
        raise UploadError(413, f"upload of {declared} bytes is over the limit of {limit} (MAX_UPLOAD_BYTES)")
    digest, size, head = hashlib.sha256(), 0, b""
    fd, path = tempfile.mkstemp(prefix="flts-upload-", suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:  # refused before it is stored whole: nothing is kept
                    raise UploadError(413, f"upload is over the limit of {limit} bytes (MAX_UPLOAD_BYTES)")
                if len(head) < SNIFF_BYTES:
                    head += chunk[:SNIFF_BYTES - len(head)]
                digest.update(chunk)
                out.write(chunk)
        sniff(head, complete=size <= SNIFF_BYTES)
    except BaseException:
        os.unlink(path)
        raise
    return Received(path, digest.hexdigest(), size)


def sniff(head: bytes, complete: bool) -> None:
    """Refuse what is obviously not a CSV: empty, binary, not text, or a header without a delimiter.
    preprocess checks the rest (docs/contracts.md, "What a valid dataset is")."""
    if not head.strip():
        raise UploadError(400, "the upload is empty: send a CSV with a header and rows")
    if b"\x00" in head:
        raise UploadError(400, "the upload is not a CSV: it holds binary data (NUL bytes)")
    if not complete:  # cut at a line end, so a multi-byte character is not split
        head = head[:head.rfind(b"\n") + 1] or head
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError(400, f"the upload is not a UTF-8 CSV: {exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if "," not in lines[0]:
        raise UploadError(400, f"the upload is not a CSV: its first line has no comma ({lines[0][:80]!r})")
    if len(lines) < 2:
        raise UploadError(400, "the upload is a CSV header without rows")


def train_key(identifier: str, content_id: str) -> str:
    return f"{identifier}/train-{content_id}.csv"


def test_key(identifier: str, content_id: str) -> str:
    if not CONTENT_ID.match(content_id):
        raise UploadError(400, f"invalid test id {content_id!r}: the 16 hex digits POST ?part=test answered")
    return f"{identifier}/test-{content_id}.csv"


def upload_id(identifier: str, train_sha: str, test_key_or_none: str | None) -> str:
    """The event id of an upload: the same identifier and bytes give the same id (retries start one pipeline)."""
    body = f"{identifier}\n{train_sha}\n{test_key_or_none or ''}".encode()
    return "upload-" + hashlib.sha256(body).hexdigest()[:32]


def record_key(identifier: str, event_id: str) -> str:
    return f"{identifier}/uploads/{event_id}.json"
