"""A pool of worker threads where jobs with the same key run one after the other, in order (a lane per key),
and jobs with different keys run at once.

The dispatcher keys jobs by the Kafka record key (the dataset identifier), so one dataset's
events reach a function in the order they were written, while other datasets go on.
The threads are daemons: a delivery that hangs must not keep the process from exiting.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable

from flts.logs import error

_STOP = object()


class KeyedPool:
    """`submit(key, job)`: runs `job()` on one of `size` threads, after every earlier job of that key."""

    def __init__(self, size: int, name: str):
        self._lanes: dict[Hashable, deque[Callable[[], None]]] = {}  # a key with a job queued or running
        self._ready: queue.Queue = queue.Queue()  # keys whose first job may run now
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified when pending drops below what a waiter waits for
        self._pending = 0
        self._waiting: list[int] = []  # the limit of each wait_below caller waiting now
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished (queued or running)."""
        return self._pending

    def submit(self, key: Hashable, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
            lane = self._lanes.get(key)
            if lane is not None:  # its key is busy: it runs when the jobs before it are done
                lane.append(job)
                return
            self._lanes[key] = deque([job])
        self._ready.put(key)

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait until fewer than `limit` jobs are pending; False if they are not after `timeout`."""
        with self._done:
            self._waiting.append(limit)
            try:
                return self._done.wait_for(lambda: self._pending < limit, timeout)
            finally:
                self._waiting.remove(limit)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted job has finished; False if some still run after `timeout`."""
        return self.wait_below(1, timeout)

    def close(self) -> None:
        """Let the threads end once their current job returns (not waited for)."""
        for _ in self._threads:
            self._ready.put(_STOP)

    def _work(self) -> None:
        while (key := self._ready.get()) is not _STOP:
            with self._lock:
                job = self._lanes[key][0]
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - a job handles its own failures; never lose the thread
                error("dispatch_job_failed", error=f"{type(exc).__name__}: {exc}")
            self._next(key)

    def _next(self, key: Hashable) -> None:
        with self._lock:
            lane = self._lanes[key]
            lane.popleft()
            self._pending -= 1
            if not lane:
                del self._lanes[key]
            if self._waiting and self._pending < max(self._waiting):  # not on every job: a thread switch each
                self._done.notify_all()
        if lane:  # back in the queue rather than run now: other keys get their turn
            self._ready.put(key)
