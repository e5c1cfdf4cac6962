"""How the consumer loop fetches and commits under load (no services: a stand-in Kafka consumer).

Polling as each record settles fetched one record a request, and committing on every poll
wrote one offset commit per event: a burst cost Kafka several requests per event. The loop
now waits for room for a batch, and commits at most every COMMIT_INTERVAL_SEC.
"""
from __future__ import annotations

import threading
import time

import pytest

from flts.dispatcher import consumer as consumer_module
from flts.dispatcher.consumer import ConsumerLoop, Session
from flts.dispatcher.lanes import KeyedPool
from flts.dispatcher.routes import Routes, Subscription
from flts.dispatcher.settings import DispatchSettings


class StandInConsumer:
    """The part of KafkaConsumer the loop's throttle and commits use."""

    def __init__(self, partitions=("p0", "p1")):
        self._assigned, self._paused = set(partitions), set()
        self.commits: list[dict] = []

    def assignment(self):
        return set(self._assigned)

    def paused(self):
        return set(self._paused)

    def pause(self, *tps):
        self._paused |= set(tps)

    def resume(self, *tps):
        self._paused -= set(tps)

    def commit_async(self, offsets, callback=None):
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


@pytest.fixture
def loop():
    sub = Subscription("preprocess", "http://127.0.0.1:9/", ("flts.dataset.ready",), ("dataset-ready",))
    loop = ConsumerLoop(sub, Routes({"flts.dataset.ready": "dataset-ready"}, (sub,)),
                        DispatchSettings("127.0.0.1:9", concurrency=4), producer=None, stop=threading.Event())
    loop.pool = KeyedPool(loop.concurrency, "test")
    yield loop
    loop.pool.close()


def fill(pool: KeyedPool, n: int, gate: threading.Event) -> None:
    for i in range(n):
        pool.submit(i, gate.wait)


def test_a_full_buffer_pauses_fetching_until_a_batch_fits(loop, monkeypatch):
    monkeypatch.setattr(consumer_module, "POLL_BUSY_MS", 20)
    kafka, gate = StandInConsumer(), threading.Event()
    limit = loop.buffer_limit
    assert loop._room(kafka) == limit and not kafka.paused()
    fill(loop.pool, limit - 1, gate)  # one record of room: not worth a poll
    try:
        assert loop._room(kafka) == 0 and kafka.paused() == kafka.assignment()
    finally:
        gate.set()
    assert loop.pool.wait_idle(5)
    assert loop._room(kafka) == limit and not kafka.paused()


def test_a_waiting_loop_wakes_once_a_batch_fits_not_when_idle(loop, monkeypatch):
    monkeypatch.setattr(consumer_module, "POLL_BUSY_MS", 5000)
    kafka, gates = StandInConsumer(), [threading.Event() for _ in range(loop.buffer_limit)]
    for i, gate in enumerate(gates):
        loop.pool.submit(i, gate.wait)
    # the records the pool runs end first; enough of them end to make room for half the buffer
    finished = threading.Timer(0.2, lambda: [g.set() for g in gates[: loop.buffer_limit // 2]])
    finished.start()
    started = time.monotonic()
    try:
        room = loop._room(kafka)
        assert room >= loop.buffer_limit // 2 and time.monotonic() - started < 3, "not woken when room was made"
    finally:
        for gate in gates:
            gate.set()
        finished.join()


def test_commits_are_coalesced(loop, monkeypatch):
    monkeypatch.setattr(consumer_module, "COMMIT_INTERVAL_SEC", 0.3)
    kafka, session = StandInConsumer(), Session()
    marks = {tp: session.fetched(tp, offset) for tp in ("p0", "p1") for offset in range(3)}
    for offset in range(3):
        session.settle("p0", marks["p0"], offset)
        loop._commit_due(kafka, session)  # the first goes out; the next two wait for the interval
    session.settle("p1", marks["p1"], 0)
    loop._commit_due(kafka, session)
    assert kafka.commits == [{"p0": 1}]
    time.sleep(0.35)
    loop._commit_due(kafka, session)
    assert kafka.commits == [{"p0": 1}, {"p0": 3, "p1": 1}], "the watermark of everything settled meanwhile"
