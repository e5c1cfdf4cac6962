"""Scale to zero for the local full stack: a small TCP front door before the infer process.

    python -m flts.dev.frontdoor --port 8080 [--grace 60] [--workers 1]

- While the function is stopped, the first connection is held: the front door starts the
  infer process (`python -m flts.infer serve` on a private port), waits until its
  /readyz answers 200 (the model fetched from object storage and warmed), then forwards.
  The spawn-to-ready time is a real cold start; it is logged (`cold_start`) and listed by
  GET /_frontdoor/status.
- After SCALE_TO_ZERO_GRACE_SECONDS without traffic and with no request in flight, it
  closes the idle client connections and stops the process (SIGTERM: uvicorn finishes
  what it is doing), so the next request is a cold start again.
- Bounded: at most --max-pending connections wait during a cold start; beyond, and when
  the process cannot start, clients get 503 with Retry-After at once.

Bytes are piped unchanged (keep-alive included): the front door does not parse HTTP
except the first request line of each connection. It imports nothing heavy.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import os
import signal
import socket
import sys
import time

import orjson

from flts.logs import configure, error, log
from flts.settings import Settings, knob

_PROBE = b"GET /readyz HTTP/1.1\r\nHost: frontdoor\r\nConnection: close\r\n\r\n"
STATUS_PATH = b"/_frontdoor/status"


class BackendUnavailable(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the front door itself dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Conn:
    __slots__ = ("writer", "last_in", "last_out")

    def __init__(self, writer):
        self.writer = writer
        self.last_in = self.last_out = time.monotonic()

    @property
    def busy(self) -> bool:  # a request went in after the last response bytes came out
        return self.last_in > self.last_out


class FrontDoor:
    def __init__(self, command: list[str], backend_port: int, grace: float, start_timeout: float = 30.0,
                 max_pending: int = 256, env: dict | None = None, backend_host: str = "127.0.0.1"):
        self.command, self.backend_host, self.backend_port = command, backend_host, backend_port
        self.grace, self.start_timeout, self.max_pending = grace, start_timeout, max_pending
        self.env = dict(os.environ if env is None else env)
        self.state = "stopped"
        self.proc: asyncio.subprocess.Process | None = None
        self.cold_starts: collections.deque[float] = collections.deque(maxlen=100)
        self.starts = self.stops = 0
        self.last_activity = time.monotonic()
        self._conns: set[_Conn] = set()
        self._lock = asyncio.Lock()
        self._pending = 0

    # ------------------------------------------------------------ backend lifecycle

    async def ensure_backend(self) -> None:
        if self.state == "running" and self.proc and self.proc.returncode is None:
            return
        if self._pending >= self.max_pending:
            raise BackendUnavailable(f"{self._pending} requests are already waiting for a cold start")
        self._pending += 1
        try:
            async with self._lock:
                if self.state == "running" and self.proc and self.proc.returncode is None:
                    return
                await self._start()
        finally:
            self._pending -= 1

    async def _start(self) -> None:
        self.state = "starting"
        spawned = time.time()
        env = {**self.env, "FLTS_SPAWN_TIME": repr(spawned)}
        self.proc = await asyncio.create_subprocess_exec(*self.command, env=env, start_new_session=True,
                                                         preexec_fn=_die_with_parent)
        try:
            await asyncio.wait_for(self._wait_ready(), self.start_timeout)
        except (TimeoutError, BackendUnavailable) as exc:
            await self._terminate()
            self.state = "stopped"
            reason = f"did not become ready in {self.start_timeout:.0f} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            error("cold_start_failed", command=self.command, error=reason)
            raise BackendUnavailable(f"the inference function could not start: {reason}") from None
        seconds = time.time() - spawned
        self.cold_starts.append(seconds)
        self.starts += 1
        self.state = "running"
        self.last_activity = time.monotonic()
        log("cold_start", seconds=round(seconds, 4), pid=self.proc.pid, port=self.backend_port)

    async def _wait_ready(self) -> None:
        while True:
            if self.proc.returncode is not None:
                raise BackendUnavailable(f"the process exited with code {self.proc.returncode}")
            if await self._probe():
                return
            await asyncio.sleep(0.01)

    async def _probe(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection(self.backend_host, self.backend_port)
        except OSError:
            return False
        try:
            writer.write(_PROBE)
            status = await reader.readline()
            return status.split(b" ")[1:2] == [b"200"]
        except OSError:
            return False
        finally:
            writer.close()

    async def stop_backend(self, reason: str) -> None:
        async with self._lock:
            if self.state != "running":
                return
            self.state = "stopping"
            for conn in list(self._conns):  # idle keep-alive connections: clients reconnect and are held
                conn.writer.close()
            await self._terminate()
            self.stops += 1
            self.state = "stopped"
            log("scaled_to_zero", reason=reason, idle_seconds=round(time.monotonic() - self.last_activity, 2))

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with _suppress_lookup():
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def idle_watcher(self) -> None:
        interval = max(0.05, min(1.0, self.grace / 4))
        while True:
            await asyncio.sleep(interval)
            if self.proc is not None and self.state == "running" and self.proc.returncode is not None:
                error("backend_exited", code=self.proc.returncode)
                self.state = "stopped"
            idle = time.monotonic() - self.last_activity
            if self.state == "running" and idle >= self.grace and not any(c.busy for c in self._conns):
                await self.stop_backend(f"idle for {self.grace} s (SCALE_TO_ZERO_GRACE_SECONDS)")

    # ------------------------------------------------------------ connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first_line = await reader.readline()
            if not first_line:
                return
            if first_line.split(b" ")[1:2] == [STATUS_PATH]:
                return await self._reply(writer, 200, self.status())
            try:
                await self.ensure_backend()
                backend_reader, backend_writer = await asyncio.open_connection(self.backend_host, self.backend_port)
            except (BackendUnavailable, OSError) as exc:
                return await self._reply(writer, 503, {"status": "ERROR", "error": str(exc)}, retry_after=1)
            await self._proxy(first_line, reader, writer, backend_reader, backend_writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):  # ValueError: a line over 64 KiB
            pass
        finally:
            writer.close()

    async def _proxy(self, first_line, reader, writer, backend_reader, backend_writer) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            backend_writer.write(first_line)
            conn.last_in = self.last_activity = time.monotonic()
            await asyncio.gather(self._pipe(reader, backend_writer, conn, True),
                                 self._pipe(backend_reader, writer, conn, False))
        finally:
            self._conns.discard(conn)
            backend_writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn, inbound: bool) -> None:
        try:
            while data := await src.read(65536):
                now = time.monotonic()
                self.last_activity = now
                if inbound:
                    conn.last_in = now
                else:
                    conn.last_out = now
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if dst.can_write_eof():
                with _suppress_lookup():
                    dst.write_eof()

    async def _reply(self, writer, status: int, body: dict, retry_after: int | None = None) -> None:
        payload = orjson.dumps(body)
        reason = {200: "OK", 503: "Service Unavailable"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"Connection: close\r\n" + (f"Retry-After: {retry_after}\r\n" if retry_after else "") + "\r\n")
        writer.write(head.encode() + payload)
        await writer.drain()

    def status(self) -> dict:
        return {"backend": self.state, "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "backend_port": self.backend_port, "grace_seconds": self.grace, "starts": self.starts,
                "stops": self.stops, "cold_starts": list(self.cold_starts),
                "idle_seconds": round(time.monotonic() - self.last_activity, 3)}


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, (ProcessLookupError, OSError))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FrontdoorSettings(Settings):
    grace_seconds: float = knob("SCALE_TO_ZERO_GRACE_SECONDS", 60.0, "idle seconds before infer is stopped", gt=0)
    start_timeout_seconds: float = knob("COLD_START_TIMEOUT_SECONDS", 30.0,
                                        "how long a held request waits for infer to start", gt=0)
    max_pending: int = knob("FRONTDOOR_MAX_PENDING", 256, "connections held while infer starts; beyond them 503", ge=1)


def build_parser() -> argparse.ArgumentParser:
    settings = FrontdoorSettings.from_env(os.environ)
    parser = argparse.ArgumentParser(prog="python -m flts.dev.frontdoor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=0, help="private port of the infer process (default: a free one)")
    parser.add_argument("--grace", type=float, default=settings.grace_seconds)
    parser.add_argument("--start-timeout", type=float, default=settings.start_timeout_seconds)
    parser.add_argument("--max-pending", type=int, default=settings.max_pending)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the infer process")
    return parser


async def run(args) -> None:
    backend_port = args.backend_port or _free_port()
    command = [sys.executable, "-m", "flts.infer", "serve", "--host", "127.0.0.1",
               "--port", str(backend_port), "--workers", str(args.workers)]
    door = FrontDoor(command, backend_port, args.grace, args.start_timeout, args.max_pending)
    server = await asyncio.start_server(door.handle, args.host, args.port, backlog=1024)
    watcher = asyncio.create_task(door.idle_watcher())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log("frontdoor_listening", host=args.host, port=args.port, backend_port=backend_port, grace_seconds=args.grace)
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        server.close()
        await door.stop_backend("front door stopping")
        await door._terminate()


def main(argv: list[str] | None = None) -> int:
    configure(os.environ, component="frontdoor")
    asyncio.run(run(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
