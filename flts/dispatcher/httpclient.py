"""The dispatcher's HTTP client for deliveries: http.client, one keep-alive connection per worker thread.

httpx costs about four times the CPU of the standard library per POST, and at thousands of
deliveries a second the dispatcher's one process (one GIL) is CPU-bound, so deliveries use
this instead. It answers the part of httpx's interface that `delivery.deliver` uses (`post`
→ `status_code`, `headers`, `content`, `text`) and raises httpx's exceptions, so `deliver`
reads both alike (tests hand it an `httpx.Client` with a mock transport).
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
            conn.request("POST", target, body=content, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except _STALE:
            raise
        except TimeoutError as exc:
            self._drop()
            raise httpx.ReadTimeout(f"no answer within {self.timeout}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        if response.will_close:
            self._drop()
        else:
            self._local.used = time.monotonic()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

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
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
