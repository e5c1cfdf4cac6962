"""The dispatcher's keep-alive HTTP client (no services): what `deliver` reads, and httpx's exceptions."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from flts.dispatcher import httpclient
from flts.dispatcher.delivery import deliver
from flts.dispatcher.httpclient import PooledClient
from flts.dispatcher.settings import DispatchSettings
from flts.events import DATASET_READY, DatasetReady, make_event


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set = set()
    answers: list = []  # (status, headers, body) in order; the last one repeats

    def do_POST(self):  # noqa: N802
        Handler.connections.add(self.client_address)
        self.rfile.read(int(self.headers["content-length"]))
        status, headers, body = Handler.answers.pop(0) if len(Handler.answers) > 1 else Handler.answers[0]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that gave up (the timeout test): no traceback
        pass


@pytest.fixture
def server():
    Handler.connections, Handler.answers = set(), [(200, {}, b"")]
    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def event():
    return make_event(DATASET_READY, "t", DatasetReady(bucket="raw-data", object_key="a.csv", identifier="a"))


def test_a_reply_reads_like_httpx_and_the_connection_is_kept(server):
    Handler.answers = [(200, {"Ce-Specversion": "1.0", "Content-Type": "application/json"}, b'{"x": 1}')]
    client = PooledClient(5.0, 1.0)
    first = client.post(server, headers={"content-type": "application/json"}, content=b"{}")
    client.post(server, headers={}, content=b"{}")
    assert first.status_code == 200 and first.content == b'{"x": 1}' and first.text == '{"x": 1}'
    assert first.headers.get("content-type") == "application/json" and "ce-specversion" in first.headers
    assert len(Handler.connections) == 1, "the keep-alive connection was not reused"


def test_an_idle_connection_is_not_reused_after_the_keepalive(server, monkeypatch):
    monkeypatch.setattr(httpclient, "KEEPALIVE_SEC", 0.0)
    client = PooledClient(5.0, 1.0)
    client.post(server, headers={}, content=b"")
    client.post(server, headers={}, content=b"")
    assert len(Handler.connections) == 2


def test_refused_is_a_connect_error_which_deliver_does_not_count(server):
    from flts.dev.testing import free_port

    client = PooledClient(5.0, 1.0)
    with pytest.raises(httpx.ConnectError):
        client.post(f"http://127.0.0.1:{free_port()}/", headers={}, content=b"")
    stop = threading.Event()
    settings = DispatchSettings("kafka:9092", max_retries=0, backoff_base=0.01, backoff_max=0.01)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    result = deliver(client, f"http://127.0.0.1:{free_port()}/", event(), settings, stop, token="")
    assert result.interrupted and result.attempts > 1, "a refused connection used up the retries"


def test_deliver_retries_a_503_then_takes_the_2xx(server):
    Handler.answers = [(503, {"Retry-After": "0"}, b"busy"), (202, {}, b"")]
    settings = DispatchSettings("kafka:9092", max_retries=2, backoff_base=0.01, backoff_max=0.01)
    result = deliver(PooledClient(5.0, 1.0), server, event(), settings, token="")
    assert result.ok and result.attempts == 2 and result.status == 202


def test_a_slow_answer_is_a_read_timeout(server):
    Handler.answers = [(200, {}, b"")]
    original = Handler.do_POST

    def slow(self):
        threading.Event().wait(1.0)
        original(self)

    Handler.do_POST = slow
    try:
        with pytest.raises(httpx.ReadTimeout):
            PooledClient(0.2, 1.0).post(server, headers={}, content=b"")
    finally:
        Handler.do_POST = original


def raw_server(answers: list[bytes]):
    """A server that answers each request on one connection with the next raw bytes; returns its URL and what it read."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            for answer in answers:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(head + b"\r\n\r\n" + body)
                conn.sendall(answer)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/x?y=1", seen


def test_chunked_interim_and_closing_answers_are_read_whole():
    url, seen = raw_server([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCe-Id: a\r\n\r\n"
        b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nTrailer: t\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ])
    client = PooledClient(5.0, 1.0)
    first = client.post(url, headers={"ce-id": "e1", "Host": "ignored"}, content=b"{}")
    second = client.post(url, headers={}, content=b"[1]")
    assert (first.status_code, first.content, first.headers["ce-id"]) == (200, b"abcdefg", "a")
    assert (second.status_code, second.text) == (202, "ok")
    assert client._local.conn is None, "a Connection: close answer left the connection open"
    head = seen[0].split(b"\r\n")
    assert head[0] == b"POST /x?y=1 HTTP/1.1" and b"ce-id: e1" in head and seen[0].endswith(b"\r\n\r\n{}")
    assert sum(line.lower().startswith(b"host:") for line in head) == 1 and seen[1].endswith(b"[1]")


def test_an_answer_cut_short_is_a_read_error():
    url, _ = raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    with pytest.raises(httpx.ReadError):
        PooledClient(5.0, 1.0).post(url, headers={}, content=b"")
