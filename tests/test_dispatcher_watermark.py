"""The dispatcher's concurrency parts alone (no services): the commit watermark and the per-key lanes."""
from __future__ import annotations

import random
import threading
import time

import pytest

from flts.dispatcher.consumer import Session
from flts.dispatcher.lanes import KeyedPool
from flts.dispatcher.watermark import Watermark


# --------------------------------------------------------------------------- Watermark
def test_in_order_settling_moves_the_watermark_each_time():
    mark = Watermark()
    for offset in (0, 1, 2):
        mark.fetched(offset)
    assert mark.committable is None  # nothing settled: nothing to commit
    assert [mark.settle(0), mark.settle(1), mark.settle(2)] == [1, 2, 3]
    assert mark.unsettled == 0


def test_the_watermark_never_passes_an_unsettled_offset():
    mark = Watermark()
    for offset in range(5):
        mark.fetched(offset)
    assert mark.settle(3) is None and mark.settle(4) is None and mark.settle(1) is None
    assert mark.committable is None and mark.unsettled == 2  # 0 and 2 still in flight
    assert mark.settle(0) == 2  # 0 and 1 done; 2 is not
    assert mark.settle(2) == 5  # the run 2, 3, 4 is complete at once


def test_gaps_in_offsets_are_passed_over():
    """A compacted topic or a transaction marker leaves offsets that are never fetched."""
    mark = Watermark()
    for offset in (10, 13, 20):
        mark.fetched(offset)
    assert mark.settle(13) is None
    assert mark.settle(10) == 14
    assert mark.settle(20) == 21


def test_misuse_is_refused():
    mark = Watermark()
    mark.fetched(5)
    with pytest.raises(ValueError):
        mark.fetched(5)  # fetched twice
    with pytest.raises(ValueError):
        mark.settle(6)  # never fetched
    mark.fetched(6)
    mark.settle(6)
    with pytest.raises(ValueError):
        mark.settle(6)  # settled twice


def test_random_settle_orders_commit_exactly_the_settled_prefix():
    rng = random.Random(7)
    for _ in range(200):
        offsets = sorted(rng.sample(range(100), 30))
        mark = Watermark()
        for offset in offsets:
            mark.fetched(offset)
        settled: set[int] = set()
        for offset in rng.sample(offsets, len(offsets)):
            mark.settle(offset)
            settled.add(offset)
            prefix = 0
            while prefix < len(offsets) and offsets[prefix] in settled:
                prefix += 1
            expected = offsets[prefix - 1] + 1 if prefix else None
            assert mark.committable == expected
            assert all(o in settled for o in offsets if expected is not None and o < expected)


def test_a_session_ignores_results_for_a_partition_it_gave_up():
    """After a revocation (or a consumer restart) late results are the next owner's: never committed here."""
    session = Session()
    mark = session.fetched("tp", 0)
    session.fetched("tp", 1)
    session.drop(["tp"])
    session.settle("tp", mark, 0)
    assert session.take_moved() == {} and session.committable() == {}
    assert not session.owns("tp", mark)
    fresh = session.fetched("tp", 0)  # assigned again: a new watermark, from the last commit
    session.settle("tp", fresh, 0)
    assert session.take_moved() == {"tp": 1}
    session.close()
    assert not session.owns("tp", fresh)


# --------------------------------------------------------------------------- KeyedPool
def test_same_key_runs_in_order_and_one_at_a_time_while_keys_overlap():
    pool = KeyedPool(8, "test")
    lock, running, peak, seen = threading.Lock(), {}, [0], {}

    def job(key: str, n: int):
        def run():
            with lock:
                assert not running.get(key), f"two jobs of key {key} at once"
                running[key] = True
                peak[0] = max(peak[0], sum(running.values()))
            time.sleep(random.uniform(0, 0.01))
            with lock:
                seen.setdefault(key, []).append(n)
                running[key] = False
        return run

    try:
        for n in range(20):
            for key in "abcdefgh":
                pool.submit(key, job(key, n))
        assert pool.wait_idle(30)
        assert seen == {key: list(range(20)) for key in "abcdefgh"}
        assert peak[0] > 1, "different keys never ran at the same time"
        assert pool.pending == 0
    finally:
        pool.close()


def test_a_failing_job_does_not_stop_its_lane():
    pool = KeyedPool(2, "test")
    done = []

    def boom():
        raise RuntimeError("injected")

    try:
        pool.submit("k", boom)
        pool.submit("k", lambda: done.append("next"))
        assert pool.wait_idle(5) and done == ["next"]
    finally:
        pool.close()


def test_wait_below_reports_a_full_pool():
    pool = KeyedPool(1, "test")
    gate = threading.Event()
    try:
        for key in "abc":
            pool.submit(key, gate.wait)
        assert not pool.wait_below(3, 0.05) and pool.pending == 3
        gate.set()
        assert pool.wait_below(1, 5)
    finally:
        pool.close()


# --------------------------------------------------------------------------- ingress attribution
def test_an_output_posted_to_k_sink_gets_the_root_of_the_delivery_with_its_key():
    """Several deliveries to one deployment are in flight; its outputs name their dataset (the key)."""
    from types import SimpleNamespace

    from cloudevents.http import CloudEvent

    from flts.dispatcher import Dispatcher
    from flts.dispatcher.ingress import NotInFlight
    from flts.dispatcher.routes import Routes
    from flts.dispatcher.settings import DispatchSettings

    in_flight: dict = {}
    loop = SimpleNamespace(sub=SimpleNamespace(deployment="fn"), roots_in_flight=lambda: dict(in_flight))
    dispatcher = Dispatcher(DispatchSettings("kafka:9092"), Routes({}, ()))
    dispatcher.loops = [loop]

    def out(subject):
        return CloudEvent({"type": "t", "source": "/fn", "subject": subject}, {})

    with pytest.raises(NotInFlight):
        dispatcher._roots_in_flight("fn", [out("a")])
    in_flight.update({b"a": "root-a", b"b": "root-b"})
    assert dispatcher._roots_in_flight("fn", [out("b"), out("a")]) == ["root-b", "root-a"]
    assert dispatcher._roots_in_flight("fn", [out("elsewhere")]) == [None]  # ambiguous: written, no dedup
    in_flight.pop(b"b")
    assert dispatcher._roots_in_flight("fn", [out("elsewhere")]) == ["root-a"]  # the only one in flight
