"""Backpressure and micro-batching between the HTTP handlers and the model.

    admit (MAX_INFLIGHT, else 429 at once) → bounded queue (QUEUE_MAXSIZE, else 429)
    → an inference lane takes up to BATCH_SIZE queued windows (waiting BATCH_TIMEOUT_MS
      for more when > 0), drops those older than the TTL (ENABLE_TTL, 429), runs them as
      one ONNX batch in a thread (ORT releases the GIL, so the event loop keeps parsing)
    → each request gets its own rows back.

A fast model's batch runs inline, on the event loop, instead of in a thread: when the
model's fastest time per window so far, times the batch's windows, is under INLINE_RUN_MS.
Handing a run of tens of µs to a thread and back costs more than the run (a wake-up, a GIL
switch, futures resolved across threads). A model not timed yet, or slower, runs in the
thread, so a slow model does not block the loop. Either way requests queue and are batched
the same (a woken lane lets the loop turn twice, then takes everything queued), so ONNX
Runtime's per-run cost, much of it cache misses on a busy machine, is shared by the batch.

Lanes are asyncio tasks; `scale()` adds or retires them. A lane that is running a batch
is never cancelled: it finishes, answers its requests, then leaves.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from flts.infer import prometheus as metrics
from flts.infer.features import RequestError
from flts.infer.settings import ServingSettings
from flts.logs import error, log

NON_FINITE = "the model produced a non-finite forecast for this input (values far out of range?)"


class Rejected(Exception):
    """Saturation: answer 429 with Retry-After."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class InferenceFailed(Exception):
    """The model raised on a batch (a bug or a broken artifact, not the caller's fault)."""


class RateLimitedLog:
    """At most `per_second` lines per second for one hot-path event; each line says how
    many were skipped since the last one, so counts stay recoverable from the logs."""

    def __init__(self, event: str, per_second: int):
        self.event, self.per_second = event, per_second
        self._window, self._count, self._skipped = 0.0, 0, 0

    def __call__(self, **fields) -> None:
        if self.per_second <= 0:
            return
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._count = now, 0
        if self._count >= self.per_second:
            self._skipped += 1
            return
        self._count += 1
        log(self.event, skipped_since_last=self._skipped, **fields)
        self._skipped = 0


@dataclass(eq=False, slots=True)
class _Item:
    model: object
    x: np.ndarray          # [b, input_seq_len, n_features]
    last_wall: np.ndarray  # [b]
    step: np.ndarray       # [b]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Lane:
    task: asyncio.Task | None = None
    busy: bool = False
    retire: bool = False


