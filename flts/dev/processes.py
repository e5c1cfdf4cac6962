"""Child processes: start one, wait until it is ready, stop it and everything it started.

Every long-running process of the project (the infrastructure's services, the stack's
function processes and dispatcher, the servers that tests and benchmarks start) goes
through these few functions::

    proc = spawn(command, env={...}, cwd=folder, log_path=log)   # its own session
    wait_until(lambda: http_ok(url), 60, proc=proc, what="infer", log_path=log)
    ...
    stop_group(proc.pid, timeout=15)   # SIGTERM the whole group, SIGKILL after 15 s

or, for the length of a with-block (tests, benchmarks)::

    with running(command, ready_url=url + "/readyz", log_path=log) as proc:
        ...

Why a session of its own: the process then leads a process group that also holds what it
starts (gunicorn/uvicorn workers, MLflow's server under its CLI), so one killpg reaches them
all and nothing outlives a stop. Pid files hold "<pid> <port>"; a pid from a file counts as
ours only while that process runs in our folder (`owned_pid`), so a stale file can never make
us signal somebody else's process.

Linux only: liveness, process groups and working directories are read from /proc.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

# Our children talk to each other on 127.0.0.1: never through the shell's HTTP proxy.
LOOPBACK_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
LOG_BANNER = "===== flts: starting"  # log_mark writes it, log_tail shows what follows the last one
KILL_WAIT_SEC = 10.0  # how long to wait for SIGKILLed processes to vanish


class NotReady(RuntimeError):
    """A process exited before it was ready, or was not ready in time (the message has its log tail)."""


# --------------------------------------------------------------------------- start
def spawn(command: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
          log_path: str | Path | None = None) -> subprocess.Popen:
    """Start `command` in its own session, stdin closed.

    env: variables on top of this process's environment. stdout and stderr are appended to
    log_path (a file, not a pipe: nobody reads a pipe, and a full one blocks the child);
    inherited when log_path is None.
    """
    if cwd is not None:
        Path(cwd).mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **LOOPBACK_NO_PROXY, **(env or {})}
    if log_path is None:
        return subprocess.Popen(command, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def log_mark(log_path: Path, name: str) -> None:
    """Append a start banner to a log, so that log_tail shows only what this start wrote."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        fh.write(f"\n{LOG_BANNER} {name} {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")


def log_tail(log_path: str | Path | None, lines: int = 40) -> str:
    """The last lines written since the last start banner, indented, for an error message."""
    if log_path is None:
        return "    (no log)"
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 1_000_000))  # service logs grow: read the end only
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "    (no log)"
    text = text.rsplit(LOG_BANNER, 1)[-1].split("\n", 1)[-1] if LOG_BANNER in text else text
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


# --------------------------------------------------------------------------- ready
def wait_until(predicate: Callable[[], object], timeout: float, *, proc: subprocess.Popen | int | None = None,
               what: str = "process", log_path: str | Path | None = None, interval: float = 0.25) -> None:
    """Call predicate() until it returns true; raise NotReady if `proc` exits first or time runs out.

    proc: the Popen or pid that must stay alive meanwhile. predicate() may raise while a
    service warms up (a refused connection): that counts as "not yet", and the last error
    is in the timeout message, next to the log tail.
    """
    started = time.monotonic()
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:
            last_error = exc
        if proc is not None and not _still_running(proc):
            raise NotReady(_with_log(f"{what}: {_exit_message(proc)}", log_path))
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            error = f" (last probe error: {last_error!r})" if last_error else ""
            raise NotReady(_with_log(f"{what}: not ready after {elapsed:.0f}s{error}", log_path))
        time.sleep(interval)


def _still_running(proc: subprocess.Popen | int) -> bool:
    return pid_alive(proc) if isinstance(proc, int) else proc.poll() is None


def _exit_message(proc: subprocess.Popen | int) -> str:
    if isinstance(proc, int):  # not our child (or already reaped): its exit code is not ours to read
        return f"process {proc} exited during startup"
    return f"process {proc.pid} exited during startup with code {proc.returncode}"


