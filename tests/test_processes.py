"""flts.dev.processes on real child processes (small `python -c` scripts; each test stops what it starts)."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from flts.dev import processes
from flts.dev.testing import free_port

# A parent that starts a child (same process group), then both sleep. The child reports a
# SIGINT and sleeps on; with IGNORE_TERM both ignore SIGTERM.
CHILD = """
import os, signal, sys, time
if "IGNORE_TERM" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, lambda *_: print("child got SIGINT", flush=True))
print("child ready", os.getpid(), flush=True)
time.sleep(60)
"""
FAMILY = f"""
import signal, subprocess, sys, time
if "IGNORE_TERM" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", {CHILD!r}, *sys.argv[1:]])
time.sleep(60)
"""


def _family(tmp_path, *args: str):
    log = tmp_path / "family.log"
    proc = processes.spawn([sys.executable, "-c", FAMILY, *args], log_path=log)
    processes.wait_until(lambda: "child ready" in log.read_text(), 10, proc=proc, log_path=log, interval=0.02)
    return proc, int(log.read_text().split()[2])


def test_stop_group_stops_the_children_too(tmp_path):
    proc, child = _family(tmp_path)
    assert set(processes.group_members(proc.pid)) == {proc.pid, child}
    processes.stop_group(proc.pid, timeout=10)
    assert not processes.pid_alive(proc.pid) and not processes.pid_alive(child)
    assert processes.group_members(proc.pid) == []


def test_stop_group_escalates_to_sigkill(tmp_path, capsys):
    proc, child = _family(tmp_path, "IGNORE_TERM")
    t0 = time.monotonic()
    processes.stop_group(proc.pid, timeout=0.5, what="stubborn")
    assert 0.5 <= time.monotonic() - t0 < 10
    assert not processes.pid_alive(proc.pid) and not processes.pid_alive(child)
    assert "stubborn: did not stop within 0s, sending SIGKILL" in capsys.readouterr().err


@pytest.mark.parametrize("leader_only", [True, False])
def test_stop_group_leader_only_signals_the_leader_alone(tmp_path, leader_only):
    proc, child = _family(tmp_path)
    # PostgreSQL's case: SIGINT to the postmaster alone, then wait for (and after the timeout
    # SIGKILL) the whole group. Here the child survives SIGINT, so the SIGKILL ends it.
    processes.stop_group(proc.pid, timeout=0.5, sig=signal.SIGINT, leader_only=leader_only)
    assert not processes.pid_alive(proc.pid) and not processes.pid_alive(child)
    assert ("child got SIGINT" in (tmp_path / "family.log").read_text()) is not leader_only


def test_wait_until_reports_the_exit_code_and_the_log_tail(tmp_path):
    log = tmp_path / "crash.log"
    processes.log_mark(log, "old")
    log.write_text(log.read_text() + "a line of an earlier start\n")
    processes.log_mark(log, "crash")
    proc = processes.spawn([sys.executable, "-c", "import sys; print('bad config: PORT'); sys.exit(3)"], log_path=log)
    with pytest.raises(processes.NotReady) as info:
        processes.wait_until(lambda: False, 10, proc=proc, what="crash", log_path=log)
    message = str(info.value)
    assert message.startswith(f"crash: process {proc.pid} exited during startup with code 3; log {log}")
    assert "bad config: PORT" in message and "earlier start" not in message


def test_wait_until_times_out_with_the_last_probe_error():
    def probe():
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(processes.NotReady, match=r"svc: not ready after 0s \(last probe error: Connection"):
        processes.wait_until(probe, 0.2, what="svc", interval=0.05)


def test_owned_pid_needs_the_process_to_run_in_the_folder(tmp_path):
    folder, pid_file = tmp_path / "svc", tmp_path / "run" / "svc.pid"
    proc = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], cwd=folder)
    try:
        processes.write_pid_file(pid_file, proc.pid, 1234)
        assert processes.read_pid_file(pid_file) == (proc.pid, 1234)
        assert processes.owned_pid(pid_file, folder) == proc.pid
        assert proc.pid in processes.pids_in(folder)
        assert processes.owned_pid(pid_file, tmp_path / "elsewhere") is None
        assert not pid_file.exists()  # a pid that is not ours is forgotten, never signalled
    finally:
        processes.stop_group(proc.pid, 10)
    assert not processes.pid_alive(proc.pid)  # reaped: not left as a zombie that counts as alive


def test_running_waits_for_ready_and_stops_after(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with processes.running(command, ready_url=f"http://127.0.0.1:{port}/", cwd=tmp_path,
                           log_path=tmp_path / "http.log", timeout=20) as proc:
        assert processes.http_ok(f"http://127.0.0.1:{port}/")
    assert proc.returncode is not None and not processes.port_open("127.0.0.1", port)
