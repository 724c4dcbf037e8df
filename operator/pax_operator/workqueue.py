"""A small controller-runtime style work queue: one worker per key at a time, delayed requeues, backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
type Key = tuple[str, str]  # (namespace, name)
type ReconcileFn = Callable[[str, str], float | None]  # seconds to the next look; None: forget the key
MAX_BACKOFF_SECONDS = 60.0


class WorkQueue:
    """Keys are reconciled by `workers` tasks; a key is never reconciled twice concurrently."""

    def __init__(self, reconcile: ReconcileFn, workers: int = 4) -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"pax-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()

    def add(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile `key` after `delay` seconds (an earlier request wins)."""
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self._enqueue(key)
            return
        timer = self._timers.get(key)
        due = loop.time() + delay
        if timer is not None and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._enqueue, key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    def _enqueue(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                requeue = await asyncio.to_thread(self._reconcile, *key)
                self._failures.pop(key, None)
            except Exception as err:  # a worker must survive any reconcile error
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                requeue = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                log.warning("reconcile %s/%s failed (%s), retrying in %.1fs", *key, err, requeue)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._enqueue(key)
            if requeue is not None:
                self.add(key, requeue)
            else:
                self.forget(key)