def _with_log(message: str, log_path: str | Path | None) -> str:
    return f"{message}; log {log_path}:\n{log_tail(log_path)}" if log_path else message


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET, whatever the status; raises OSError when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never via a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """The URL answers a GET with a 2xx (a process's health or readiness route)."""
    try:
        return 200 <= http_get(url, timeout)[0] < 300
    except (OSError, ValueError):  # nothing listens yet, or a malformed answer
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(host: str, port: int) -> bool:
    """Binding host:port fails because somebody holds it (checked before a start, for a clear error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to us
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


# --------------------------------------------------------------------------- inspect
def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, pgid, ...]. Raises OSError if gone."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"


def pid_alive(pid: int) -> bool:
    """True if `pid` runs. A zombie counts as dead; one that is our own child is reaped here."""
    if pid <= 0:
        return False
    with contextlib.suppress(OSError):  # ChildProcessError: not our child, nothing to reap
        os.waitpid(pid, os.WNOHANG)
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(int(entry))
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def runs_in(pid: int, folder: Path) -> bool:
    """`pid` is alive with its working directory `folder` or below it."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    inside = cwd == str(folder) or cwd.startswith(str(folder) + os.sep)
    return inside and pid_alive(pid)


def pids_in(folder: Path) -> list[int]:
    """Every live process working in `folder` (or below), whatever its session."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and runs_in(int(entry), folder)]


# --------------------------------------------------------------------------- pid files
class PidFile(NamedTuple):
    pid: int
    port: int | None  # the port the process was started on


def write_pid_file(path: Path, pid: int, port: int) -> None:
    """"<pid> <port>": the port tells a later start which port the running process uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {port}\n")


def read_pid_file(path: Path) -> PidFile | None:
    try:
        fields = path.read_text().split()
        return PidFile(int(fields[0]), int(fields[1]) if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def owned_pid(path: Path, folder: Path) -> int | None:
    """The pid in pid file `path` if that process still runs in `folder`; else None, and a stale file is removed."""
    recorded = read_pid_file(path)
    if recorded is not None and runs_in(recorded.pid, folder):
        return recorded.pid
    path.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------- stop
def stop_group(pid: int, timeout: float, sig: int = signal.SIGTERM, *, leader_only: bool = False,
               what: str | None = None) -> None:
    """Stop `pid` and its process group: `sig`, then SIGKILL to the group after `timeout` seconds.

    Returns when the leader and every group member are gone (or KILL_WAIT_SEC after the
    SIGKILL). leader_only sends `sig` to the leader alone, which then stops its children
    itself (PostgreSQL's postmaster: SIGINT is its "fast shutdown"), but still waits for and
    kills the whole group. A pid that leads no group of its own is handled alone.
    """
    try:
        own_group = os.getpgid(pid) == pid  # true for everything spawn() started
    except ProcessLookupError:
        return

    def gone() -> bool:
        return not pid_alive(pid) and not (own_group and group_members(pid))

    if not _send(pid, sig, own_group and not leader_only) or _wait_for(gone, timeout):
        return
    print(f"{what or f'pid {pid}'}: did not stop within {timeout:.0f}s, sending SIGKILL", file=sys.stderr, flush=True)
    _send(pid, signal.SIGKILL, own_group)
    _wait_for(gone, KILL_WAIT_SEC)


def stop_pids(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM each pid, SIGKILL those left after `timeout`; return those still alive after that."""
    left = _signal_and_wait(pids, signal.SIGTERM, timeout)
    return _signal_and_wait(left, signal.SIGKILL, KILL_WAIT_SEC) if left else []


def _signal_and_wait(pids: list[int], sig: int, timeout: float) -> list[int]:
    """Send `sig` to each pid; return those still alive after up to `timeout` seconds."""
    for pid in pids:
        _send(pid, sig, group=False)
    _wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout)
    return [pid for pid in pids if pid_alive(pid)]


def _send(pid: int, sig: int, group: bool) -> bool:
    """Signal a process (or its group); False if it is already gone."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_for(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- with-block
@contextlib.contextmanager
def running(command: list[str], *, ready_url: str | None = None, env: dict[str, str] | None = None,
            cwd: str | Path | None = None, log_path: str | Path | None = None, timeout: float = 60.0,
            stop_timeout: float = 20.0, what: str | None = None) -> Iterator[subprocess.Popen]:
    """Run `command` for the length of a with-block (tests, benchmarks); yields its Popen.

    Waits until ready_url answers 2xx (when given); afterwards, even on error, stops the
    process and its group (SIGTERM, SIGKILL after stop_timeout).
    """
    what = what or " ".join(map(str, command))
    proc = spawn(command, env=env, cwd=cwd, log_path=log_path)
    try:
        if ready_url:
            wait_until(lambda: http_ok(ready_url, timeout=1.0), timeout, proc=proc, what=what,
                       log_path=log_path, interval=0.05)
        yield proc
    finally:
        stop_group(proc.pid, stop_timeout, what=what)
        proc.wait()
