"""The local stack's supervisor: supervisord runs every function process and the dispatcher,
and restarts whichever exits (a crash, an OOM kill, `kill -9`).

- `<state>/run/supervisord.conf` is generated from the plan: one `[program:<name>]` per
  process, `autorestart`, stopped as a group (gunicorn's master and workers together).
- A program's command is this module's shim, `python -m flts.dev.supervise exec <plan>
  <name> <digest>`: it reads the process's command and environment from the plan file
  (`run/stack.json`, 0600) and execs it. So the environment (credentials included) never
  passes through supervisord's config syntax, and the digest of (command, env) makes a
  changed process a changed program for supervisord's `reloadConfig`.
- Before the exec the shim ends what still runs in the program's folder (an orphaned
  gunicorn worker of a killed master would hold the port and make every restart fail).
- supervisord runs in its own session, in `<state>/supervisord`, controlled over XML-RPC
  on a unix socket that only our user can open.

supervisord runs with the environment of the `flts up` that started it; its children
inherit it, below what the plan sets.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
import xmlrpc.client
from pathlib import Path

from flts.dev import processes

NAME = "supervisord"
START_TIMEOUT_SEC = 20.0
GAVE_UP = ("FATAL", "EXITED", "STOPPED")  # supervisord states in which it no longer starts the process by itself
UP = ("RUNNING", "STARTING")


class SupervisorError(RuntimeError):
    """supervisord could not be started or asked."""


# --------------------------------------------------------------------------- places
def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def socket_path(state_dir: Path) -> Path:
    """The control socket; a unix socket path must stay under ~100 bytes, so a long state dir gets one in /tmp."""
    path = run_dir(state_dir) / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"flts-supervisor-{digest}.sock"


def config_path(state_dir: Path) -> Path:
    return run_dir(state_dir) / "supervisord.conf"


def digest(command: list[str], env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps([command, env], sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- config
def write_config(state_dir: Path, plan_file: Path, programs: list[dict], stop_timeout: float) -> None:
    """supervisord.conf for `programs` (dicts with name, command, env, workdir, log)."""
    sections = [
        "[unix_http_server]", f"file={socket_path(state_dir)}", "chmod=0700", "",
        "[supervisord]", f"logfile={state_dir / 'logs' / 'supervisord.log'}", "logfile_maxbytes=10MB",
        f"pidfile={run_dir(state_dir) / 'supervisord.pid'}", "nodaemon=true", "silent=true", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
    ]
    for p in programs:
        Path(p["workdir"]).mkdir(parents=True, exist_ok=True)
        Path(p["log"]).parent.mkdir(parents=True, exist_ok=True)
        shim = [sys.executable, "-m", "flts.dev.supervise", "exec", str(plan_file), p["name"],
                digest(p["command"], p["env"])]
        sections += [
            f"[program:{p['name']}]",
            "command=" + shlex.join(shim).replace("%", "%%"),
            f"directory={p['workdir']}",
            "autostart=false",  # `flts up` starts them in order: the functions, then the dispatcher
            "autorestart=true",
            "startsecs=1",  # up for 1 s counts as started; a process that dies sooner is retried, then FATAL
            "startretries=3",
            "stopasgroup=true", "killasgroup=true", f"stopwaitsecs={int(stop_timeout)}",
            "redirect_stderr=true", f"stdout_logfile={p['log']}", "stdout_logfile_maxbytes=0", "",
        ]
    path = config_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sections))


# --------------------------------------------------------------------------- supervisord itself
def pid(state_dir: Path) -> int | None:
    """supervisord's pid while it runs (in its own folder), else None."""
    return processes.owned_pid(run_dir(state_dir) / "supervisord.pid", state_dir / NAME)


