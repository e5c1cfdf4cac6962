"""The dispatcher's HTTP client for deliveries: http.client, one keep-alive connection per worker thread.

httpx costs about four times the CPU of the standard library per POST, and at thousands of
deliveries a second the dispatcher's one process (one GIL) is CPU-bound, so deliveries use
this instead. http.client only connects; the exchange is written and read here (one send,
the head parsed by hand): http.client's request and response objects, and the email parser
it reads headers with, cost several times the rest of a POST. It answers the part of
httpx's interface that `delivery.deliver` uses (`post` → `status_code`, `headers`,
`content`, `text`) and raises httpx's exceptions, so `deliver` reads both alike (tests hand
it an `httpx.Client` with a mock transport).
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

KEEPALIVE_SEC = 1.0  # shorter than the servers' own (gunicorn closes idle connections after 2 s)
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_OURS = {"host", "content-length"}  # the head sets these itself
_MAX_LINE, _MAX_HEADERS = 65536, 100


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class PooledClient:
    """`post(url, headers=..., content=...)` over a connection of this thread's own, kept alive."""

    def __init__(self, timeout: float, connect_timeout: float):
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._local = threading.local()

    def post(self, url: str, headers: dict[str, str], content: bytes) -> Reply:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn, reused = self._connection(parts.scheme, parts.hostname, parts.port)
        try:
            return self._exchange(conn, target, headers, content)
        except _STALE:
            self._drop()
            if not reused:
                raise httpx.RemoteProtocolError("the server closed the connection without answering") from None
        # a kept-alive connection the server had closed meanwhile: once more on a new one
        conn, _ = self._connection(parts.scheme, parts.hostname, parts.port)
        try:
            return self._exchange(conn, target, headers, content)
        except _STALE:
            self._drop()
            raise httpx.RemoteProtocolError("the server closed the connection without answering") from None

    def close(self) -> None:
        self._drop()  # other threads' connections close with their threads

    def _exchange(self, conn: http.client.HTTPConnection, target: str, headers: dict[str, str],
                  content: bytes) -> Reply:
        try:
            conn.sock.sendall(_request_head(conn, target, headers, len(content)) + content)
            status, reply_headers, body, will_close = _read_response(self._local.reader)
        except _STALE:
            raise
        except TimeoutError as exc:
            self._drop()
            raise httpx.ReadTimeout(f"no answer within {self.timeout}s") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._drop()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        if will_close:
            self._drop()
        else:
            self._local.used = time.monotonic()
        return Reply(status, reply_headers, body)

    def _connection(self, scheme: str, host: str | None, port: int | None) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to (scheme, host, port), and whether it was used before."""
        key = (scheme, host, port)
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._local.key != key or time.monotonic() - self._local.used > KEEPALIVE_SEC):
            self._drop()
            conn = None
        if conn is not None:
            return conn, True
        kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = kind(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except ConnectionRefusedError as exc:
            raise httpx.ConnectError(f"connection refused: {host}:{port}") from exc
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within {self.connect_timeout}s: {host}:{port}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        conn.sock.settimeout(self.timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.conn, self._local.key, self._local.used = conn, key, time.monotonic()
        self._local.reader = conn.sock.makefile("rb")
        return conn, False

    def _drop(self) -> None:
        conn, reader = getattr(self._local, "conn", None), getattr(self._local, "reader", None)
        self._local.conn = self._local.reader = None
        if reader is not None:
            reader.close()
        if conn is not None:
            conn.close()


def _request_head(conn: http.client.HTTPConnection, target: str, headers: dict[str, str], length: int) -> bytes:
    host = f"[{conn.host}]" if ":" in conn.host else conn.host  # an IPv6 address
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{conn.port}", f"Content-Length: {length}",
             *(f"{name}: {value}" for name, value in headers.items() if name.lower() not in _OURS), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _read_response(reader) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers with lower-case names, body, whether the server closes the connection)."""
    while True:
        status, version, headers = _read_head(reader)
        if not 100 <= status < 200:
            break  # an interim answer (100 Continue) is followed by the real one
    connection = headers.get("connection", "").lower()
    will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, headers, _read_chunked(reader), will_close
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = reader.read(length)
        if len(body) < length:
            raise http.client.IncompleteRead(body, length - len(body))
        return status, headers, body, will_close
    if status in (204, 304):
        return status, headers, b"", will_close
    return status, headers, reader.read(), True  # the body runs until the server closes


def _read_head(reader) -> tuple[int, str, dict[str, str]]:
    line = reader.readline(_MAX_LINE)
    if not line:  # the server closed a kept-alive connection before answering
        raise http.client.RemoteDisconnected("the server closed the connection without answering")
    version, _, rest = line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/"):
        raise http.client.BadStatusLine(line.decode("latin-1", "replace").rstrip())
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = reader.readline(_MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            return status, version, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers")


def _read_chunked(reader) -> bytes:
    parts = []
    while size := int(_line(reader).split(b";")[0], 16):
        parts.append(reader.read(size))
        if len(parts[-1]) < size:
            raise http.client.IncompleteRead(b"".join(parts), size - len(parts[-1]))
        _line(reader)  # the CRLF after each chunk
    while _line(reader) not in (b"\r\n", b"\n"):
        pass  # trailers
    return b"".join(parts)


def _line(reader) -> bytes:
    line = reader.readline(_MAX_LINE)
    if not line:
        raise http.client.IncompleteRead(b"")
    return line