class Batcher:
    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.inflight = 0
        self.queue: asyncio.Queue[_Item] | None = None
        self._lanes: list[_Lane] = []
        self._pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="infer")
        self._inline_seconds = settings.inline_run_ms / 1000.0
        self._log_enqueued = RateLimitedLog("queue_enqueued", settings.log_lines_per_second)
        self._log_start = RateLimitedLog("predict_inference_start", settings.log_lines_per_second)

    # ------------------------------------------------------------ admission

    def try_admit(self) -> bool:
        if self.inflight >= self.settings.max_inflight:
            metrics.REJECTIONS.labels("inflight").inc()
            return False
        self.inflight += 1
        metrics.INFLIGHT.inc()
        return True

    def release(self) -> None:
        self.inflight -= 1
        metrics.INFLIGHT.dec()

    async def submit(self, model, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Queue windows for `model`; returns their forecasts [b, output_seq_len]."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(model, x, last_wall, step, future))
        except asyncio.QueueFull:
            metrics.REJECTIONS.labels("queue_full").inc()
            raise Rejected("queue_full", f"the queue is full ({self.settings.queue_maxsize} waiting, QUEUE_MAXSIZE)") from None
        depth = self.queue.qsize()
        metrics.QUEUE_DEPTH.inc()
        self._log_enqueued(queue_depth=depth, inflight=self.inflight)
        return await future

    # ------------------------------------------------------------ lanes

    @property
    def workers(self) -> int:
        return sum(1 for lane in self._lanes if not lane.retire)

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.settings.queue_maxsize)
        await self.scale(self.settings.workers)

    async def scale(self, workers: int) -> int:
        """Resize to `workers` lanes; returns the previous count. In-flight batches finish."""
        previous = self.workers
        active = [lane for lane in self._lanes if not lane.retire]
        for _ in range(workers - len(active)):
            lane = _Lane()
            lane.task = asyncio.create_task(self._run_lane(lane))
            self._lanes.append(lane)
        # Retire idle lanes first: cancelling one blocked in queue.get() loses nothing.
        for lane in sorted(active, key=lambda lane: lane.busy)[: max(0, len(active) - workers)]:
            lane.retire = True
            if not lane.busy:
                lane.task.cancel()
        metrics.WORKERS.inc(self.workers - previous)
        return previous

    async def stop(self) -> None:
        await self.scale(0)
        tasks = [lane.task for lane in self._lanes]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while not lane.retire:
                first = await self.queue.get()
                lane.busy = True
                try:
                    await self._run_batch(first)
                finally:
                    lane.busy = False
        finally:
            if lane in self._lanes:
                self._lanes.remove(lane)

    async def _collect(self, first: _Item) -> list[_Item]:
        items, size = [first], len(first.x)
        limit = self.settings.effective_batch_size
        if size < limit:
            # Two turns of the loop first: the first reads the sockets that became readable
            # during the last batch (their request tasks are scheduled after this lane), the
            # second lets those tasks parse and queue. Without them a batch takes about half of
            # what arrived (mean batch 7.6 instead of 15.7 at 16 connections, issue 13).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        deadline = time.perf_counter() + self.settings.batch_timeout_ms / 1000.0
        while size < limit:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(item)
            size += len(item.x)
        metrics.QUEUE_DEPTH.dec(len(items))
        return items

    def _expire(self, items: list[_Item]) -> list[_Item]:
        if not self.settings.enable_ttl:
            return items
        now, ttl = time.perf_counter(), self.settings.ttl_ms / 1000.0
        alive = []
        for item in items:
            if now - item.enqueued > ttl:
                metrics.REJECTIONS.labels("ttl").inc()
                if not item.future.done():
                    item.future.set_exception(Rejected("ttl", f"waited over {self.settings.ttl_ms} ms in the queue (REQUEST_TTL_MS)"))
            else:
                alive.append(item)
        return alive

    async def _run_batch(self, first: _Item) -> None:
        items = self._expire(await self._collect(first))
        groups: dict[int, list[_Item]] = {}
        for item in items:  # requests that started before a hot swap keep their old model
            groups.setdefault(id(item.model), []).append(item)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            model = group[0].model
            if len(group) == 1:
                x, last, step = group[0].x, group[0].last_wall, group[0].step
            else:
                x = np.concatenate([i.x for i in group])
                last = np.concatenate([i.last_wall for i in group])
                step = np.concatenate([i.step for i in group])
            metrics.BATCH_SIZE.observe(len(x))
            self._log_start(batch=len(x), requests=len(group), run_id=model.info.run_id)
            try:
                per_window = model.window_seconds
                if per_window is not None and per_window * len(x) < self._inline_seconds:
                    metrics.INLINE_RUNS.inc()
                    out = model.timed_predict(x, last, step)  # on the loop: cheaper than a thread hop
                else:
                    out = await loop.run_in_executor(self._pool, model.timed_predict, x, last, step)
            except Exception as exc:  # noqa: BLE001 - answered as 500 to this batch only
                error("predict_failed", run_id=model.info.run_id, error=f"{type(exc).__name__}: {exc}")
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed(f"{type(exc).__name__}: {exc}"))
                continue
            _answer(group, out)


def _answer(group: list[_Item], out: np.ndarray) -> None:
    """Each request its rows of the batch's forecasts; 422 to one whose rows are not finite
    (checked once per batch, per request only when the batch holds a non-finite value)."""
    finite = bool(np.isfinite(out).all())
    start = 0
    for item in group:
        end = start + len(item.x)
        if not item.future.done():  # a client that went away cancelled its future
            rows = out[start:end]
            if finite or np.isfinite(rows).all():
                item.future.set_result(rows)
            else:
                item.future.set_exception(RequestError(NON_FINITE, 422))
        start = end
