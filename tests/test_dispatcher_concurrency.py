"""Several deliveries in flight per deployment, against real Kafka and a real function process.

Per-key order (one dataset's events one after the other), a dead letter while other keys go
on, the commit watermark held by an event in flight, and `kill -9` of a dispatcher process
with events in flight: nothing lost. The function, the topics and `Bus` are those of
tests/test_dispatcher.py; the test function sleeps `slow_first` seconds the first time it
sees an event id and logs every delivery's arrival time.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent
from test_dispatcher import FUNCTION_THREADS, Bus, FunctionProcess, wait_for

from flts.dev import processes

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parent.parent
SLOW = 0.3  # seconds the function takes for an event the first time


@pytest.fixture
def function(tmp_path):
    fn = FunctionProcess(tmp_path / "fn").start()
    yield fn
    fn.stop()


@pytest.fixture
def bus(infra, function):
    b = Bus(infra, function.url)
    yield b
    b.close()


def keyed(key: str, **data) -> CloudEvent:
    """A test.ping whose Kafka key is `key` (the subject, as a dataset identifier is)."""
    return CloudEvent({"type": "test.ping", "source": "/test", "subject": key, "datacontenttype": "application/json"},
                      data)


def arrivals(function) -> dict[str, list[float]]:
    """Event id -> the times it reached the function."""
    seen: dict[str, list[float]] = {}
    for line in function.lines("deliveries.log"):
        d = json.loads(line)
        seen.setdefault(d["id"], []).append(d["t"])
    return seen


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_many_keys_interleaved_keep_their_order_and_run_concurrently(bus, function):
    bus.dispatcher(concurrency=16)
    keys, per_key = [f"ds-{k}" for k in range(8)], 5
    sent = {key: [keyed(key, slow_first=SLOW, n=n) for n in range(per_key)] for key in keys}
    for n in range(per_key):  # interleaved on the one partition: ds-0/0, ds-1/0, ..., ds-0/1, ...
        for key in keys:
            bus.send(sent[key][n])
    total = len(keys) * per_key
    replies = bus.replies(total, timeout=120)
    assert len(replies) == total
    seen = arrivals(function)
    for key, evs in sent.items():
        firsts = [seen[e["id"]][0] for e in evs]
        assert firsts == sorted(firsts), f"{key}: delivered out of order"
        gaps = [b - a for a, b in zip(firsts, firsts[1:], strict=False)]
        assert min(gaps) >= SLOW - 0.02, f"{key}: the next event came before the previous one was answered"
        order = [r["in"] for r in replies if r["in"] in {e["id"] for e in evs}]
        assert order == [e["id"] for e in evs], f"{key}: replies written out of order"
    peak = peak_overlap([(seen[e["id"]][0], seen[e["id"]][0] + SLOW) for evs in sent.values() for e in evs])
    assert peak >= FUNCTION_THREADS - 1, f"at most {peak} deliveries at once: keys did not run concurrently"
    wait_for(lambda: bus.committed() == total, what="every offset committed")


def test_a_failing_event_is_dead_lettered_while_other_keys_go_on(bus, function):
    bus.dispatcher(concurrency=8, max_retries=3, backoff_base=0.4, backoff_max=0.8)
    failing, after = keyed("bad", status=503), keyed("bad")
    others = [keyed(f"ok-{k}", n=n) for n in range(3) for k in range(6)]
    bus.send(failing)
    bus.send(after)
    for event in others:
        bus.send(event)
    [letter] = bus.dead_letters(1)
    assert letter["event"]["id"] == failing["id"] and letter["attempts"] == 4 and letter["status"] == 503
    replies = {r["in"] for r in bus.replies(len(others) + 1)}
    assert replies == {e["id"] for e in [*others, after]}
    seen = arrivals(function)
    tries = seen[failing["id"]]
    assert len(tries) == 4
    assert max(seen[e["id"]][0] for e in others) < tries[-1], "other keys waited for the failing one"
    assert seen[after["id"]][0] > tries[-1], "the failing key's next event overtook it"
    wait_for(lambda: bus.committed() == len(others) + 2, what="every offset committed")


def test_the_commit_waits_for_the_oldest_event_in_flight(bus, function):
    bus.dispatcher(concurrency=8)
    slow = keyed("slow", slow_first=6)
    quick = [keyed(f"q-{k}") for k in range(20)]
    bus.send(slow)  # offset 0
    for event in quick:  # offsets 1..20, settled long before offset 0
        bus.send(event)
    wait_for(lambda: len(function.lines("processed.log")) == 21, what="every event reached the function")
    assert len(bus.replies(20, timeout=20)) == 20
    time.sleep(1.0)  # time for a (wrong) commit to reach the broker
    assert slow["id"] in arrivals(function) and bus.committed() in (None, 0), \
        "committed past the event still in flight"
    wait_for(lambda: bus.committed() == 21, timeout=30, what="the watermark moving once the slow event settled")


RUNNER = '''
import signal, sys, threading
from flts.dispatcher import Dispatcher
from flts.dispatcher.routes import Routes, Subscription
from flts.dispatcher.settings import DispatchSettings

bootstrap, inbox, outbox, deployment, url = sys.argv[1:6]
routes = Routes({"test.ping": inbox, "test.pong": outbox}, (Subscription(deployment, url, ("test.ping",), (inbox,)),))
settings = DispatchSettings(bootstrap, ingress_port=0, concurrency=8, max_retries=3, backoff_base=0.05,
                            backoff_max=0.2, timeout=20.0, connect_timeout=1.0)
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
dispatcher = Dispatcher(settings, routes).start()
stopping.wait()
dispatcher.stop()
'''


def test_kill_9_with_events_in_flight_loses_nothing(bus, function, tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    command = [sys.executable, str(runner), bus.bootstrap, bus.inbox, bus.outbox, bus.deployment, function.url]

    def start():
        return processes.spawn(command, env={"PYTHONPATH": str(REPO)}, log_path=tmp_path / "dispatcher.log")

    sent = [keyed(f"ds-{k}", slow_first=1.0, n=n) for n in range(4) for k in range(10)]
    for event in sent:
        bus.send(event)
    first = start()
    try:
        wait_for(lambda: len(function.lines("processed.log")) >= 8, timeout=60, what="deliveries in flight")
        processes.stop_group(first.pid, 0, signal.SIGKILL)
        first.wait()
        done_at_kill = len(function.lines("processed.log"))
        assert done_at_kill < len(sent), "everything finished before the kill: nothing was in flight"
        assert (bus.committed() or 0) < len(sent)
    finally:
        if first.poll() is None:
            processes.stop_group(first.pid, 5)
    second = start()
    try:
        ids = {e["id"] for e in sent}
        wait_for(lambda: {r["in"] for r in bus.replies(len(sent), timeout=2)} == ids, timeout=120,
                 what="a reply for every event after the restart")
        processed = function.lines("processed.log")
        assert sorted(processed) == sorted(ids), "an event was lost or its side effect ran twice"
        wait_for(lambda: bus.committed() == len(sent), timeout=30, what="every offset committed")
    finally:
        processes.stop_group(second.pid, 20)
        second.wait()