def rpc(state_dir: Path):
    """The XML-RPC proxy of the running supervisord (`.supervisor.*` methods)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(state_dir)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def ensure_running(state_dir: Path, leftovers: list[Path]) -> bool:
    """Start supervisord unless it runs; True if it was started. First ends what still runs in
    the `leftovers` folders: without a supervisor, those are orphans of an earlier one."""
    if pid(state_dir) is not None:
        return False
    for folder in leftovers:
        processes.stop_pids(processes.pids_in(folder), 15.0)
    socket_path(state_dir).unlink(missing_ok=True)
    log = state_dir / "logs" / "supervisord.log"
    command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_path(state_dir))]
    proc = processes.spawn(command, cwd=state_dir / NAME, log_path=state_dir / "logs" / "supervisord.out")
    try:
        processes.wait_until(lambda: rpc(state_dir).getState()["statename"] == "RUNNING", START_TIMEOUT_SEC,
                             proc=proc, what=NAME, log_path=log, interval=0.1)
    except processes.NotReady as exc:
        raise SupervisorError(str(exc)) from None
    return True


def shutdown(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop every program, then supervisord; True if it ran."""
    running = pid(state_dir)
    if running is None:
        return False
    try:
        rpc(state_dir).stopAllProcesses()
        rpc(state_dir).shutdown()
    except (OSError, xmlrpc.client.Fault):
        pass  # not answering: the signal below ends it
    processes.stop_group(running, timeout, what=NAME)
    socket_path(state_dir).unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- programs
def update(state_dir: Path) -> dict[str, list[str]]:
    """Apply a rewritten config (what `supervisorctl update` does): stop and drop removed and changed
    programs, add new and changed ones (stopped: autostart is off). Returns {added, changed, removed}."""
    server = rpc(state_dir)
    [[added, changed, removed]] = server.reloadConfig()
    for name in changed + removed:
        _stop(server, name)
        server.removeProcessGroup(name)
    for name in added + changed:
        server.addProcessGroup(name)
    return {"added": added, "changed": changed, "removed": removed}


def info(state_dir: Path, name: str) -> dict | None:
    """supervisord's view of one program (statename, pid, start, spawnerr), or None (not running or not known)."""
    if pid(state_dir) is None:
        return None
    try:
        return rpc(state_dir).getProcessInfo(name)
    except (OSError, xmlrpc.client.Fault):
        return None


def start(state_dir: Path, name: str) -> None:
    """Start a program without waiting (the caller probes its health)."""
    try:
        rpc(state_dir).startProcess(name, False)
    except xmlrpc.client.Fault as exc:
        if "ALREADY_STARTED" not in exc.faultString:
            raise SupervisorError(f"{name}: {exc.faultString}") from None


def stop(state_dir: Path, name: str) -> bool:
    """Stop a program (SIGTERM to its group, SIGKILL after stopwaitsecs); True if it ran."""
    if pid(state_dir) is None:
        return False
    return _stop(rpc(state_dir), name)


def _stop(server, name: str) -> bool:
    try:
        return bool(server.stopProcess(name, True))
    except xmlrpc.client.Fault as exc:
        if "NOT_RUNNING" in exc.faultString or "BAD_NAME" in exc.faultString:
            return False
        raise SupervisorError(f"{name}: {exc.faultString}") from None


# --------------------------------------------------------------------------- the shim
def exec_planned(plan_file: str, name: str) -> None:
    """Become process `name` of the plan (command and env from the plan file), after ending what
    is left in this folder (the cwd supervisord gave us) from an earlier, killed start."""
    plan = {p["name"]: p for p in json.loads(Path(plan_file).read_text())}
    if name not in plan:
        sys.exit(f"flts.dev.supervise: {name} is not in {plan_file}")
    others = [p for p in processes.pids_in(Path.cwd()) if p != os.getpid()]
    if others:
        print(f"flts: ending {len(others)} leftover process(es) of an earlier {name}: {others}", flush=True)
        processes.stop_pids(others, 10.0)
    command, env = plan[name]["command"], plan[name]["env"]
    os.execvpe(command[0], command, {**os.environ, **processes.LOOPBACK_NO_PROXY, **env})


if __name__ == "__main__":  # python -m flts.dev.supervise exec <plan file> <name> <digest>
    if len(sys.argv) != 5 or sys.argv[1] != "exec":
        sys.exit("usage: python -m flts.dev.supervise exec <plan file> <name> <digest>")
    exec_planned(sys.argv[2], sys.argv[3])
