"""A controller-runtime style work queue, generic over keys and reconcile functions.

One reconcile per key at a time (a key added while it runs is reconciled again right after), delayed
requeues (the earliest request wins), and failures retried after a per-key exponential backoff that an
overall token bucket also bounds (controller-runtime's default rate limiter: the max of both), and never
sooner than an apiserver's Retry-After asked (a throttled key waits in the queue, holding no worker).
The time-dependent parts take a clock, so tests drive them with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field

from pax_operator.adapters.kube import retry_after
from pax_operator.settings import WORKERS

log = logging.getLogger(__name__)
type Clock = Callable[[], float]
# Seconds until the key wants another look; None: nothing is due (an event will bring it back).
type Requeue = float | None
type ReconcileFn[K] = Callable[[K], Requeue] | Callable[[K], Awaitable[Requeue]]
MAX_IDLE_WAIT_SECONDS = 1.0  # the delay pump re-checks at least this often


@dataclass
class RateLimiter:
    """Per-key exponential failure backoff (base · 2^(n-1), capped) and an overall token bucket."""

    base: float = 0.5
    cap: float = 60.0
    qps: float = 10.0
    burst: int = 100
    clock: Clock = time.monotonic
    _failures: dict[Hashable, int] = field(default_factory=dict)
    _tokens: float | None = None
    _last: float | None = None

    def when(self, key: Hashable) -> float:
        """Seconds until `key`, which just failed, may be retried."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        per_key = min(self.cap, self.base * 2 ** (failures - 1))
        return max(per_key, self._bucket_delay())

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def _bucket_delay(self) -> float:
        now = self.clock()
        if self._tokens is None or self._last is None:
            self._tokens, self._last = float(self.burst), now
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0  # a reservation: negative tokens are a queue of retries waiting their turn
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


class WorkQueue[K: Hashable]:
    """Keys are reconciled by `workers` asyncio tasks; a key is never reconciled twice concurrently.

    `reconcile(key)` returns seconds until the key wants another look, or None. A coroutine function is
    awaited on the loop; a plain function runs in a thread.
    """

    def __init__(
        self,
        reconcile: ReconcileFn[K],
        workers: int = WORKERS,
        *,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        name: str = "pax",
        ready: Sequence[asyncio.Event] = (),
    ) -> None:
        self._reconcile = reconcile
        self._is_async = inspect.iscoroutinefunction(reconcile)
        self._workers = workers
        self._clock = clock
        self._name = name
        # workers take no key before these are set (e.g. the caches' first listing)
        self._ready_to_work = ready
        self.limiter = limiter or RateLimiter(clock=clock)
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._due: dict[K, float] = {}  # delayed keys → when (earliest request)
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- state, for metrics and tests --------------------------------------------------------------
    def depth(self) -> int:
        """Keys ready and waiting for a worker."""
        return len(self._queued)

    def delayed(self) -> int:
        """Keys waiting for their requeue time."""
        return len(self._due)

    def active(self) -> int:
        """Keys being reconciled now."""
        return len(self._active)

    def due_in(self, key: K) -> float | None:
        """Seconds until a delayed key is due, or None if it is not delayed."""
        due = self._due.get(key)
        return None if due is None else due - self._clock()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self._name}-worker-{i}") for i in range(self._workers)
        ]
        self._tasks.append(asyncio.create_task(self._pump(), name=f"{self._name}-delays"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- adding -----------------------------------------------------------------------------------
    def add(self, key: K, delay: float = 0.0) -> None:
        """Reconcile `key` after `delay` seconds (an earlier request wins)."""
        if delay <= 0:
            self._undelay(key)
            self._enqueue(key)
            return
        due = self._clock() + delay
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        self._compact()
        self._wake.set()

    def forget(self, key: K) -> None:
        """Drop a key's pending delay and failure history (e.g. its object was deleted)."""
        self._undelay(key)
        self.limiter.forget(key)

    def _undelay(self, key: K) -> None:
        self._due.pop(key, None)
        self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from the live delays once superseded or dropped entries dominate it: they are
        only popped when they reach its top, which a far-future one (a hang clock of 68 years, woken by
        every scrape) never does."""
        if len(self._heap) > 2 * len(self._due) + 64:
            # fresh tie-breakers stay unique: _seq (one per push) is at least the number of live delays
            self._heap = [(due, seq, key) for seq, (key, due) in enumerate(self._due.items())]
            heapq.heapify(self._heap)

    def promote_due(self) -> float | None:
        """Move delayed keys that are due to the ready queue; return seconds until the next one is due."""
        now = self._clock()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:  # superseded by an earlier request, or forgotten
                heapq.heappop(self._heap)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            self._enqueue(key)
        return None

    def _enqueue(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    # -- running ----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        while True:
            wait = self.promote_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), min(wait or MAX_IDLE_WAIT_SECONDS, MAX_IDLE_WAIT_SECONDS)
                )

    async def _work(self) -> None:
        for event in self._ready_to_work:
            await event.wait()
        while True:
            key = await self._ready.get()
            await self.process(key)

    async def process(self, key: K) -> None:
        """Reconcile one key now and schedule what follows (a worker's step; tests call it directly)."""
        self._queued.discard(key)
        self._active.add(key)
        try:
            if self._is_async:
                requeue = await self._reconcile(key)  # type: ignore[misc]
            else:
                requeue = await asyncio.to_thread(self._reconcile, key)  # type: ignore[arg-type]
            self.limiter.forget(key)
        except Exception as err:  # a worker must survive any reconcile error
            requeue = max(self.limiter.when(key), retry_after(err) or 0.0)
            log.warning(
                "reconcile %s failed (%s: %s), retrying in %.1fs", key, type(err).__name__, err, requeue
            )
        finally:
            self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self._enqueue(key)
        if requeue is not None:
            self.add(key, requeue)
