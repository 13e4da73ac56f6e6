"""The micro-batcher: concurrent requests that arrive within a few milliseconds share one model call.

A request becomes an item with a *group key*; items with the same key can run as one backend call:
generation requests with identical sampling parameters share one `generate` batch (greedy one-token
requests always; other generations when continuous batching is off, else they decode in
`continuous.ContinuousBatcher`, a subclass), all scoring (echo) requests share one forward, all requests to
one program share one `program.predict` call. One asyncio task
collects items: after the first arrives it waits `batch_wait_ms` for company (not when `max_batch_size`
items already wait), takes up to `max_batch_size` items of the oldest item's key, in arrival order, and runs
their call in the single model thread. While the model works, new requests queue up and form the next batch,
so under load batches fill without any waiting. The event loop never runs the model, so it keeps accepting
and answering requests (health, errors, streaming) meanwhile.

`batches` and `requests` count backend calls and the requests they served (`stats()`, also in `/health`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("serving")

_MODEL_THREAD: ThreadPoolExecutor | None = None


def model_thread() -> ThreadPoolExecutor:
    """The one thread of the process that runs models: `dln serve` loads its models on it
    (`serving.app.serve`) and every batcher runs its calls on it.

    Why one: OpenMP keeps a team of worker threads per thread that calls into it, and a second team on the
    same cores is slow: a 16-token greedy decode of the default model took 0.26 s on the thread that loaded
    the model and 0.50 s on another (2 cores; the first thread's speed drops too once the other has run).
    """
    global _MODEL_THREAD
    if _MODEL_THREAD is None:
        _MODEL_THREAD = ThreadPoolExecutor(1, thread_name_prefix="dln-model")
    return _MODEL_THREAD


@dataclass
class QueuedItem:
    key: Hashable
    run: Callable[[list], list]  # payloads -> results, in the model thread
    payload: object
    future: asyncio.Future


class MicroBatcher:
    """Groups items by key into batched calls on one worker thread.

    Args:
        max_batch_size: the most requests per backend call (1 serves one request at a time).
        batch_wait_ms: how long the first request of a batch waits for others to join.
    """

    def __init__(self, max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.batch_wait = max(batch_wait_ms, 0.0) / 1000.0
        self.batches = 0
        self.requests = 0
        self.largest_batch = 0
        self.on_batch: Callable[[int], None] | None = None  # called with each batch's size (the metrics)
        self._pending: deque[QueuedItem] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = model_thread()
        self._task = asyncio.create_task(self._loop(), name="dln-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:  # the shared thread stays; wait for the call it may be running
            await asyncio.get_running_loop().run_in_executor(self._executor, lambda: None)

    def stats(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest_batch,
            "waiting": len(self._pending),
        }

    async def run_alone(self, function: Callable[[], object]) -> object:
        """Run `function` in the model thread, outside any batch and the counters (e.g. a warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def submit(self, key: Hashable, run: Callable[[list], list], payload) -> object:
        """Queue one request; returns its own result from the batched call `run(payloads)`."""
        if self._wakeup is None:
            raise RuntimeError("the micro-batcher is not running (start() was not awaited)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(QueuedItem(key, run, payload, future))
        self._wakeup.set()
        return await future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self.max_batch_size and self.batch_wait:
                await asyncio.sleep(self.batch_wait)
            items = self._take()
            if not self._pending:
                self._wakeup.clear()
            await self._run(items)

    async def _run(self, items: list[QueuedItem]) -> None:
        """One batched call in the model thread; each item gets its own result, or the call's error."""
        items = [i for i in items if not i.future.done()]  # a cancelled request needs no work
        if not items:
            return
        self._count(len(items))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, items[0].run, [i.payload for i in items])
        except Exception as err:  # the whole call failed: every request in it gets the error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        for item, result in zip(items, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _count(self, size: int) -> None:
        """Count one model call that starts `size` requests."""
        self.batches += 1
        self.requests += size
        self.largest_batch = max(self.largest_batch, size)
        if self.on_batch is not None:
            self.on_batch(size)

    def _take(self) -> list[QueuedItem]:
        """Up to max_batch_size items with the oldest item's key, in arrival order; the rest stay queued."""
        if not self._pending:
            return []
        key, taken, kept = self._pending[0].key, [], deque()
        while self._pending:
            item = self._pending.popleft()
            (taken if item.key == key and len(taken) < self.max_batch_size else kept).append(item)
        self._pending = kept
        return taken
