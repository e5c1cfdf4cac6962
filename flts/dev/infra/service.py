"""What every service shares: its pid file and lock, the checks before a start, the wait
until it is ready, and the stop. Processes themselves are started and stopped by
flts.dev.processes; this module adds the per-service bookkeeping under the state dir."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from flts.dev import processes
from flts.dev.infra.config import InfraConfig, InfraError, ensure_state_dir, say

PORT_FIELD = {"kafka": "kafka_port", "s3": "s3_port", "postgres": "pg_port", "mlflow": "mlflow_port"}

STOP_SIGNALS = {  # name: (signal, sent to the whole process group?)
    # postgres: SIGINT = "fast" shutdown of the postmaster, which stops its backends itself
    # (SIGTERM would wait for clients to disconnect)
    "postgres": (signal.SIGINT, False),
    "mlflow": (signal.SIGTERM, True),  # the CLI runs uvicorn as a child: signal the group
    "kafka": (signal.SIGTERM, True),
    "s3": (signal.SIGTERM, True),
}


# --------------------------------------------------------------------------- pid files
def read_pid(cfg: InfraConfig, name: str) -> int | None:
    """The pid of *our* running service ``name``, or None (stale pid files are removed).

    A pid counts as ours only if the process runs with its working directory inside this
    state dir (every service is started there; the postmaster chdirs to its data dir).
    """
    pid = processes.owned_pid(cfg.pid_file(name), cfg.state_dir)
    if pid is None and name == "postgres":
        # pid file lost: the postmaster's own lock file still tells
        pid = postmaster_pid(cfg.service_dir("postgres") / "data")
        return pid if pid is not None and processes.runs_in(pid, cfg.state_dir) else None
    return pid


def postmaster_pid(data: Path) -> int | None:
    """The pid PostgreSQL wrote into its data dir (first line of postmaster.pid)."""
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_pid(cfg: InfraConfig, name: str, pid: int) -> None:
    processes.write_pid_file(cfg.pid_file(name), pid, getattr(cfg, PORT_FIELD[name]))


# --------------------------------------------------------------------------- lock
@contextlib.contextmanager
def service_lock(cfg: InfraConfig, name: str):
    """Serialise start/stop of one service across threads and processes."""
    ensure_state_dir(cfg)
    with open(cfg.state_dir / "run" / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked(name: str):
    """Decorator: hold service ``name``'s lock for the call (``fn(cfg, ...)``)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cfg: InfraConfig, *args, **kwargs):
            with service_lock(cfg, name):
                return fn(cfg, *args, **kwargs)
        return wrapper
    return deco


# --------------------------------------------------------------------------- start
def check_ports_free(cfg: InfraConfig, name: str, ports: list[tuple[int, str]]) -> None:
    for port, env in ports:
        if processes.port_in_use(cfg.host, port):
            raise InfraError(
                f"{name}: port {port} is in use by another process; set {env} to a free port "
                f"(or stop that process)"
            )


def already_running(cfg: InfraConfig, name: str, probe: Callable[[], bool], url: str) -> bool:
    """True if our service runs and is (or becomes) healthy; raise if it stays unhealthy."""
    pid = read_pid(cfg, name)
    if pid is None:
        return False
    recorded = processes.read_pid_file(cfg.pid_file(name))
    port, want = recorded.port if recorded else None, getattr(cfg, PORT_FIELD[name])
    if port is not None and port != want:
        raise InfraError(
            f"{name} already runs (pid {pid}) on port {port} from {cfg.state_dir}, but the config "
            f"asks for port {want}: stop it first (python -m flts.dev.infra down) or use port {port}"
        )
    try:
        ok = probe()
    except Exception:
        ok = False
    if not ok:  # maybe still starting (another caller): give it the normal startup time
        wait_ready(cfg, name, pid, probe)
    say(f"{name}: already running (pid {pid}) on {url}")
    return True


def ensure_started(cfg: InfraConfig, name: str, url: str, probe: Callable[[], bool], ports: list[tuple[int, str]],
                   start: Callable[[], object]) -> int:
    """The pid of our running service `name`; when none runs, its ports must be free and `start()` starts it."""
    if not already_running(cfg, name, probe, url):
        check_ports_free(cfg, name, ports)
        start()
    return read_pid(cfg, name)  # type: ignore[return-value]


def spawn(cfg: InfraConfig, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start service ``name`` detached in ``<state>/<name>``, output appended to its log, pid file written."""
    proc = processes.spawn(command, env=env, cwd=cfg.service_dir(name), log_path=cfg.log_file(name))
    write_pid(cfg, name, proc.pid)
    return proc


def launch(cfg: InfraConfig, name: str, command: list[str], probe: Callable[[], bool], url: str,
           env: dict[str, str] | None = None) -> int:
    """Spawn service ``name``, wait until ``probe`` answers, say how long it took; return its pid."""
    t0 = time.monotonic()
    say(f"{name}: starting on {url} ...")
    proc = spawn(cfg, name, command, env=env)
    wait_ready(cfg, name, proc, probe)
    say(f"{name}: ready in {time.monotonic() - t0:.1f}s (pid {proc.pid})")
    return proc.pid


def wait_ready(cfg: InfraConfig, name: str, proc: subprocess.Popen | int, probe: Callable[[], bool]) -> None:
    """Probe until the service answers; InfraError with its log tail if it exits or times out."""
    try:
        processes.wait_until(probe, cfg.start_timeout, proc=proc, what=name, log_path=cfg.log_file(name))
    except processes.NotReady as exc:
        if not processes.pid_alive(proc if isinstance(proc, int) else proc.pid):
            cfg.pid_file(name).unlink(missing_ok=True)
        raise InfraError(str(exc)) from None


# --------------------------------------------------------------------------- stop
def stop_service(cfg: InfraConfig, name: str) -> bool:
    """Stop one service and everything it started; return True if it was running."""
    with service_lock(cfg, name):
        pid = read_pid(cfg, name)
        if pid is None:
            cfg.pid_file(name).unlink(missing_ok=True)
            return False
        sig, whole_group = STOP_SIGNALS[name]
        t0 = time.monotonic()
        processes.stop_group(pid, cfg.stop_timeout, sig, leader_only=not whole_group, what=name)
        cfg.pid_file(name).unlink(missing_ok=True)
        say(f"{name}: stopped (pid {pid}) in {time.monotonic() - t0:.1f}s")
        return True
